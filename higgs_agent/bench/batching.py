"""`higgs-agent bench batching`: many streams on one model. Throughput against the number of streams, the
stall a newcomer's prompt causes, exactness against running alone, and whether batching the codec pays.

Everything is measured in this run on this machine, with the scheduler driven synchronously (one step at
a time, no other threads), so step times are the engine's own. Streams use the default sampling settings
(temperature, top-k, top-p, repetition-aware sampling), each with its own seed.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass

import numpy as np
import torch

from higgs_agent import FRAME_RATE, HOP_LENGTH
from higgs_agent.bench.common import describe, load_bench_model, note
from higgs_agent.model.loader import HiggsBundle
from higgs_agent.model.prompts import (
    ModelInputs,
    SpeechPrompt,
    VoiceReference,
    build_inputs,
)
from higgs_agent.model.sampling import SamplingSettings
from higgs_agent.streaming.codec_stream import (
    DEFAULT_CHUNK_FRAMES,
    CodecWindow,
    decode_windows,
)
from higgs_agent.streaming.generation import Generation
from higgs_agent.streaming.scheduler import BatchScheduler, StepReport

STREAM_COUNTS = (1, 2, 4, 8, 16)
JOIN_BESIDE = 8  # running streams a long-prompt newcomer joins
REFERENCE_SECONDS = 8  # the newcomer's voice reference: a long prompt
TEXTS = (
    "The quick brown fox jumps over the lazy dog, and then it runs all the way back home again.",
    "Hello there. How are you today?",
    "A second voice says something rather different from the first one.",
    "Numbers: one, two, three, four, five, six, seven.",
)
SCENE = "Audio is recorded from a quiet room."


# ---------------------------------------------------------------------------------------------------------
# Scripted runs: who joins and who is cancelled at which step (shared with the tests)
# ---------------------------------------------------------------------------------------------------------


@dataclass
class ScriptedStream:
    inputs: ModelInputs
    settings: SamplingSettings
    join_step: int = 0  # started just before this step
    cancel_step: int | None = None  # cancelled just before this step


def run_scripted(scheduler: BatchScheduler, streams: list[ScriptedStream], max_steps: int = 100_000,
                 ) -> tuple[list[torch.Tensor], list[Generation], list[StepReport]]:
    """Step `scheduler` synchronously through the script; each stream's rows (n, K), its Generation, and
    every step's report."""
    generations: dict[int, Generation] = {}
    rows: dict[Generation, list[torch.Tensor]] = {}
    reports = []
    for step in range(max_steps):
        for i, stream in enumerate(streams):
            if stream.join_step == step:
                generations[i] = scheduler.start(stream.inputs, stream.settings)
                rows[generations[i]] = []
            if stream.cancel_step == step and i in generations:
                scheduler.cancel(generations[i])
        report = scheduler.step()
        reports.append(report)
        for generation, out in report.outputs:
            if generation in rows:
                rows[generation].append(out.row)
        if len(generations) == len(streams) and all(g.ended for g in generations.values()):
            break
    empty = torch.empty(0, scheduler.ids.num_codebooks, dtype=torch.long)
    ordered = [generations[i] for i in range(len(streams))]
    return [torch.stack(rows[g]) if rows[g] else empty for g in ordered], ordered, reports


def matches_alone(scheduler: BatchScheduler, streams: list[ScriptedStream]) -> tuple[bool, list[int]]:
    """Run the script, then each stream alone; True if every stream's rows equal its first rows alone.
    Also returns each stream's row count in the scripted run."""
    together, _, _ = run_scripted(scheduler, streams)
    same = True
    for stream, rows in zip(streams, together):
        alone, _, _ = run_scripted(scheduler, [ScriptedStream(stream.inputs, stream.settings)])
        same = same and rows.shape[0] > 0 and torch.equal(rows, alone[0][:rows.shape[0]])
    return same, [int(r.shape[0]) for r in together]


# ---------------------------------------------------------------------------------------------------------
# Measurements
# ---------------------------------------------------------------------------------------------------------


def _settle(scheduler: BatchScheduler) -> None:
    """Step until no stream is waiting for its prompt."""
    while scheduler.prefilling or scheduler.busy_slots > len(scheduler.decoding):
        scheduler.step()


