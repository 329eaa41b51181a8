"""What every benchmark does first: say what it is doing (on stderr, so the JSON stays the last stdout
line), and load the model it measures, making a mini one when none is named."""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np

from higgs_agent.audio import read_wav
from higgs_agent.model import load_higgs
from higgs_agent.model.loader import HiggsBundle
from higgs_agent.model.tiny import make_tiny_model

if TYPE_CHECKING:
    from higgs_agent.agent.services import AgentServices


def espeak_ng(text: str, voice: str = "en-us", wpm: int = 175, rate: int = 16_000) -> np.ndarray:
    """`text` spoken by espeak-ng (the benchmarks' test speech) as float32 mono at `rate`."""
    if shutil.which("espeak-ng") is None:
        raise SystemExit("this benchmark needs espeak-ng for its test speech: apt-get install espeak-ng")
    with tempfile.TemporaryDirectory() as folder:
        wav = os.path.join(folder, "speech.wav")
        subprocess.run(["espeak-ng", "-v", voice, "-s", str(wpm), "-w", wav, text], check=True)
        return read_wav(wav, rate)


def speech_edges_ms(audio: np.ndarray, rate: int, floor_db: float = -40.0, window_ms: int = 10) -> tuple[int, int]:
    """First and last `window_ms` window whose RMS is within `floor_db` of the loudest: the true speech edges."""
    hop = rate * window_ms // 1000
    frames = len(audio) // hop
    rms = np.sqrt(np.mean(audio[: frames * hop].reshape(frames, hop).astype(np.float64) ** 2, axis=1))
    loud = np.flatnonzero(rms > rms.max() * 10 ** (floor_db / 20))
    if len(loud) == 0:
        raise ValueError("no speech in the audio")
    return int(loud[0] * window_ms), int((loud[-1] + 1) * window_ms)


def median_ms(values: Iterable[float | None]) -> float | None:
    """The median of the values present, to 0.1 ms; None when there are none."""
    present = [value for value in values if value is not None]
    return round(statistics.median(present), 1) if present else None


def normalize_text(text: str) -> str:
    """Lower case, letters, digits and apostrophes only, single spaces."""
    kept = "".join(ch if ch.isalnum() or ch == "'" else " " for ch in text.lower())
    return " ".join(kept.split())


def word_error_rate(reference: str, hypothesis: str) -> float:
    """Word-level Levenshtein distance / reference length, after `normalize_text` on both."""
    ref, hyp = normalize_text(reference).split(), normalize_text(hypothesis).split()
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1] / max(1, len(ref))


def note(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def load_bench_model(args: argparse.Namespace) -> tuple[HiggsBundle, str]:
    """The bundle for `--model` (or a seed-0 mini model written to a scratch folder), and its name."""
    with tempfile.TemporaryDirectory() as scratch:
        model_dir = args.model
        if model_dir is None:
            note("making a mini model (random weights) ...")
            model_dir = str(make_tiny_model(os.path.join(scratch, "mini"), size="mini", seed=0))
        bundle = load_higgs(model_dir, device=args.device, dtype=args.dtype, threads=args.threads)
    return bundle, args.model or "mini (made on the fly)"


def describe(bundle: HiggsBundle, model_name: str) -> dict[str, str | int]:
    """Where a figure was measured: the model and the machine, for every benchmark's JSON."""
    import platform

    import torch

    gpu = f", {torch.cuda.get_device_name()}" if bundle.device.type == "cuda" else ""
    return {
        "model": model_name,
        "model_parameters": sum(p.numel() for p in bundle.model.parameters()),
        "device": str(bundle.device),
        "dtype": str(bundle.dtype).removeprefix("torch."),
        "machine": f"{platform.machine()} {os.cpu_count()} cpus, torch {torch.__version__}, "
                   f"{torch.get_num_threads()} threads{gpu}",
    }


def echo_agent_services(args: argparse.Namespace) -> tuple[AgentServices, HiggsBundle, str]:
    """The agent the latency benchmarks measure: `--model` (or a mini one), Whisper (`--asr-model`) warmed
    up, the echo responder, greedy phrases of at most `--max-frames`; with the bundle and the model's name."""
    from higgs_agent.agent.responders.echo import EchoResponder
    from higgs_agent.agent.services import AgentServices
    from higgs_agent.model.asr import Transcriber
    from higgs_agent.model.sampling import SamplingSettings
    from higgs_agent.streaming.engine import StreamingEngine

    bundle, model = load_bench_model(args)
    services = AgentServices(engine=StreamingEngine(bundle), transcriber=Transcriber.load(args.asr_model),
                             responders={"echo": EchoResponder()}, default_responder="echo",
                             sampling=SamplingSettings(greedy=True, max_frames=args.max_frames))
    services.transcriber.warmup()
    return services, bundle, model
