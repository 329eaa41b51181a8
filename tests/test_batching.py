"""Continuous batching: many streams share one model; each stream's codes are what it would get alone."""

import asyncio

import numpy as np
import pytest
import torch

from higgs_agent.bench.batching import ScriptedStream, run_scripted
from higgs_agent.model.prompts import SpeechPrompt, build_inputs, encode_voice
from higgs_agent.model.sampling import SamplingSettings
from higgs_agent.streaming.engine import AtCapacityError, StreamingEngine
from higgs_agent.streaming.kv_slots import SlotKVCache

GREEDY = SamplingSettings(greedy=True, max_frames=60)


@pytest.fixture(scope="module")
def prompts(bundle):
    wave = (np.random.default_rng(1).standard_normal(24000) * 0.1).astype(np.float32)
    voice = encode_voice(bundle.processor, wave, 24000, "Reference words.")
    texts = {
        "hello": SpeechPrompt("Hello"),  # greedy ends by end-of-audio at 25 rows on the seed-0 tiny model
        "long": SpeechPrompt("The quick brown fox."),  # greedy runs past 200 frames: max_frames bounds it
        "scene": SpeechPrompt("The quick brown fox jumps over the lazy dog.", scene="A quiet room."),
        "voice": SpeechPrompt("Say it in my voice.", voice=voice),  # audio rows in the prompt
        "speakers": SpeechPrompt("[SPEAKER0] Hi. [SPEAKER1] Hello!", speakers=("calm", "cheerful")),
    }
    return {name: build_inputs(bundle.processor, prompt) for name, prompt in texts.items()}


@pytest.fixture
def engine(bundle):
    engine = StreamingEngine(bundle, slots=6, prefill_chunk_tokens=16)
    yield engine
    engine.close()


def alone(engine, inputs, settings):
    rows, generations, _ = run_scripted(engine, [ScriptedStream(inputs, settings)])
    return rows[0], generations[0]


def test_greedy_codes_equal_alone_with_joins_early_finish_and_cancel(engine, prompts):
    script = [
        ScriptedStream(prompts["long"], GREEDY, join_step=0),
        ScriptedStream(prompts["hello"], GREEDY, join_step=0),  # finishes early, by itself
        ScriptedStream(prompts["voice"], GREEDY, join_step=3),  # joins mid-run, prompt in 16-token chunks
        ScriptedStream(prompts["scene"], GREEDY, join_step=7, cancel_step=30),  # barge-in
        ScriptedStream(prompts["speakers"], SamplingSettings(greedy=True, max_frames=20), join_step=12),
        ScriptedStream(prompts["long"], GREEDY, join_step=40),  # takes a slot freed by the others
    ]
    together, generations, reports = run_scripted(engine, script)
    reasons = [g.stats.stop_reason for g in generations]
    assert reasons == ["max_frames", "end_of_audio", "max_frames", "cancelled", "max_frames", "max_frames"]
    assert max(r.decoded for r in reports) >= 4  # they really shared forwards
    for stream, rows in zip(script, together):
        reference, _ = alone(engine, stream.inputs, stream.settings)
        assert rows.shape[0] > 0 and torch.equal(rows, reference[:rows.shape[0]])
    assert together[1].shape[0] == 25 and together[3].shape[0] < 60
    assert engine.scheduler.busy_slots == 0 and engine.scheduler.owners == [None] * 6


def test_seeded_sampling_equals_alone_in_a_batch(engine, prompts):
    settings = [SamplingSettings(seed=s, max_frames=50, temperature=1.0) for s in range(4)]
    names = ["scene", "voice", "long", "speakers"]
    script = [ScriptedStream(prompts[n], s, join_step=2 * i) for i, (n, s) in enumerate(zip(names, settings))]
    together, _, _ = run_scripted(engine, script)
    for stream, rows in zip(script, together):
        assert torch.equal(rows, alone(engine, stream.inputs, stream.settings)[0][:rows.shape[0]])


