"""`higgs-agent bench turns`: how soon the agent knows the caller is done, and has their words (#22).

On espeak-ng speech (finished sentences and unfinished clauses, in several voices), in one run:

- **asr**: Whisper over faster-whisper's full 30 s window (the baseline) and over a window fitted to the turn
  (model/asr.py): median milliseconds per turn, word error rate on the finished sentences, and the speed-up.
  `--language xx` adds that language's sentences (espeak-ng's voice for it), which needs a multilingual
  `--asr-model`: with the default English-only tiny.en it is reported as skipped, with the reason.
- **end_of_turn**: the semantic_vad judge at each utterance's first pause: smart-turn's voice verdict alone
  (P >= 0.5), the words alone (not open), and the blend the server uses (end_of_turn.py), as the share of
  utterances each gets right (finished -> end, unfinished -> wait); and the time a pause costs until the verdict
  (the reading and smart-turn side by side); `speech_end_to_transcript_ms` adds the pause the judge waits for
  (auto eagerness), against server_vad's fixed 500 ms silence plus the full-window transcript after it.
- **vad**: webrtcvad (ours, mode 2, 20 ms frames) against Silero v5 (its ONNX ships in the `pipecat-ai` wheel;
  32 ms frames, P >= 0.5) on the finished sentences, clean, with white noise at 10 dB SNR, and over a phone line
  (mu-law 8 kHz and back): how late each hears the speech end (median ms after the true last sample), how many
  false pauses (>= 100 ms unvoiced inside the speech: each one a pause semantic_vad must judge) and how often
  it misses the speech outright.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import time

import numpy as np

from higgs_agent.bench.common import espeak_ng, median_ms, note, speech_edges_ms, word_error_rate

RATE = 16_000
FINISHED = [
    "What time does the museum open today?", "Thank you, that is all I needed.",
    "Can you tell me the weather forecast for tomorrow?", "I would like to book a table for two people.",
    "My name is John Smith.", "Yes, please go ahead.", "No thanks.", "Please cancel my subscription.",
    "My package never arrived and I have been waiting for two whole weeks.",
    "Could you please check the status of my refund from last month?",
]
UNFINISHED = [
    "I would like to book a table for", "Can you tell me the weather forecast for", "My name is",
    "I think that we should", "The reason I am calling is because", "So what I wanted to ask was, um",
    "I need to change the delivery address to", "Could you check whether my order", "I was wondering if you could",
    "Please send the invoice to my",
]
VOICES = {"en": [("en-us", 150), ("en-gb+m1", 135), ("en-us+f4", 170)]}
OTHER_LANGUAGES = {  # what the translation mode's callers say, read by espeak-ng's voice for the language
    "fr": ["Bonjour, je voudrais un grand café au lait.", "Pouvez-vous m'aider à trouver la gare ?",
           "Ma commande n'est jamais arrivée.", "Quelle heure est-il, s'il vous plaît ?"],
    "es": ["Buenos días, quisiera un café con leche.", "¿Puede ayudarme a encontrar la estación?",
           "Mi pedido nunca llegó.", "¿Qué hora es, por favor?"],
    "de": ["Guten Morgen, ich hätte gern einen großen Kaffee.", "Können Sie mir helfen, den Bahnhof zu finden?",
           "Meine Bestellung ist nie angekommen.", "Wie spät ist es, bitte?"],
}
SERVER_VAD_SILENCE_MS = 500
FALSE_PAUSE_MS = 100


def _espeak(text: str, voice: str, wpm: int) -> np.ndarray:
    return np.concatenate([np.zeros(RATE // 4, dtype=np.float32), espeak_ng(text, voice, wpm, RATE)])


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000


def _asr(full, fitted, corpus: list[tuple[str, np.ndarray]], language: str) -> dict:  # noqa: ANN001
    """Both windows over the same turns: median ms, mean WER, and the speed-up of the fitted one."""
    figures = {}
    for name, transcriber in (("full", full), ("fitted", fitted)):
        times, errors = [], []
        for text, audio in corpus:
            started = time.perf_counter()
            heard = transcriber.transcribe(audio, language).text
            times.append(_ms(started))
            errors.append(word_error_rate(text, heard))
        figures[name] = {"median_ms": median_ms(times), "wer": round(sum(errors) / len(errors), 4)}
    figures["speedup"] = round(figures["full"]["median_ms"] / figures["fitted"]["median_ms"], 2)
    return figures


async def _judge(fitted, model, policy, audio: np.ndarray) -> tuple[float, str, float]:  # noqa: ANN001
    """One pause judged the way the session does: the reading and smart-turn side by side."""
    from higgs_agent.agent.end_of_turn import words_verdict

    paused = np.concatenate([audio, np.zeros(policy.pause_ms * RATE // 1000, dtype=np.float32)])
    started = time.perf_counter()
    reading, voice = await asyncio.gather(fitted.transcribe_async(audio), model.probability_async(paused))
    return voice, words_verdict(reading.text, reading.language), _ms(started)


def _end_of_turn(fitted, corpus: list[tuple[bool, np.ndarray]]) -> dict:  # noqa: ANN001
    from higgs_agent.agent.end_of_turn import EndOfTurnPolicy, SmartTurn

    model = SmartTurn()
    policy = EndOfTurnPolicy.for_eagerness("auto")
    right = {"voice": 0, "words": 0, "blend": 0}
    decide_ms, judged = [], []
    for finished, audio in corpus:
        voice, words, took = asyncio.run(_judge(fitted, model, policy, audio))
        decide_ms.append(took)
        judged.append((finished, voice, words))
        right["voice"] += (voice >= 0.5) == finished
        right["words"] += (words != "open") == finished
        right["blend"] += policy.complete(voice, words) == finished
    model.close()
    count = len(corpus)
    finished_count = sum(1 for finished, _ in corpus if finished)
    ended = sum(1 for finished, v, w in judged if finished and policy.complete(v, w))
    held = sum(1 for finished, v, w in judged if not finished and not policy.complete(v, w))
    return {
        "utterances": count,
        "accuracy": {name: round(value / count, 3) for name, value in right.items()},
        "finished_ended_at_first_pause": f"{ended}/{finished_count}",
        "unfinished_held": f"{held}/{count - finished_count}",
        "verdict_ms": median_ms(decide_ms),
        "pause_ms": policy.pause_ms,
    }


def _webrtc_frames(audio: np.ndarray) -> tuple[list[bool], float]:
    import webrtcvad

    from higgs_agent.audio import float_to_pcm16

    vad, step = webrtcvad.Vad(2), RATE // 50
    pcm = float_to_pcm16(audio)
    return [vad.is_speech(pcm[i * 2:(i + step) * 2], RATE) for i in range(0, len(audio) - step + 1, step)], 20.0


def _silero_frames(model, audio: np.ndarray) -> tuple[list[bool], float]:  # noqa: ANN001
    model.reset_states()
    step = 512
    return [float(model(audio[i:i + step][None], RATE)[0][0]) >= 0.5
            for i in range(0, len(audio) - step + 1, step)], step * 1000 / RATE


def _vad_figures(frames: list[bool], frame_ms: float, start_ms: float, end_ms: float) -> tuple[float, int] | None:
    """(ms from the true end to the end of the last voiced frame, false pauses inside the speech); None: missed."""
    voiced = [i for i, flag in enumerate(frames) if flag]
    if not voiced:
        return None
    pauses, run, need = 0, 0, math.ceil(FALSE_PAUSE_MS / frame_ms)
    for i in range(int(start_ms // frame_ms), min(len(frames), int(end_ms // frame_ms))):
        run = run + 1 if not frames[i] else 0
        pauses += run == need  # counted once, when the unvoiced run grows long enough
    return (voiced[-1] + 1) * frame_ms - end_ms, pauses


def _conditions(audio: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    from higgs_agent.audio import resample
    from higgs_agent.audio_formats import AudioFormat, decode_audio, encode_audio

    power = float(np.mean(audio[audio != 0] ** 2)) if np.any(audio) else 1e-6
    noise = rng.normal(0, np.sqrt(power / 10), len(audio)).astype(np.float32)  # 10 dB SNR
    line = AudioFormat("audio/pcmu")
    phone = resample(decode_audio(encode_audio(audio, line, from_rate=RATE), line), line.rate, RATE)
    return {"clean": audio, "noisy_10db": np.clip(audio + noise, -1, 1), "phone": phone[:len(audio)]}


def _vad_comparison(corpus: list[np.ndarray]) -> dict:
    from pipecat.audio.vad.silero import SileroOnnxModel

    from higgs_agent.agent.end_of_turn import pipecat_data_file

    silero = SileroOnnxModel(str(pipecat_data_file("audio", "vad", "data", "silero_vad.onnx")))
    rng = np.random.default_rng(0)
    rows: dict[str, dict[str, list]] = {}
    for clean in corpus:
        audio = np.concatenate([clean, np.zeros(RATE, dtype=np.float32)])
        start_ms, end_ms = speech_edges_ms(clean, RATE)
        for condition, heard in _conditions(audio, rng).items():
            for name, frames in (("webrtcvad", _webrtc_frames(heard)), ("silero", _silero_frames(silero, heard))):
                row = rows.setdefault(f"{name}/{condition}", {"lag": [], "pauses": [], "missed": 0})
                figures = _vad_figures(*frames, start_ms, end_ms)
                if figures is None:
                    row["missed"] += 1
                    continue
                row["lag"].append(figures[0])
                row["pauses"].append(figures[1])
    return {key: {"end_heard_after_ms_p50": median_ms(row["lag"]),
                  "false_pauses_per_utterance": round(sum(row["pauses"]) / max(1, len(row["pauses"])), 2),
                  "missed": row["missed"]} for key, row in rows.items()}


def run_turns_bench(args: argparse.Namespace) -> dict:
    from higgs_agent.model.asr import Transcriber

    note("loading Whisper twice (full and fitted windows) ...")
    full = Transcriber.load(args.asr_model, window="full")
    fitted = Transcriber.load(args.asr_model, window="fitted")
    full.warmup()
    fitted.warmup()
    voices = VOICES["en"][:max(1, args.voices)]
    note(f"synthesizing {len(FINISHED) + len(UNFINISHED)} utterances x {len(voices)} voices ...")
    finished = [(text, _espeak(text, voice, wpm)) for text in FINISHED for voice, wpm in voices]
    unfinished = [(text, _espeak(text, voice, wpm)) for text in UNFINISHED for voice, wpm in voices]
    note("transcribing (both windows) ...")
    result: dict = {"bench": "turns", "asr_model": full.name, "asr": {"en": _asr(full, fitted, finished, "en")}}
    for language in args.language or []:
        if fitted.english_only:
            result["asr"][language] = {"skipped": f"{fitted.name} is English-only; pass a multilingual "
                                                  f"--asr-model (e.g. a CTranslate2 folder of Whisper small)"}
            continue
        sentences = OTHER_LANGUAGES.get(language)
        if sentences is None:
            raise SystemExit(f"no sentences for {language!r}; known: {', '.join(OTHER_LANGUAGES)}")
        corpus = [(text, _espeak(text, language, 150)) for text in sentences]
        result["asr"][language] = _asr(full, fitted, corpus, language)
    note("judging each utterance's first pause (smart-turn + words) ...")
    end = _end_of_turn(fitted, [(True, audio) for _, audio in finished] + [(False, audio) for _, audio in unfinished])
    # From where the VAD hears the speech end (bench agent measures from the true last word, over a socket):
    # semantic_vad waits its pause, then the verdict, and the transcript is ready with it; server_vad (before
    # #22) waited its silence, then transcribed the whole turn over the full window.
    end["speech_end_to_transcript_ms"] = round(end["pause_ms"] + end["verdict_ms"], 1)
    end["server_vad_speech_end_to_transcript_ms"] = round(SERVER_VAD_SILENCE_MS
                                                          + result["asr"]["en"]["full"]["median_ms"], 1)
    result["end_of_turn"] = end
    note("webrtcvad vs Silero: clean, noisy, phone ...")
    result["vad"] = _vad_comparison([audio for _, audio in finished])
    full.close()
    fitted.close()
    return result
