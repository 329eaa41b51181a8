"""The streaming engine must produce what transformers' generate() produces, frame for frame, and stream PCM
equal to the whole decode, all through its one model worker."""

import asyncio
import threading
import time

import numpy as np
import pytest
import torch

from higgs_agent.model.prompts import SpeechPrompt, build_inputs, encode_voice
from higgs_agent.model.reference import generate_rows
from higgs_agent.model.sampling import SamplingSettings
from higgs_agent.bench.codec_quality import snr_db
from higgs_agent.streaming.codec_stream import whole_decode
from higgs_agent.streaming.engine import AtCapacityError, ConsumerStalled, EngineClosed, StreamingEngine
from higgs_agent.streaming.worker import THREAD_NAME


@pytest.fixture
def engine(bundle):
    engine = StreamingEngine(bundle)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def prompts(bundle):
    wave = (np.random.default_rng(1).standard_normal(24000) * 0.1).astype(np.float32)
    voice = encode_voice(bundle.processor, wave, 24000, "Reference words.")
    return {
        "plain": SpeechPrompt("Hello"),  # greedy ends by itself (end of audio) on the seed-0 tiny model
        "scene": SpeechPrompt("The quick brown fox jumps over the lazy dog.", scene="A quiet room."),
        "voice": SpeechPrompt("Say it in my voice.", voice=voice),
        "speakers": SpeechPrompt("[SPEAKER0] Hi. [SPEAKER1] Hello!", speakers=("calm", "cheerful")),
        "long": SpeechPrompt("The quick brown fox."),  # greedy runs past 200 frames on the seed-0 tiny model
    }


def _rows(engine, inputs, settings):
    outputs = engine.generate(inputs, settings)
    return torch.stack([out.row for out in outputs]), outputs


async def _idle(engine):
    for _ in range(500):
        if engine.active_streams == 0 and engine.busy_slots == 0:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{engine.active_streams} streams / {engine.busy_slots} slots still busy")


@pytest.mark.parametrize("name", ["plain", "scene", "voice", "speakers", "long"])
def test_greedy_rows_equal_generate(engine, bundle, prompts, name):
    inputs = build_inputs(bundle.processor, prompts[name])
    settings = SamplingSettings(greedy=True, max_frames=60)
    rows, outputs = _rows(engine, inputs, settings)
    assert torch.equal(rows, generate_rows(bundle, inputs, settings))
    if name == "plain":
        assert outputs[-1].finished and torch.all(rows[-1] == 1025)  # the EOS cascade is covered greedily too


@pytest.mark.parametrize("seed", range(6))
def test_seeded_sampling_equals_generate(engine, bundle, prompts, seed):
    # default settings: temperature, top-k, top-p and repetition-aware sampling all active
    inputs = build_inputs(bundle.processor, prompts["voice" if seed % 2 else "scene"])
    settings = SamplingSettings(seed=seed, max_frames=80, temperature=1.0)
    rows, _ = _rows(engine, inputs, settings)
    assert torch.equal(rows, generate_rows(bundle, inputs, settings))


def test_sampling_without_warpers_equals_generate(engine, bundle, prompts):
    inputs = build_inputs(bundle.processor, prompts["plain"])
    ended_early = False
    for seed in range(4):
        settings = SamplingSettings(seed=seed, max_frames=80, temperature=1.0, top_k=None, top_p=None, ras_window=None)
        rows, _ = _rows(engine, inputs, settings)
        assert torch.equal(rows, generate_rows(bundle, inputs, settings))
        ended_early = ended_early or rows.shape[0] < 80
    assert ended_early  # some seed reached end-of-audio


def test_incremental_frames_equal_offline_reverted_frames(engine, bundle, prompts):
    inputs = build_inputs(bundle.processor, prompts["scene"])
    _, outputs = _rows(engine, inputs, SamplingSettings(seed=2, max_frames=70))
    streamed = torch.stack([o.frame for o in outputs if o.frame is not None])
    rows = torch.stack([o.row for o in outputs])
    end = next((i for i, r in enumerate(rows) if torch.all(r == 1025)), len(rows))
    offline = bundle.processor.revert_delay_pattern(rows[1:end]).clip(0, 1023)
    assert torch.equal(streamed, offline)
    # each frame is yielded by the very step that completes it: frame j at row j + 8
    assert next(i for i, o in enumerate(outputs) if o.frame is not None) == 8


@pytest.mark.parametrize("batch_codec", [False, True])
async def test_streamed_pcm_equals_the_whole_decode_of_its_frames(bundle, prompts, batch_codec):
    """Frames and PCM from the worker, several streams at once: each stream's PCM is the whole decode of its own
    frames (whether the codec windows of all streams share one call or not)."""
    engine = StreamingEngine(bundle, batch_codec=batch_codec)
    settings = SamplingSettings(greedy=True, max_frames=90)

    async def one(name):
        chunks = []
        async with engine.stream(prompts[name], settings, frames=True) as speech:
            async for chunk in speech.pcm():
                chunks.append(chunk)
        return np.concatenate(chunks), speech.frames

    try:
        results = await asyncio.gather(*(one(n) for n in ("scene", "voice", "long")))
    finally:
        engine.close()
    for pcm, frames in results:
        whole = whole_decode(bundle.codec, torch.stack(frames, dim=1).numpy())
        assert len(pcm) == len(whole) == len(frames) * 960
        assert snr_db(whole, pcm) >= 40