def test_cancelling_one_stream_frees_its_slot_at_the_next_step_and_leaves_the_others_alone(engine, prompts):
    a = engine.start(prompts["long"], GREEDY)
    b = engine.start(prompts["scene"], GREEDY)
    for _ in range(10):
        engine.step()
    assert engine.scheduler.n_decoding == 2
    a.cancel()  # no step running: freed at once
    assert a.slot is None and a.stats.stop_reason == "cancelled" and engine.scheduler.n_decoding == 1
    rows_b = torch.stack([o.row for o in engine.run_to_end(b)])  # every row since it started
    assert torch.equal(rows_b, alone(engine, prompts["scene"], GREEDY)[0])


def test_capacity_is_refused_at_once_with_a_clear_error(bundle, prompts):
    engine = StreamingEngine(bundle, slots=2)
    first = engine.start(prompts["hello"], GREEDY)
    engine.start(prompts["long"], GREEDY)
    with pytest.raises(AtCapacityError, match="at capacity: all 2 slots busy"):
        engine.start(prompts["scene"], GREEDY)
    assert isinstance(AtCapacityError("x"), RuntimeError)
    engine.run_to_end(first)  # finishes by itself at 25 rows: its slot frees
    third = engine.start(prompts["scene"], GREEDY)
    third.cancel()  # cancelled before it ever ran: the slot is free again at once
    fourth = engine.start(prompts["speakers"], SamplingSettings(greedy=True, max_frames=5))
    assert len(engine.run_to_end(fourth)) == 5 and third.stats.stop_reason == "cancelled"


def test_bounded_queue_admits_when_a_slot_frees_and_refuses_when_full(bundle, prompts):
    engine = StreamingEngine(bundle, slots=1, max_queue=1, queue_timeout_s=60)
    first = engine.start(prompts["speakers"], SamplingSettings(greedy=True, max_frames=5))
    queued = engine.start(prompts["hello"], GREEDY)  # waits for the slot
    with pytest.raises(AtCapacityError, match="1 queued"):
        engine.start(prompts["scene"], GREEDY)
    assert len(engine.run_to_end(first)) == 5
    assert len(engine.run_to_end(queued)) == 25  # got the slot when the first finished


def test_queued_request_times_out_with_at_capacity(bundle, prompts):
    engine = StreamingEngine(bundle, slots=1, max_queue=2, queue_timeout_s=0)
    engine.start(prompts["long"], GREEDY)
    late = engine.start(prompts["hello"], GREEDY)
    engine.step()
    with pytest.raises(AtCapacityError, match="no slot of 1 freed"):
        engine.run_to_end(late)
    assert late.stats.stop_reason == "at_capacity"


