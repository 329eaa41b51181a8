"""The streaming engine must produce what transformers' generate() produces, frame for frame."""

import asyncio

import numpy as np
import pytest
import torch

from higgs_agent.model.prompts import SpeechPrompt, build_inputs, encode_voice
from higgs_agent.model.reference import generate_rows
from higgs_agent.model.sampling import SamplingSettings
from higgs_agent.streaming.engine import GenerationCancelled, StreamingEngine


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


async def _slot_freed(generation):
    for _ in range(500):
        if generation.slot is None:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{generation.request_id} still holds slot {generation.slot}")


def _engine_rows(engine, inputs, settings):
    generation = engine.start(inputs, settings)
    rows = torch.stack([out.row for out in engine.run_to_end(generation)])
    return rows, generation


@pytest.mark.parametrize("name", ["plain", "scene", "voice", "speakers", "long"])
def test_greedy_rows_equal_generate(engine, bundle, prompts, name):
    inputs = build_inputs(bundle.processor, prompts[name])
    settings = SamplingSettings(greedy=True, max_frames=60)
    rows, generation = _engine_rows(engine, inputs, settings)
    assert torch.equal(rows, generate_rows(bundle, inputs, settings))
    if name == "plain":
        assert generation.stats.stop_reason == "end_of_audio"  # the EOS cascade is covered greedily too
        assert torch.all(rows[-1] == 1025)


@pytest.mark.parametrize("seed", range(6))
def test_seeded_sampling_equals_generate(engine, bundle, prompts, seed):
    # default settings: temperature, top-k, top-p and repetition-aware sampling all active
    inputs = build_inputs(bundle.processor, prompts["voice" if seed % 2 else "scene"])
    settings = SamplingSettings(seed=seed, max_frames=80, temperature=1.0)
    rows, _ = _engine_rows(engine, inputs, settings)
    assert torch.equal(rows, generate_rows(bundle, inputs, settings))


def test_sampling_without_warpers_equals_generate(engine, bundle, prompts):
    inputs = build_inputs(bundle.processor, prompts["plain"])
    stops = set()
    for seed in range(4):
        settings = SamplingSettings(seed=seed, max_frames=80, temperature=1.0, top_k=None, top_p=None, ras_window=None)
        rows, generation = _engine_rows(engine, inputs, settings)
        assert torch.equal(rows, generate_rows(bundle, inputs, settings))
        stops.add(generation.stats.stop_reason)
    assert "end_of_audio" in stops


def test_incremental_frames_equal_offline_reverted_frames(engine, bundle, prompts):
    inputs = build_inputs(bundle.processor, prompts["scene"])
    settings = SamplingSettings(seed=2, max_frames=70)
    generation = engine.start(inputs, settings)
    outputs = engine.run_to_end(generation)
    streamed = torch.stack([o.frame for o in outputs if o.frame is not None])
    rows = torch.stack([o.row for o in outputs])
    end = next((i for i, r in enumerate(rows) if torch.all(r == 1025)), len(rows))
    offline = bundle.processor.revert_delay_pattern(rows[1:end]).clip(0, 1023)
    assert torch.equal(streamed, offline)
    # each frame is yielded by the very step that completes it: frame j at row j + 8
    first = next(i for i, o in enumerate(outputs) if o.frame is not None)
    assert first == 8


async def test_async_iterator_yields_frames_in_order(engine, bundle, prompts):
    inputs = build_inputs(bundle.processor, prompts["plain"])
    settings = SamplingSettings(greedy=True, max_frames=40)
    frames = [f async for f in engine.frames(engine.start(inputs, settings))]
    rows = generate_rows(bundle, inputs, settings)
    end = next((i for i, r in enumerate(rows) if torch.all(r == 1025)), len(rows))
    assert torch.equal(torch.stack(frames), bundle.processor.revert_delay_pattern(rows[1:end]).clip(0, 1023))


def test_frame_budget_stops_generation(engine, bundle, prompts):
    inputs = build_inputs(bundle.processor, prompts["long"])
    rows, generation = _engine_rows(engine, inputs, SamplingSettings(greedy=True, max_frames=20))
    assert rows.shape[0] == 20 and generation.stats.stop_reason == "max_frames"
    assert generation.stats.frames == 20 - 8
    assert generation.slot is None  # a finished request holds no cache slot


def test_cancel_between_steps_frees_the_cache_at_once(engine, bundle, prompts):
    generation = engine.start(build_inputs(bundle.processor, prompts["long"]), SamplingSettings(greedy=True))
    for _ in range(5):
        generation.advance()
    assert generation.slot is not None and engine.scheduler.cache.lengths[generation.slot] > 0
    generation.cancel()
    assert generation.slot is None and generation.stats.stop_reason == "cancelled"
    assert engine.scheduler.busy_slots == 0
    with pytest.raises(GenerationCancelled):
        generation.advance()


async def test_closing_the_stream_mid_way_cancels_the_request(engine, bundle, prompts):
    generation = engine.start(build_inputs(bundle.processor, prompts["long"]), SamplingSettings(greedy=True))
    stream = engine.frames(generation)
    got = [await anext(stream) for _ in range(3)]
    await stream.aclose()
    assert len(got) == 3
    await _slot_freed(generation)  # at once, or at the end of the step the driver was running
    assert generation.cancelled and generation.stats.stop_reason == "cancelled"
    assert generation.rows < 100  # it stopped about there (the driver may run a step or two ahead), not at the budget


async def test_task_cancellation_mid_step_frees_the_cache(engine, bundle, prompts):
    generation = engine.start(build_inputs(bundle.processor, prompts["long"]), SamplingSettings(greedy=True))

    async def consume():
        async for _ in engine.frames(generation):
            pass

    task = asyncio.create_task(consume())
    while generation.stats.frames < 2:
        await asyncio.sleep(0.001)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await _slot_freed(generation)  # a step that was running when we cancelled finishes, then frees
    assert generation.cancelled


def test_latency_figures_are_recorded(engine, bundle, prompts):
    generation = engine.start(build_inputs(bundle.processor, prompts["long"]), SamplingSettings(greedy=True, max_frames=30))
    engine.run_to_end(generation)
    stats = generation.stats
    assert stats.prefill_ms > 0 and len(stats.step_ms) == 29
    assert 0 < stats.ttff_ms <= stats.wall_seconds * 1000
    assert stats.real_time_factor > 0
    summary = stats.summary()
    assert summary["steps"] == 30 and summary["frames"] == 22
