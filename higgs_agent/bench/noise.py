"""`higgs-agent bench noise`: what noise suppression (audio.input.noise_reduction, agent/noise.py) changes (#25).

espeak-ng sentences mixed with three noises, each at 0, 5 and 10 dB SNR (speech power over noise power):
**white** (Gaussian), **babble** (four other espeak-ng voices talking at once) and **hum** (mains at 50 or
60 Hz with 12 harmonics), and clean (the baseline: what suppression does when there is no noise). Turn
detection runs through the session's own input path (`InputAudio`, server_vad at its defaults, 20 ms
chunks), without (`off`) and with (`on`) RNNoise:

- **missed_turn_ends**: sentences after which server_vad never reports the speech stopped (1.5 s of noise
  follow each: the turn would only end at the 60 s cap);
- **false_barge_ins**: 4 s stretches of the noise alone (the caller silent while the agent speaks) in which
  server_vad starts a turn, which under server_vad cuts the agent's reply;
- **wer**: Whisper tiny.en on the sentence with 300 ms of noise either side (the turn's edges fixed, so a late
  VAD does not blur the figure), mean word error rate, on the `original` audio (what the session transcribes,
  suppression on or off) and on the `suppressed` audio (what it would transcribe if Whisper heard RNNoise's
  output: the measurement that decided it does not);
- **cpu**: the suppressor's CPU time per second of audio (ms; its real-time factor is that / 1000), the
  sessions one core could suppress for, and the delay it adds before the VAD hears a sound.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from higgs_agent.bench.common import espeak_ng, note, word_error_rate

RATE = 16_000
CHUNK = RATE // 50  # 20 ms, as a WebSocket client sends
SENTENCES = [
    "What time does the museum open today?", "Can you tell me the weather forecast for tomorrow?",
    "I would like to book a table for two people.", "Please cancel my subscription.",
    "My package never arrived and I have been waiting for two whole weeks.",
    "Could you please check the status of my refund from last month?",
    "Thank you, that is all I needed.", "My name is John Smith.",
]
BABBLE = [  # other people in the room: other voices, other words
    ("en-gb+m3", "The train to the city leaves from platform four in ten minutes."),
    ("en-us+f2", "I told her the meeting had been moved to Thursday afternoon."),
    ("en-gb+f3", "We should order more paper before the end of the week."),
    ("en-us+m4", "Did anyone see where I left the keys to the blue car?"),
]
SNRS_DB = (0, 5, 10)
MARGIN_S = 0.3
LEAD_S, TAIL_S, NOISE_ALONE_S = 1.0, 1.5, 4.0


def _power(audio: np.ndarray) -> float:
    loud = audio[np.abs(audio) > 1e-4]
    return float(np.mean(loud ** 2)) if len(loud) else 1e-9


def _babble(seconds: float) -> np.ndarray:
    voices = [espeak_ng(text, voice, 160, RATE) for voice, text in BABBLE]
    length = int(seconds * RATE)
    mix = np.zeros(length, dtype=np.float32)
    for offset, voice in enumerate(voices):
        looped = np.tile(voice / np.sqrt(_power(voice)), length // len(voice) + 2)
        start = offset * len(voice) // len(voices)  # not all starting together
        mix += looped[start:start + length]
    return mix


def hum(seconds: float, mains_hz: int, rate: int = RATE) -> np.ndarray:
    """Mains hum: `mains_hz` and its first 12 harmonics, each quieter by its order."""
    t = np.arange(int(seconds * rate)) / rate
    return sum(np.sin(2 * np.pi * mains_hz * k * t) / k for k in range(1, 14)).astype(np.float32)


def _noises(seconds: float, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Each noise at unit power; a segment of it is cut from a random place for each mix."""
    noises = {"white": rng.normal(0, 1, int(seconds * RATE)).astype(np.float32), "babble": _babble(seconds),
              "hum": np.concatenate([hum(seconds / 2, 50), hum(seconds / 2, 60)])}
    return {name: noise / np.sqrt(np.mean(noise ** 2)) for name, noise in noises.items()}


def _segment(noise: np.ndarray, length: int, rng: np.random.Generator) -> np.ndarray:
    start = int(rng.integers(0, len(noise) - length))
    return noise[start:start + length]


def mix(speech: np.ndarray, noise: np.ndarray, snr_db: float, rate: int = RATE) -> np.ndarray:
    """`speech` with LEAD_S of the noise alone before it and TAIL_S after, at `snr_db` over the noise (which
    must be that long)."""
    padded = np.concatenate([np.zeros(int(LEAD_S * rate), np.float32), speech,
                             np.zeros(int(TAIL_S * rate), np.float32)])
    scale = np.sqrt(_power(speech) / 10 ** (snr_db / 10))
    mixed = padded + scale * noise[:len(padded)]
    peak = float(np.max(np.abs(mixed)))
    return (mixed / peak * 0.9 if peak > 0.9 else mixed).astype(np.float32)  # no clipping, SNR kept