def test_chunked_prefill_equals_one_shot_prefill_with_audio_rows_across_chunk_boundaries(bundle, prompts):
    """While another stream decodes, a voice-clone prompt goes in 7-token chunks (its ~40 audio rows
    straddle many chunk edges); its codes equal those from a one-shot prefill (alone)."""
    inputs, config = prompts["voice"], bundle.config
    ids = inputs.input_ids
    placeholders = int(((ids == config.audio_token_id) | (ids == config.audio_delay_token_id)).sum())
    assert placeholders == inputs.prompt_frames > 14
    engine = StreamingEngine(bundle, slots=2, prefill_chunk_tokens=7)
    script = [ScriptedStream(prompts["long"], GREEDY), ScriptedStream(inputs, GREEDY, join_step=2)]
    together, generations, reports = run_scripted(engine, script)
    prompt_steps = [r for r in reports[2:] if r.prefill_tokens]
    assert len(prompt_steps) == -(-inputs.input_ids.shape[1] // 7)  # one chunk per step
    assert all(r.prefill_tokens <= 7 and r.decoded >= 1 for r in prompt_steps)  # the other kept decoding
    one_shot, _ = alone(StreamingEngine(bundle, slots=1), inputs, GREEDY)  # nothing decoding: one forward
    assert torch.equal(together[1], one_shot)


def test_a_newcomer_stalls_running_streams_by_at_most_one_chunk(bundle, prompts):
    """Measured, not timed: every step while the long prompt goes in runs <= one chunk and still gives
    each running stream its row; the worst such step is reported by the benchmark."""
    engine = StreamingEngine(bundle, slots=5, prefill_chunk_tokens=16)
    running = [engine.start(prompts["long"], GREEDY) for _ in range(4)]
    for _ in range(3):
        engine.step()
    newcomer = engine.start(prompts["scene"], GREEDY)
    reports = []
    while newcomer.rows == 0:
        before = [g.rows for g in running]
        reports.append(engine.step())
        assert [g.rows for g in running] == [n + 1 for n in before]  # nobody skipped a step
    assert all(r.prefill_tokens <= 16 for r in reports)
    assert len(reports) == -(-newcomer.prompt_tokens // 16)
    stall = max(r.step_ms for r in reports)
    assert stall > 0  # reported by `bench batching` as max_join_stall_ms against the normal step


async def test_concurrent_async_streams_through_the_driver_thread(engine, prompts):
    async def collect(name, settings):
        generation = engine.start(prompts[name], settings)
        return [f async for f in engine.frames(generation)]

    names = ["long", "hello", "voice"]
    got = await asyncio.gather(*(collect(n, GREEDY) for n in names))
    for name, frames in zip(names, got):
        rows, generation = alone(engine, prompts[name], GREEDY)
        expected = [o for o in generation_frames(rows)]
        assert len(frames) == len(expected) and all(torch.equal(a, b) for a, b in zip(frames, expected))


def generation_frames(rows):
    """Frames from delayed rows (as FrameAssembler yields them)."""
    from higgs_agent.streaming.delay import FrameAssembler

    assembler = FrameAssembler(8, max_code=1023)
    out = []
    for row in rows:
        frame = assembler.add(row, ends_audio=bool((row == 1025).all()))
        if frame is not None:
            out.append(frame)
    return out


def test_slot_cache_grows_and_swaps_without_losing_tokens(bundle):
    cache = SlotKVCache(bundle.config, slots=3, dtype=torch.float32, device=torch.device("cpu"), initial_capacity=4)
    heads, dim = cache.keys[0].shape[1], cache.keys[0].shape[3]
    for slot, length in ((0, 3), (2, 5)):
        view = cache.view(slot, [0], length)
        for layer in range(len(cache.keys)):
            k = torch.full((1, heads, length, dim), float(slot + 1))
            keys, _ = view.update(k, -k, layer)
            assert keys.shape[2] == length
        view.commit()
    assert cache.capacity == 8 and cache.lengths == [3, 0, 5]
    cache.move(0, 2)
    assert cache.lengths == [5, 0, 3]
    assert torch.all(cache.keys[1][0, :, :5] == 3) and torch.all(cache.keys[1][2, :, :3] == 1)
    assert torch.all(cache.values[0][2, :, :3] == -1)
    ragged = cache.view(0, [5, 0], 1)
    mask = ragged.attention_mask()
    assert mask.shape == (2, 1, 1, 6) and mask[0].all() and mask[1, 0, 0].tolist() == [True] + [False] * 5
    assert ragged.position_ids().tolist() == [[5], [0]]


def test_a_full_context_ends_the_stream_like_its_frame_budget(bundle, prompts):
    engine = StreamingEngine(bundle, slots=2)
    inputs = prompts["long"]
    engine.scheduler.cache.max_capacity = inputs.input_ids.shape[1] + 5  # pretend a short context
    generation = engine.start(inputs, GREEDY)
    assert len(engine.run_to_end(generation)) == 5 and generation.stats.stop_reason == "max_frames"
    engine.scheduler.cache.max_capacity = inputs.input_ids.shape[1]
    with pytest.raises(ValueError, match="fills the model's context"):
        engine.start(inputs, GREEDY)
