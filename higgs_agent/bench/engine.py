"""`higgs-agent bench engine`: the step loop against a bare cached forward, TTFA, exactness, codec streaming.

Every ratio compares two things measured in this run on this machine. Times are medians.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import torch

from higgs_agent.bench.common import describe, load_bench_model, note
from higgs_agent.model.loader import HiggsBundle
from higgs_agent.model.prompts import ModelInputs, SpeechPrompt, build_inputs
from higgs_agent.model.reference import generate_rows
from higgs_agent.model.sampling import SamplingSettings
from higgs_agent.bench.codec_quality import measure_stream_quality
from higgs_agent.streaming.engine import StreamingEngine
from higgs_agent.streaming.kv_slots import SlotKVCache
from higgs_agent.streaming.scheduler import BatchScheduler, run_to_end

BENCH_TEXT = "The quick brown fox jumps over the lazy dog, and then it runs all the way back home again."
BENCH_SCENE = "Audio is recorded from a quiet room."


def engine_step_times(scheduler: BatchScheduler, inputs: ModelInputs, frames: int, seed: int) -> list[float]:
    """Wall time of each step of a lone stream (forward + sampling + bookkeeping), the prefill step excluded."""
    generation = scheduler.start(inputs, SamplingSettings(seed=seed, max_frames=frames))
    scheduler.step()  # prefill (and the first decode)
    times = []
    while not generation.ended:
        start = time.perf_counter()
        scheduler.step()
        times.append((time.perf_counter() - start) * 1000.0)
    return times


def bare_forward_times(bundle: HiggsBundle, inputs: ModelInputs, steps: int) -> list[float]:
    """The same model, the same slot cache, the same one-row forwards, and nothing else: the floor for a
    step."""
    model = bundle.model
    cache = SlotKVCache(model.config, 1, bundle.dtype, bundle.device)
    length = inputs.input_ids.shape[1]
    row = torch.full((1, 1, bundle.num_codebooks), 7, dtype=torch.long, device=bundle.device)
    times = []
    with torch.inference_mode():
        view = cache.view(0, [0], length)
        model(**inputs.as_kwargs(bundle.device), position_ids=view.position_ids(), cache=view,
              use_cache=True, logits_to_keep=1)
        view.commit()
        for _ in range(steps):
            start = time.perf_counter()
            view = cache.view(0, [cache.lengths[0]], 1)
            out = model(audio_input_ids=row, position_ids=view.position_ids(), cache=view, use_cache=True)
            view.commit()
            out.logits[0, -1].float().cpu()  # the engine also brings logits to float32 on the host side
            times.append((time.perf_counter() - start) * 1000.0)
    return times


async def measure_ttfa(engine: StreamingEngine, inputs: ModelInputs) -> tuple[float, int]:
    """Time to first PCM chunk through the whole engine (its model worker included), and how many model steps
    had run by then."""
    async with engine.stream(inputs, SamplingSettings(seed=0, max_frames=200)) as speech:
        async for _ in speech.pcm():
            break
        assert speech.generation is not None
        return speech.stats.ttfa_ms, speech.generation.rows


def greedy_matches_reference(bundle: HiggsBundle, scheduler: BatchScheduler, inputs: ModelInputs) -> bool:
    settings = SamplingSettings(greedy=True, max_frames=40)
    rows = torch.stack([out.row for out in run_to_end(scheduler, scheduler.start(inputs, settings))])
    return bool(torch.equal(rows, generate_rows(bundle, inputs, settings)))


def run_engine_bench(args: argparse.Namespace) -> dict:
    bundle, model_dir = load_bench_model(args)
    scheduler = BatchScheduler(bundle)
    inputs = build_inputs(bundle.processor, SpeechPrompt(BENCH_TEXT, scene=BENCH_SCENE))

    note("warming up ...")
    engine_step_times(scheduler, inputs, 20, seed=0)
    bare_forward_times(bundle, inputs, 20)

    engine_runs, forward_runs = [], []
    for repeat in range(args.repeats):  # interleaved so drifts in machine load hit both alike
        engine_runs.append(engine_step_times(scheduler, inputs, args.frames, seed=repeat))
        forward_runs.append(bare_forward_times(bundle, inputs, len(engine_runs[-1])))
    engine_ms = statistics.median(t for run in engine_runs for t in run)
    forward_ms = statistics.median(t for run in forward_runs for t in run)
    note(f"engine step {engine_ms:.2f} ms, bare forward {forward_ms:.2f} ms")

    engine = StreamingEngine(bundle)
    try:
        ttfa = [asyncio.run(measure_ttfa(engine, inputs)) for _ in range(args.repeats)]
    finally:
        engine.close()
    ttfa_ms = statistics.median(t for t, _ in ttfa)
    matches = greedy_matches_reference(bundle, scheduler, inputs)
    note(f"TTFA {ttfa_ms:.1f} ms after {ttfa[0][1]} steps; greedy matches generate(): {matches}")

    codes = torch.randint(0, 1024, (1, bundle.num_codebooks, 250), generator=torch.Generator().manual_seed(0))
    codec = measure_stream_quality(bundle.codec, codes, repeats=args.repeats)
    note(f"codec stream: {codec}")

    return {
        "engine_step_ms": round(engine_ms, 3),
        "forward_step_ms": round(forward_ms, 3),
        "engine_vs_forward": round(engine_ms / forward_ms, 3),
        "ttfa_steps": ttfa[0][1],
        "ttfa_ms": round(ttfa_ms, 2),
        "greedy_matches_reference": matches,
        **codec,
        **describe(bundle, model_dir),
        "frames_per_run": args.frames,
        "repeats": args.repeats,
    }