def _events(audio: np.ndarray, suppress: bool) -> list:
    """What a fresh session's server_vad reports on `audio` sent in 20 ms chunks."""
    from higgs_agent.agent.input_audio import InputAudio
    from higgs_agent.agent.noise import NoiseReduction
    from higgs_agent.agent.vad import VadSettings
    from higgs_agent.audio_formats import AudioFormat

    path = InputAudio(AudioFormat("audio/pcm", RATE), VadSettings(), noise=NoiseReduction() if suppress else None)
    events = []
    for start in range(0, len(audio), CHUNK):
        events += path.push(audio[start:start + CHUNK], RATE)
    return events


def _suppressed(audio: np.ndarray) -> np.ndarray:
    """`audio` as a suppressing session's ASR hears it, the suppressor's delay taken out."""
    from higgs_agent.agent.noise import NoiseSuppressor

    suppressor = NoiseSuppressor(rate=RATE)
    delay = int(round(suppressor.delay_ms * RATE / 1000))
    return np.concatenate([suppressor.push(audio), suppressor.flush()])[delay:delay + len(audio)]


def _condition(transcriber, sentences, noise, snr_db: float, seed: int) -> dict:  # noqa: ANN001
    """One noise at one SNR (`noise` None: clean speech): turn detection without and with suppression, and
    Whisper on the original and on the suppressed audio, all on the same mixes."""
    from higgs_agent.agent.vad import SpeechStarted, SpeechStopped

    rng = np.random.default_rng(seed)
    missed = {"off": 0, "on": 0}
    barge_ins = {"off": 0, "on": 0}
    errors: dict[str, list[float]] = {"original": [], "suppressed": []}
    lead = int((LEAD_S - MARGIN_S) * RATE)
    for text, speech in sentences:
        length = len(speech) + int((LEAD_S + TAIL_S) * RATE)
        mixed = mix(speech, _segment(noise, length, rng) if noise is not None else np.zeros(length), snr_db)
        alone = (_segment(noise, int(NOISE_ALONE_S * RATE), rng) * np.sqrt(_power(speech) / 10 ** (snr_db / 10))
                 if noise is not None else None)
        for name, suppress in (("off", False), ("on", True)):
            missed[name] += not any(isinstance(e, SpeechStopped) for e in _events(mixed, suppress))
            if alone is not None:
                barge_ins[name] += any(isinstance(e, SpeechStarted) for e in _events(alone, suppress))
        for name, heard in (("original", mixed), ("suppressed", _suppressed(mixed))):
            turn = heard[lead:lead + len(speech) + int(2 * MARGIN_S * RATE)]
            errors[name].append(word_error_rate(text, transcriber.transcribe(turn, "en").text))
    return {"missed_turn_ends": missed, "false_barge_ins": barge_ins if noise is not None else None,
            "wer": {name: round(sum(values) / len(values), 3) for name, values in errors.items()}}


def _cpu(seconds: float = 20.0) -> dict:
    """The suppressor alone on `seconds` of noisy audio in 20 ms chunks: CPU ms per audio second (median of 3)."""
    from higgs_agent.agent.noise import NoiseSuppressor

    audio = np.random.default_rng(1).normal(0, 0.1, int(seconds * RATE)).astype(np.float32)
    runs, pushes = [], []
    for _ in range(3):
        suppressor = NoiseSuppressor(rate=RATE)
        started = time.thread_time()
        for start in range(0, len(audio), CHUNK):
            began = time.perf_counter()
            suppressor.push(audio[start:start + CHUNK])
            pushes.append((time.perf_counter() - began) * 1000)
        runs.append((time.thread_time() - started) * 1000 / seconds)
    ms = float(np.median(runs))
    return {"ms_per_audio_s": round(ms, 1), "real_time_factor": round(ms / 1000, 4),
            "sessions_per_core": int(1000 // ms), "delay_ms": NoiseSuppressor(rate=RATE).delay_ms,
            # on the event loop: what one 20 ms chunk of a session holds it for
            "push_20ms_p50_ms": round(float(np.percentile(pushes, 50)), 3),
            "push_20ms_p99_ms": round(float(np.percentile(pushes, 99)), 3)}


def run_noise_bench(args: argparse.Namespace) -> dict:
    import os

    from higgs_agent.model.asr import Transcriber

    rng = np.random.default_rng(0)
    note("loading Whisper ...")
    transcriber = Transcriber.load(args.asr_model)
    transcriber.warmup()
    count = max(1, min(args.sentences, len(SENTENCES)))
    note(f"synthesizing {count} sentences and the babble ...")
    sentences = [(text, espeak_ng(text, "en-us", 160, RATE)) for text in SENTENCES[:count]]
    noises = _noises(60.0, rng)
    result: dict = {"bench": "noise", "asr_model": transcriber.name, "sentences": count,
                    "load_avg_1m": round(os.getloadavg()[0], 2), "suppressor": "rnnoise (pyrnnoise)"}
    note("clean speech, then each noise x SNR, without and with suppression ...")
    result["clean"] = _condition(transcriber, sentences, None, 0, 0)
    for seed, (kind, noise) in enumerate(noises.items()):
        for snr in SNRS_DB:
            result[f"{kind}_{snr}db"] = _condition(transcriber, sentences, noise, snr, seed * 100 + snr)
            note(f"{kind} {snr} dB: {result[f'{kind}_{snr}db']}")
    note("CPU per session ...")
    result["cpu"] = _cpu(args.cpu_seconds)
    result["load_avg_1m_after"] = round(os.getloadavg()[0], 2)
    transcriber.close()
    return result