async def test_leaving_the_stream_mid_way_cancels_it_and_frees_its_slot(engine, prompts):
    async with engine.stream(prompts["long"], SamplingSettings(greedy=True), frames=True) as speech:
        async for _ in speech.pcm():
            if len(speech.frames) >= 3:
                break
    assert speech.ended and speech.generation.cancelled
    assert speech.stats.stop_reason == "cancelled" and speech.generation.rows < 100  # not the whole budget
    await _idle(engine)


async def test_a_cancelled_task_frees_its_slot(engine, prompts):
    started = asyncio.Event()

    async def consume():
        async with engine.stream(prompts["long"], SamplingSettings(greedy=True)) as speech:
            async for _ in speech.pcm():
                started.set()

    task = asyncio.create_task(consume())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await _idle(engine)


async def test_a_lease_keeps_capacity_for_a_whole_response(bundle, prompts):
    """Between two phrases of a response, a newcomer cannot take the response's slot."""
    engine = StreamingEngine(bundle, slots=1)
    short = SamplingSettings(greedy=True, max_frames=12)
    try:
        async with engine.lease() as lease:
            async with engine.stream(prompts["plain"], short, lease=lease) as speech:
                _ = [c async for c in speech.pcm()]
            with pytest.raises(AtCapacityError, match="all 1 slots busy"):  # the slot is idle, but promised
                async with engine.stream(prompts["scene"], short):
                    pass
            async with engine.stream(prompts["scene"], short, lease=lease) as speech:  # phrase 2 still runs
                assert len([c async for c in speech.pcm()]) > 0
        async with engine.stream(prompts["scene"], short) as speech:  # released: free for anyone
            assert len([c async for c in speech.pcm()]) > 0
    finally:
        engine.close()


async def test_a_consumer_that_stops_reading_loses_its_slot(bundle, prompts):
    engine = StreamingEngine(bundle, stall_timeout_s=0.2, max_unread_s=0.3)
    slow = bundle.model.register_forward_hook(lambda *_: time.sleep(0.01))  # 246 rows take 2.5 s, not 0.3 s
    try:
        async with engine.stream(prompts["long"], SamplingSettings(greedy=True, max_frames=1500)) as speech:
            for _ in range(600):  # it reads nothing: with 0.3 s of audio unread for 0.2 s, the worker cancels it
                if speech.generation.ended:
                    break
                await asyncio.sleep(0.05)
            assert speech.generation.ended and speech.stats.stop_reason == "cancelled"
            assert speech.generation.rows < 246 and speech.sink.delivered_samples >= 0.3 * 24000
            with pytest.raises(ConsumerStalled):
                _ = [c async for c in speech.pcm()]
        await _idle(engine)
    finally:
        slow.remove()
        engine.close()


async def test_model_work_runs_on_the_worker_thread_only(bundle, prompts, monkeypatch):
    threads = set()
    hooks = [module.register_forward_pre_hook(lambda *_: threads.add(threading.current_thread().name))
             for module in (bundle.model, bundle.codec)]
    engine = StreamingEngine(bundle)
    try:
        async with engine.stream(prompts["voice"], SamplingSettings(greedy=True, max_frames=30)) as speech:
            _ = [c async for c in speech.pcm()]
        codes = await engine.encode(np.zeros(12000, dtype=np.float32), 24000)
    finally:
        engine.close()
        for hook in hooks:
            hook.remove()
    assert codes.shape[0] == bundle.num_codebooks
    assert threads == {THREAD_NAME}


async def test_a_closed_engine_ends_its_streams_and_refuses_new_ones(bundle, prompts):
    engine = StreamingEngine(bundle)
    async with engine.stream(prompts["long"], SamplingSettings(greedy=True)) as speech:
        async for _ in speech.pcm():
            break
        await asyncio.to_thread(engine.close)
        with pytest.raises(EngineClosed):
            _ = [c async for c in speech.pcm()]
    with pytest.raises(EngineClosed):
        async with engine.stream(prompts["plain"], SamplingSettings(greedy=True)):
            pass


def test_latency_figures_are_recorded(bundle, prompts):
    from higgs_agent.streaming.scheduler import BatchScheduler, run_to_end

    scheduler = BatchScheduler(bundle)
    generation = scheduler.start(build_inputs(bundle.processor, prompts["long"]),
                                 SamplingSettings(greedy=True, max_frames=30))
    run_to_end(scheduler, generation)
    stats = generation.stats
    assert stats.prefill_ms > 0 and len(stats.step_ms) == 29
    assert 0 < stats.ttff_ms <= stats.wall_seconds * 1000
    assert stats.real_time_factor > 0
    summary = stats.summary()
    assert summary["steps"] == 30 and summary["frames"] == 22