def _stop(scheduler: BatchScheduler, generations: list[Generation]) -> None:
    for generation in generations:
        scheduler.cancel(generation)
    scheduler.step()  # lets go of them


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def _run_streams(scheduler: BatchScheduler, inputs: ModelInputs, n: int, steps: int) -> tuple[list[float], int]:
    """n streams together for `steps` counted steps, steady state: a stream that ends (sampling can pick
    end-of-audio) is replaced at once, and steps that ran a prompt are not counted, so every counted
    step decoded n streams and nothing else. Returns the counted step times (ms) and rows produced."""
    seeds = iter(range(1_000_000))
    generations = [scheduler.start(inputs, SamplingSettings(seed=next(seeds))) for _ in range(n)]
    _settle(scheduler)
    times, rows = [], 0
    while len(times) < steps:
        t = time.perf_counter()
        report = scheduler.step()
        elapsed = (time.perf_counter() - t) * 1000.0
        if not report.prefill_tokens and report.decoded == n:
            times.append(elapsed)
            rows += len(report.outputs)
        for i, generation in enumerate(generations):
            if generation.finished:
                generations[i] = scheduler.start(inputs, SamplingSettings(seed=next(seeds)))
    _stop(scheduler, generations)
    return times, rows


def throughput(scheduler: BatchScheduler, inputs: ModelInputs, counts: tuple[int, ...], frames: int,
               rounds: int = 3) -> list[dict]:
    """Per stream count: aggregate frames/s and step-time percentiles over `frames` steady steps, taken
    in `rounds` interleaved slices so a load change on a shared machine hits every count alike."""
    times: dict[int, list[float]] = {n: [] for n in counts}
    rows = dict.fromkeys(counts, 0)
    for r in range(rounds):
        for n in counts:
            t, produced = _run_streams(scheduler, inputs, n, frames // rounds + (r < frames % rounds))
            times[n] += t
            rows[n] += produced
    return [{"n": n, "frames_per_s_total": round(rows[n] / (sum(times[n]) / 1000.0), 2),
             "step_ms_p50": round(statistics.median(times[n]), 3),
             "step_ms_p95": round(_percentile(times[n], 95), 3)} for n in counts]


def realtime_streams(scheduler: BatchScheduler, inputs: ModelInputs, streams: list[dict], frames: int) -> int:
    """The most streams that each get >= 25 frames/s: the measured counts, then the counts between the
    last that kept up and the first that did not (bisected, measured the same way)."""
    def keeps_up(n: int) -> bool:
        return throughput(scheduler, inputs, (n,), frames, rounds=1)[0]["frames_per_s_total"] / n >= FRAME_RATE

    ok = [s["n"] for s in streams if s["frames_per_s_total"] / s["n"] >= FRAME_RATE]
    if not ok:
        return 0
    lo = max(ok)
    higher = [s["n"] for s in streams if s["n"] > lo]
    hi = min(higher) if higher else lo + 1
    if not higher:
        return lo
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if keeps_up(mid) else (lo, mid)
    return lo


def join_stall(scheduler: BatchScheduler, running: ModelInputs, newcomer: ModelInputs, steps_before: int) -> dict:
    """`JOIN_BESIDE` streams run; a newcomer with a long prompt joins. Every step runs each running stream
    one frame, so a step's time is the gap between its frames: the worst step while the newcomer's
    prompt goes in is the stall it causes; the median before it is the normal step."""
    generations = [scheduler.start(running, SamplingSettings(seed=i)) for i in range(JOIN_BESIDE)]
    _settle(scheduler)
    before = [scheduler.step().step_ms for _ in range(steps_before)]
    joiner = scheduler.start(newcomer, SamplingSettings(seed=99))
    during: list[StepReport] = []
    while joiner.rows == 0:
        during.append(scheduler.step())
    _stop(scheduler, generations + [joiner])
    return {
        "max_join_stall_ms": round(max(r.step_ms for r in during), 3),
        "step_ms_before_join": round(statistics.median(before), 3),
        "join_prompt_tokens": joiner.prompt_tokens,
        "join_prefill_steps": sum(1 for r in during if r.prefill_tokens),
        "join_max_chunk_tokens": max(r.prefill_tokens for r in during),
    }


def exactness(scheduler: BatchScheduler, prompts: list[ModelInputs], frames: int) -> tuple[bool, list[int]]:
    """Greedy streams joining at different steps, one finishing early, one cancelled, against alone."""
    greedy = SamplingSettings(greedy=True, max_frames=frames)
    chunks = -(-prompts[3].input_ids.shape[1] // scheduler.prefill_chunk_tokens)
    script = [ScriptedStream(prompts[0], greedy, join_step=0),
              ScriptedStream(prompts[1], greedy, join_step=2),
              ScriptedStream(prompts[2], SamplingSettings(greedy=True, max_frames=max(2, frames // 3)), join_step=3),
              # cancelled half way through its rows, after its prompt's chunks
              ScriptedStream(prompts[3], greedy, join_step=5, cancel_step=5 + chunks + max(1, frames // 2)),
              ScriptedStream(prompts[0], greedy, join_step=9)]
    return matches_alone(scheduler, script)


def codec_batch_speedup(bundle: HiggsBundle, streams: int = 8, repeats: int = 5) -> dict:
    """`streams` steady-state windows (a chunk plus contexts) decoded one call each vs in one call."""
    frames = DEFAULT_CHUNK_FRAMES + 8
    gen = torch.Generator().manual_seed(0)
    windows = [CodecWindow(torch.randint(0, 1024, (frames, bundle.num_codebooks), generator=gen), 0,
                           frames * HOP_LENGTH) for _ in range(streams)]
    one_by_one = lambda: [decode_windows(bundle.codec, [w])[0] for w in windows]  # noqa: E731
    batched = lambda: decode_windows(bundle.codec, windows)  # noqa: E731
    one_by_one(), batched()  # warm-up
    pairs = []
    for _ in range(repeats):
        a = time.perf_counter()
        alone = one_by_one()
        b = time.perf_counter()
        together = batched()
        pairs.append((b - a, time.perf_counter() - b))
    peak = max(float(np.abs(x).max()) for x in alone) or 1.0
    diff = max(float(np.abs(x - y).max()) for x, y in zip(alone, together)) / peak
    return {"codec_batch_speedup": round(statistics.median(a / b for a, b in pairs), 3),
            "codec_batch_streams": streams, "codec_batch_window_frames": frames,
            "codec_batch_max_abs_diff": diff}


# ---------------------------------------------------------------------------------------------------------


def _voice_prompt(bundle: HiggsBundle, seconds: int) -> ModelInputs:
    codes = torch.randint(0, 1024, (bundle.num_codebooks, seconds * FRAME_RATE),
                          generator=torch.Generator().manual_seed(1))
    voice = VoiceReference(codes=codes, transcript="A few words spoken earlier in the same voice, " * 2)
    return build_inputs(bundle.processor, SpeechPrompt(TEXTS[0], scene=SCENE, voice=voice))


def run_batching_bench(args: argparse.Namespace) -> dict:
    bundle, model_dir = load_bench_model(args)
    scheduler = BatchScheduler(bundle, slots=max(STREAM_COUNTS), prefill_chunk_tokens=args.prefill_chunk)
    prompts = [build_inputs(bundle.processor, SpeechPrompt(t, scene=SCENE)) for t in TEXTS]

    note("warming up ...")
    throughput(scheduler, prompts[0], (1, 8, max(STREAM_COUNTS)), 3, rounds=1)  # also packs the CPU weights
    newcomer = _voice_prompt(bundle, REFERENCE_SECONDS)
    join_stall(scheduler, prompts[0], newcomer, steps_before=2)  # grows the cache to the join's size once

    streams = throughput(scheduler, prompts[0], STREAM_COUNTS, args.frames)
    for row in streams:
        note(f"{row['n']:2d} streams: {row}")
    by_n = {s["n"]: s for s in streams}
    speedup = by_n[8]["frames_per_s_total"] / by_n[1]["frames_per_s_total"]
    realtime = realtime_streams(scheduler, prompts[0], streams, max(20, args.frames // 2))
    note(f"speedup 8 vs 1: {speedup:.2f}; streams each >= {FRAME_RATE} frames/s: {realtime}")

    stall = join_stall(scheduler, prompts[0], newcomer, steps_before=10)
    unchunked = BatchScheduler(bundle, slots=JOIN_BESIDE + 1, prefill_chunk_tokens=1 << 20)
    unchunked.cache.reserve(scheduler.cache.capacity)  # no growth inside the measurement
    stall["join_stall_unchunked_ms"] = join_stall(unchunked, prompts[0], newcomer, steps_before=2)["max_join_stall_ms"]
    note(f"join: {stall}")
    matches, rows = exactness(scheduler, prompts, frames=min(args.frames, 60))
    note(f"greedy codes batched == alone: {matches} (rows per stream {rows})")
    codec = codec_batch_speedup(bundle)
    note(f"codec: {codec}")

    return {
        "streams": streams,
        "speedup_8_vs_1": round(speedup, 3),
        "realtime_streams": realtime,
        **stall,
        "batched_matches_alone": matches,
        **codec,
        "slots": scheduler.slots,
        "prefill_chunk_tokens": scheduler.prefill_chunk_tokens,
        "packed_cpu_weights": bool(scheduler.packed and scheduler.packed.enabled),
        **describe(bundle, model_dir),
        "frames_per_run": args.frames,
    }
