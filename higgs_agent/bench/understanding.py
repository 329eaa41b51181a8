"""`higgs-agent bench understanding`: what caller understanding costs per turn, next to the transcription of the
same turns, in one run; optionally, the speaker threshold and the state rules checked on real speech.

Per turn (espeak-ng sentences in several voices and speeds, 16 kHz): the analysis alone (`start` + `finish`, the
audio work on the analyzer's thread), the transcription alone (faster-whisper, `Transcriber`), and both the way
a session runs them, at once: `overlap_wait_ms` is how long `finish` still waits once the transcript is there,
the latency understanding adds to a turn. Also the parts of the analysis (speaker embedding, prosody) and the
cost of three pitch trackers per second of audio (why prosody uses pyin at 0.2 semitones).

`--speech-corpus DIR` (LibriSpeech layout: `SPEAKER-CHAPTER-UTTERANCE.flac|wav` anywhere below DIR, e.g. the
`audio_data` folder of Resemblyzer's repository) adds, on real speech:
- `speaker_calibration`: per turn length (1.5 s and 3 s cuts), how often a speaker's turn falls below the
  threshold against their own centroid of 1-3 earlier turns (a caller split in two: `false_new`), and how often
  another speaker's turn reaches it (two callers merged: `false_merge`), at the default threshold and across a
  grid; `minimax_threshold` keeps the worse of the two errors, over both lengths, lowest.
- `read_speech_states`: the states the rules give turns 3+ of each speaker with 4+ turns (their first two set
  the baseline); read speech is mostly neutral, so this is the rules' false-alarm rate.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import re
import statistics
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from higgs_agent.audio import read_wav
from higgs_agent.bench.common import espeak_ng, note

RATE = 16_000
SENTENCES = [
    "hello, can you tell me the weather forecast for tomorrow",
    "I would like to book a table for two people at eight tonight",
    "my package never arrived and I have been waiting for two whole weeks",
    "could you please check the status of my refund from last month",
    "what time does the pharmacy on the main street close on sundays",
]
VOICES = [("en-us+m3", 150), ("en-us+f4", 170), ("en-gb+m1", 130), ("en-us+f2", 190)]
CROPS_S = (1.5, 3.0)
GRID = np.round(np.arange(0.50, 0.901, 0.01), 2)


def _espeak(text: str, voice: str, wpm: int) -> np.ndarray:
    return espeak_ng(text, voice, wpm, RATE)


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 1)


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000


def _pitch_tracker_costs(audio: np.ndarray, repeats: int = 3) -> dict[str, float]:
    """ms per second of audio: librosa pyin at its default 0.1-semitone grid, at ours, and plain yin."""
    import librosa

    from higgs_agent.understanding import prosody

    common = dict(fmin=prosody.FMIN_HZ, fmax=prosody.FMAX_HZ, sr=RATE, frame_length=prosody.FRAME,
                  hop_length=prosody.HOP)
    trackers = {
        "pyin_0.1_semitone": lambda: librosa.pyin(audio, resolution=0.1, **common),
        f"pyin_{prosody.PITCH_RESOLUTION_SEMITONES}_semitone (used)":
            lambda: librosa.pyin(audio, resolution=prosody.PITCH_RESOLUTION_SEMITONES, **common),
        "yin (no voicing)": lambda: librosa.yin(audio, **common),
    }
    seconds = len(audio) / RATE
    costs = {}
    for name, track in trackers.items():
        track()  # numba compiles on first use
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            track()
            times.append(_ms(start))
        costs[name] = round(statistics.median(times) / seconds, 1)
    return costs


async def _measure_turns(analyzer, transcriber, audios: list[np.ndarray]) -> dict[str, list[float]]:  # noqa: ANN001
    """Per turn: transcription alone, analysis alone (start + finish) and its parts, then both at once as a
    session runs them (how long `finish` still waits once the transcript is there)."""
    from higgs_agent.understanding import measure_prosody

    times: dict[str, list[float]] = defaultdict(list)
    alone, overlapped = analyzer.new_caller_state(), analyzer.new_caller_state()
    for audio in audios:
        start = time.perf_counter()
        transcript = await transcriber.transcribe_async(audio)
        times["transcription"].append(_ms(start))

        start = time.perf_counter()
        await analyzer.start(audio, alone).finish(transcript.text, transcript.language)
        times["analysis"].append(_ms(start))

        start = time.perf_counter()
        analyzer.speaker_encoder.embed(audio)
        times["speaker_embed"].append(_ms(start))
        start = time.perf_counter()
        measure_prosody(audio)
        times["prosody"].append(_ms(start))

        analysis = analyzer.start(audio, overlapped)
        transcript = await transcriber.transcribe_async(audio)
        start = time.perf_counter()
        await analysis.finish(transcript.text, transcript.language)
        times["overlap_wait"].append(_ms(start))
    return times


def run_understanding_bench(args: argparse.Namespace) -> dict:
    import torch

    from higgs_agent.model.asr import Transcriber
    from higgs_agent.model.loader import set_cpu_threads
    from higgs_agent.understanding import TurnAnalyzer

    # as `serve` does: torch's thread count, which the analyzer thread's torch ops (the speaker encoder) use; two
    # threads on a 2-vCPU VM make the small LSTM several times slower (barrier waits), not faster
    threads = set_cpu_threads(getattr(args, "threads", None))
    turns = getattr(args, "turns", None) or 10
    note("loading Whisper and the analyzers ...")
    transcriber = Transcriber.load(getattr(args, "asr_model", None))
    analyzer = TurnAnalyzer.load(getattr(args, "speaker_model", None), getattr(args, "emotion_model", None))
    try:
        transcriber.warmup()
        analyzer.warmup()
        audios = [_espeak(SENTENCES[i % len(SENTENCES)], *VOICES[i % len(VOICES)]) for i in range(turns)]
        note(f"measuring {turns} turns ...")
        times = asyncio.run(_measure_turns(analyzer, transcriber, audios))
        figures = {
            "turns": turns,
            "turn_audio_s_p50": round(statistics.median(len(a) / RATE for a in audios), 2),
            "analysis_ms_p50": _median(times["analysis"]),
            "transcription_ms_p50": _median(times["transcription"]),
            "analysis_vs_transcription": round(statistics.median(times["analysis"])
                                               / statistics.median(times["transcription"]), 3),
            "overlap_wait_ms_p50": _median(times["overlap_wait"]),
            "speaker_embed_ms_p50": _median(times["speaker_embed"]),
            "prosody_ms_p50": _median(times["prosody"]),
            "pitch_tracker_ms_per_audio_s": _pitch_tracker_costs(np.concatenate(audios[:3])),
            "speaker_model": analyzer.speaker_encoder.name,
            "speaker_threshold": analyzer.speaker_threshold,
            "emotion_model": analyzer.emotion_classifier.name if analyzer.emotion_classifier else None,
            "asr": transcriber.name,
            "machine": f"{platform.machine()} {os.cpu_count()} cpus, torch {torch.__version__}, {threads} threads",
        }
        corpus = getattr(args, "speech_corpus", None)
        if corpus:
            speakers = _corpus(Path(corpus))
            note(f"calibrating on {sum(map(len, speakers.values()))} turns of {len(speakers)} speakers ...")
            figures["speaker_calibration"] = speaker_calibration(analyzer.speaker_encoder, speakers,
                                                                 analyzer.speaker_threshold)
            figures["read_speech_states"] = read_speech_states(analyzer.rules, transcriber, speakers)
    finally:
        analyzer.close()
        transcriber.close()
    return figures


def _corpus(folder: Path) -> dict[str, list[Path]]:
    """Speaker id -> their files, from LibriSpeech-style names (SPEAKER-CHAPTER-UTTERANCE)."""
    speakers: dict[str, list[Path]] = defaultdict(list)
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() in (".flac", ".wav") and re.match(r"^\d+-\d+-\d+$", path.stem):
            speakers[path.stem.split("-")[0]].append(path)
    if not speakers:
        raise SystemExit(f"no LibriSpeech-style SPEAKER-CHAPTER-UTTERANCE.flac files under {folder}")
    return speakers


def _unit(vector: np.ndarray) -> np.ndarray:
    return vector / np.linalg.norm(vector)


def speaker_calibration(encoder, speakers: dict[str, list[Path]], threshold: float) -> dict:  # noqa: ANN001
    """Split and merge rates of the registry's rule (a turn against a centroid of earlier turns) on real speech."""
    per_length, worst = {}, np.zeros(len(GRID))
    for crop in CROPS_S:
        def embed(path: Path, crop: float = crop) -> np.ndarray | None:
            audio = read_wav(path, RATE)
            return encoder.embed(audio[RATE // 2: RATE // 2 + int(crop * RATE)])  # skip the leading silence

        embedded = {s: [e for e in map(embed, files) if e is not None] for s, files in speakers.items()}
        enrolled = {s: e for s, e in embedded.items() if len(e) >= 4}
        same, other = [], []
        for name, embeddings in enrolled.items():
            for earlier in (1, 2, 3):
                same += [float(_unit(np.sum(embeddings[i - earlier:i], axis=0)) @ embeddings[i])
                         for i in range(earlier, len(embeddings))]
            centroids = [embeddings[0], _unit(np.sum(embeddings[:3], axis=0))]
            strangers = [e for s, es in embedded.items() if s != name for e in es]
            other += [float(c @ e) for c in centroids for e in strangers]
        same_a, other_a = np.array(same), np.array(other)
        false_new = np.array([(same_a < t).mean() for t in GRID])
        false_merge = np.array([(other_a >= t).mean() for t in GRID])
        worst = np.maximum(worst, np.maximum(false_new, false_merge))
        equal = int(np.argmin(np.abs(false_new - false_merge)))
        per_length[f"{crop:g}s"] = {
            "same_trials": len(same), "other_trials": len(other),
            "at_default": {"false_new_pct": round(100 * float((same_a < threshold).mean()), 1),
                           "false_merge_pct": round(100 * float((other_a >= threshold).mean()), 1)},
            "equal_error_threshold": float(GRID[equal]),
            "equal_error_pct": round(50 * float(false_new[equal] + false_merge[equal]), 1),
            "grid": {f"{t:.2f}": [round(100 * float(n), 1), round(100 * float(m), 1)]
                     for t, n, m in zip(GRID, false_new, false_merge, strict=True) if round(t * 100) % 5 == 0},
        }
    best = int(np.argmin(worst))
    return {"threshold": threshold, "by_turn_length": per_length, "minimax_threshold": float(GRID[best]),
            "minimax_worst_error_pct": round(100 * float(worst[best]), 1),
            "grid_columns": ["false_new_pct", "false_merge_pct"]}


def read_speech_states(rules, transcriber, speakers: dict[str, list[Path]], max_s: float = 8.0) -> dict:  # noqa: ANN001
    """How the state rules label real read speech (each speaker against their own first two turns)."""
    from higgs_agent.understanding import Prosody, SpeakerBaseline, measure_prosody, speaking_rate

    states: Counter[str] = Counter()
    spread: dict[str, list[float]] = defaultdict(list)
    for files in speakers.values():
        if len(files) < 4:
            continue
        baseline = SpeakerBaseline()
        for path in files:
            audio = read_wav(path, RATE)[: int(max_s * RATE)]
            features = measure_prosody(audio)
            prosody = Prosody.of(features, speaking_rate(transcriber.transcribe(audio).text, features.speech_s))
            delta = baseline.compare(prosody)
            if baseline.is_frozen and delta is not None:
                states[rules.classify(delta).value] += 1
                for name in ("pitch_pct", "energy_db", "rate_pct"):
                    if getattr(delta, name) is not None:
                        spread[name].append(getattr(delta, name))
            baseline.learn(prosody)
    total = sum(states.values())
    return {
        "turns": total,
        "states_pct": {state: round(100 * count / total, 1) for state, count in states.most_common()},
        "vs_baseline_p10_p90": {name: [round(float(v), 1) for v in np.percentile(values, [10, 90])]
                                for name, values in spread.items()},
    }
