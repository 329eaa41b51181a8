"""`bench startup`: how soon a new `serve` is of use. From the process's start: a wrong model folder's error,
/health answering 200, and the first reply audio of a spoken turn sent the moment health answered (with
understanding on, as `serve` runs by default). The baseline, measured in the same run: importing torch and
transformers' Higgs model code alone, the floor no start-up can go under."""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from higgs_agent import SAMPLE_RATE
from higgs_agent.bench.agent import UTTERANCE, espeak
from higgs_agent.bench.common import note
from higgs_agent.testing.serve_process import running_serve, wait_healthy

IMPORT_FLOOR = "import torch; from transformers import HiggsAudioV2ForConditionalGeneration"


def _seconds(command: list[str]) -> tuple[float, subprocess.CompletedProcess]:
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    return time.monotonic() - started, done


def _first_turn(model_dir: str, speech: Any) -> dict[str, float]:  # noqa: ANN401 - float32 audio
    from higgs_agent.client import talk

    with running_serve(["--model", model_dir], wait=False) as server:
        health_s = wait_healthy(server, 300)
        first_audio: list[float] = []

        def on_event(event: dict[str, Any]) -> None:
            if event["type"] == "response.output_audio.delta" and not first_audio:
                first_audio.append(time.monotonic() - server.started_at)

        result = asyncio.run(talk(server.ws_url, speech, SAMPLE_RATE, realtime_pace=False, on_event=on_event,
                                  timeout_s=120))
        done_s = time.monotonic() - server.started_at
        warming = "still warming up in the background" in server.log()
    if not first_audio or not len(result.audio):
        raise SystemExit(f"the first turn got no reply audio: {result}")
    return {"health_s": health_s, "first_audio_s": first_audio[0], "reply_done_s": done_s,
            "warmed_in_background": warming}


def run_startup_bench(args: argparse.Namespace) -> dict[str, Any]:
    from higgs_agent.model.tiny import make_tiny_model

    speech = espeak(UTTERANCE)
    with tempfile.TemporaryDirectory() as scratch:
        model_dir = args.model
        if model_dir is None:
            note("making a tiny model (random weights) ...")
            model_dir = str(make_tiny_model(Path(scratch) / "tiny", size="tiny", seed=0))
        missing = []
        for _ in range(args.runs):
            seconds, done = _seconds([sys.executable, "-m", "higgs_agent", "serve", "--model",
                                      str(Path(scratch) / "nope")])
            if done.returncode != 2 or "does not exist" not in done.stderr:
                raise SystemExit(f"serve with a missing model folder did not fail clearly: {done.stderr[-500:]}")
            missing.append(seconds)
        floors, turns = [], []
        for run in range(args.runs):
            floors.append(_seconds([sys.executable, "-c", IMPORT_FLOOR])[0])
            note(f"start {run + 1}/{args.runs} ...")
            turns.append(_first_turn(model_dir, speech))
    median = statistics.median
    health = median(t["health_s"] for t in turns)
    floor = median(floors)
    return {
        "runs": args.runs,
        "missing_model_error_s": round(median(missing), 3),
        "health_s": round(health, 2),
        "first_reply_audio_s": round(median(t["first_audio_s"] for t in turns), 2),
        "first_reply_done_s": round(median(t["reply_done_s"] for t in turns), 2),
        "import_floor_s": round(floor, 2),
        "health_vs_import_floor": round(health / floor, 2),
        "analyzer_warmed_in_background": all(t["warmed_in_background"] for t in turns),
        "per_run": [{k: (round(v, 2) if isinstance(v, float) else v) for k, v in t.items()} for t in turns],
        "model": args.model or "tiny (made on the fly)",
    }
