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
from higgs_agent.streaming.scheduler import BatchScheduler, run_to_end

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
def scheduler(bundle):
    return BatchScheduler(bundle, slots=6, prefill_chunk_tokens=16)


def alone(scheduler, inputs, settings):
    rows, generations, _ = run_scripted(scheduler, [ScriptedStream(inputs, settings)])
    return rows[0], generations[0]


def test_greedy_codes_equal_alone_with_joins_early_finish_and_cancel(scheduler, prompts):
    script = [
        ScriptedStream(prompts["long"], GREEDY, join_step=0),
        ScriptedStream(prompts["hello"], GREEDY, join_step=0),  # finishes early, by itself
        ScriptedStream(prompts["voice"], GREEDY, join_step=3),  # joins mid-run, prompt in 16-token chunks
        ScriptedStream(prompts["scene"], GREEDY, join_step=7, cancel_step=30),  # barge-in
        ScriptedStream(prompts["speakers"], SamplingSettings(greedy=True, max_frames=20), join_step=12),
        ScriptedStream(prompts["long"], GREEDY, join_step=40),  # takes a slot freed by the others
    ]
    together, generations, reports = run_scripted(scheduler, script)
    reasons = [g.stats.stop_reason for g in generations]
    assert reasons == ["max_frames", "end_of_audio", "max_frames", "cancelled", "max_frames", "max_frames"]
    assert max(r.decoded for r in reports) >= 4  # they really shared forwards
    for stream, rows in zip(script, together):
        reference, _ = alone(scheduler, stream.inputs, stream.settings)
        assert rows.shape[0] > 0 and torch.equal(rows, reference[:rows.shape[0]])
    assert together[1].shape[0] == 25 and together[3].shape[0] < 60
    assert scheduler.busy_slots == 0 and scheduler.owners == [None] * 6


def test_seeded_sampling_equals_alone_in_a_batch(scheduler, prompts):
    settings = [SamplingSettings(seed=s, max_frames=50, temperature=1.0) for s in range(4)]
    names = ["scene", "voice", "long", "speakers"]
    script = [ScriptedStream(prompts[n], s, join_step=2 * i) for i, (n, s) in enumerate(zip(names, settings))]
    together, _, _ = run_scripted(scheduler, script)
    for stream, rows in zip(script, together):
        assert torch.equal(rows, alone(scheduler, stream.inputs, stream.settings)[0][:rows.shape[0]])


def test_cancelling_one_stream_frees_its_slot_at_the_next_step_and_leaves_the_others_alone(scheduler, prompts):
    a = scheduler.start(prompts["long"], GREEDY)
    b = scheduler.start(prompts["scene"], GREEDY)
    rows_b = []
    for _ in range(10):
        rows_b += [out.row for g, out in scheduler.step().outputs if g is b]
    assert scheduler.n_decoding == 2
    scheduler.cancel(a)  # only a flag: the scheduler's own thread lets go of it at its next step
    assert a.slot is not None
    report = scheduler.step()
    rows_b += [out.row for g, out in report.outputs if g is b]
    assert a.slot is None and a.stats.stop_reason == "cancelled" and scheduler.n_decoding == 1
    assert a in report.ended and all(g is not a for g, _ in report.outputs)
    rows_b += [o.row for o in run_to_end(scheduler, b)]
    assert torch.equal(torch.stack(rows_b), alone(scheduler, prompts["scene"], GREEDY)[0])  # every row, untouched


def test_capacity_is_refused_at_once_with_a_clear_error(bundle, prompts):
    scheduler = BatchScheduler(bundle, slots=2)
    first = scheduler.start(prompts["hello"], GREEDY)
    scheduler.start(prompts["long"], GREEDY)
    with pytest.raises(AtCapacityError, match="at capacity: all 2 slots busy"):
        scheduler.start(prompts["scene"], GREEDY)
    assert isinstance(AtCapacityError("x"), RuntimeError)
    run_to_end(scheduler, first)  # finishes by itself at 25 rows: its slot frees
    third = scheduler.start(prompts["scene"], GREEDY)
    third.cancel()  # cancelled before it ever ran: its capacity is free again at once
    fourth = scheduler.start(prompts["speakers"], SamplingSettings(greedy=True, max_frames=5))
    assert len(run_to_end(scheduler, fourth)) == 5 and third.stats.stop_reason == "cancelled"


def test_bounded_queue_admits_when_a_slot_frees_and_refuses_when_full(bundle, prompts):
    scheduler = BatchScheduler(bundle, slots=1, max_queue=1, queue_timeout_s=60)
    first = scheduler.start(prompts["speakers"], SamplingSettings(greedy=True, max_frames=5))
    queued = scheduler.start(prompts["hello"], GREEDY)  # waits for the slot
    with pytest.raises(AtCapacityError, match="1 queued"):
        scheduler.start(prompts["scene"], GREEDY)
    assert len(run_to_end(scheduler, first)) == 5
    assert len(run_to_end(scheduler, queued)) == 25  # got the slot when the first finished


def test_queued_request_times_out_with_at_capacity(bundle, prompts):
    scheduler = BatchScheduler(bundle, slots=1, max_queue=2, queue_timeout_s=0)
    scheduler.start(prompts["long"], GREEDY)
    late = scheduler.start(prompts["hello"], GREEDY)
    scheduler.step()
    with pytest.raises(AtCapacityError, match="no slot of 1 freed"):
        run_to_end(scheduler, late)
    assert late.stats.stop_reason == "at_capacity"


def test_chunked_prefill_equals_one_shot_prefill_with_audio_rows_across_chunk_boundaries(bundle, prompts):
    """While another stream decodes, a voice-clone prompt goes in 7-token chunks (its ~40 audio rows
    straddle many chunk edges); its codes equal those from a one-shot prefill (alone)."""
    inputs, config = prompts["voice"], bundle.config
    ids = inputs.input_ids
    placeholders = int(((ids == config.audio_token_id) | (ids == config.audio_delay_token_id)).sum())
    assert placeholders == inputs.prompt_frames > 14
    scheduler = BatchScheduler(bundle, slots=2, prefill_chunk_tokens=7)
    script = [ScriptedStream(prompts["long"], GREEDY), ScriptedStream(inputs, GREEDY, join_step=2)]
    together, generations, reports = run_scripted(scheduler, script)
    prompt_steps = [r for r in reports[2:] if r.prefill_tokens]
    assert len(prompt_steps) == -(-inputs.input_ids.shape[1] // 7)  # one chunk per step
    assert all(r.prefill_tokens <= 7 and r.decoded >= 1 for r in prompt_steps)  # the other kept decoding
    one_shot, _ = alone(BatchScheduler(bundle, slots=1), inputs, GREEDY)  # nothing decoding: one forward
    assert torch.equal(together[1], one_shot)


def test_a_newcomer_stalls_running_streams_by_at_most_one_chunk(bundle, prompts):
    """Measured, not timed: every step while the long prompt goes in runs <= one chunk and still gives
    each running stream its row; the worst such step is reported by the benchmark."""
    scheduler = BatchScheduler(bundle, slots=5, prefill_chunk_tokens=16)
    running = [scheduler.start(prompts["long"], GREEDY) for _ in range(4)]
    for _ in range(3):
        scheduler.step()
    newcomer = scheduler.start(prompts["scene"], GREEDY)
    reports = []
    while newcomer.rows == 0:
        before = [g.rows for g in running]
        reports.append(scheduler.step())
        assert [g.rows for g in running] == [n + 1 for n in before]  # nobody skipped a step
    assert all(r.prefill_tokens <= 16 for r in reports)
    assert len(reports) == -(-newcomer.prompt_tokens // 16)
    stall = max(r.step_ms for r in reports)
    assert stall > 0  # reported by `bench batching` as max_join_stall_ms against the normal step


async def test_concurrent_async_streams_through_the_model_worker(bundle, prompts):
    engine = StreamingEngine(bundle, slots=6, prefill_chunk_tokens=16)

    async def collect(name, settings):
        async with engine.stream(prompts[name], settings, frames=True, pcm=False) as speech:
            async for _ in speech.items():
                pass
        return speech.frames

    names = ["long", "hello", "voice"]
    try:
        got = await asyncio.gather(*(collect(n, GREEDY) for n in names))
    finally:
        engine.close()
    scheduler = BatchScheduler(bundle, slots=1)
    for name, frames in zip(names, got):
        rows, _ = alone(scheduler, prompts[name], GREEDY)
        expected = generation_frames(rows)
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
    hidden = torch.finfo(torch.float32).min
    assert mask.shape == (2, 1, 1, 6) and mask.dtype == torch.float32
    assert (mask[0] == 0).all() and mask[1, 0, 0].tolist() == [0.0] + [hidden] * 5
    assert ragged.position_ids().tolist() == [[5], [0]]


def test_a_full_context_ends_the_stream_like_its_frame_budget(bundle, prompts):
    scheduler = BatchScheduler(bundle, slots=2)
    inputs = prompts["long"]
    scheduler.cache.max_capacity = inputs.input_ids.shape[1] + 5  # pretend a short context
    generation = scheduler.start(inputs, GREEDY)
    assert len(run_to_end(scheduler, generation)) == 5 and generation.stats.stop_reason == "max_frames"
    scheduler.cache.max_capacity = inputs.input_ids.shape[1]
    with pytest.raises(ValueError, match="fills the model's context"):
        scheduler.start(inputs, GREEDY)


# -- failures stay with the stream at fault (review findings) ----------------------------------------------


class Recorded:
    """A scheduler whose every step's rows are kept per stream, so a stream's rows can be read whole after
    other streams' runs stepped it too."""

    def __init__(self, scheduler):
        self.scheduler = scheduler
        self.rows = {}

    def step(self):
        report = self.scheduler.step()
        for generation, out in report.outputs:
            self.rows.setdefault(generation, []).append(out.row)
        return report

    def run_to_end(self, generation):
        while not generation.ended:
            self.step()
        if generation.error is not None:
            raise generation.error
        return torch.stack(self.rows[generation])


def _failing_draws(monkeypatch, victim):
    """Make every draw that includes `victim`'s sampler raise, as NaN logits make `multinomial` do."""
    import higgs_agent.streaming.scheduler as scheduler_module

    real = scheduler_module.sample_rows

    def flaky(logits, samplers, *args):
        if victim().sampler in samplers:
            raise RuntimeError("probability tensor contains either `inf`, `nan` or element < 0")
        return real(logits, samplers, *args)

    monkeypatch.setattr(scheduler_module, "sample_rows", flaky)


def test_a_failing_draw_fails_only_its_stream_and_its_nan_slot_is_wiped(bundle, prompts, monkeypatch):
    scheduler = BatchScheduler(bundle, slots=2)
    rec = Recorded(scheduler)
    bad = scheduler.start(prompts["long"], SamplingSettings(seed=1, max_frames=60))
    good = scheduler.start(prompts["scene"], GREEDY)
    for _ in range(5):
        rec.step()
    slot, good_rows = bad.slot, good.rows
    for buffers in (scheduler.cache.keys, scheduler.cache.values):
        for buf in buffers:  # what a forward gone NaN leaves behind
            buf[slot, :, :scheduler.cache.lengths[slot]] = float("nan")
    _failing_draws(monkeypatch, lambda: bad)
    rec.step()  # must not raise: the batched draw fails, then only `bad`'s own draw does
    monkeypatch.undo()
    assert bad.stats.stop_reason == "failed" and "nan" in str(bad.error) and bad.slot is None
    with pytest.raises(RuntimeError, match="nan"):
        rec.run_to_end(bad)
    assert scheduler.n_decoding == 1 and good.rows == good_rows + 1
    # a newcomer takes the wiped slot and decodes beside `good` at other positions (padding it must not see)
    newcomer = scheduler.start(prompts["hello"], GREEDY)
    assert torch.equal(rec.run_to_end(newcomer), alone(BatchScheduler(bundle, slots=1), prompts["hello"], GREEDY)[0])
    assert torch.equal(rec.run_to_end(good), alone(BatchScheduler(bundle, slots=1), prompts["scene"], GREEDY)[0])  # every row, untouched


def test_a_newcomer_whose_first_draw_fails_never_joins_the_decoders(bundle, prompts, monkeypatch):
    scheduler = BatchScheduler(bundle, slots=2)
    rec = Recorded(scheduler)
    running = scheduler.start(prompts["scene"], GREEDY)
    for _ in range(3):
        rec.step()
    newcomer = scheduler.start(prompts["hello"], SamplingSettings(seed=0, max_frames=40))
    _failing_draws(monkeypatch, lambda: newcomer)
    while not newcomer.finished:
        rec.step()  # its prompt goes in, chunk by chunk; the last chunk's draw fails
    monkeypatch.undo()
    assert newcomer.stats.stop_reason == "failed" and newcomer.rows == 0 and newcomer.slot is None
    assert scheduler.n_decoding == 1 and scheduler.owners[1] is None
    assert torch.equal(rec.run_to_end(running), alone(BatchScheduler(bundle, slots=1), prompts["scene"], GREEDY)[0])


def test_a_step_that_raises_outside_any_stream_fails_the_slot_holders_once(bundle, prompts, monkeypatch):
    scheduler = BatchScheduler(bundle, slots=2)
    rec = Recorded(scheduler)
    stuck = scheduler.start(prompts["long"], GREEDY)
    rec.step()
    monkeypatch.setattr(scheduler, "_admit", lambda: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError, match="boom"):
        rec.step()
    monkeypatch.undo()
    assert stuck.stats.stop_reason == "failed" and scheduler.busy_slots == 0
    assert scheduler.owners == [None, None] and scheduler.n_decoding == 0
    fresh = scheduler.start(prompts["hello"], GREEDY)  # the next steps start clean
    assert torch.equal(rec.run_to_end(fresh), alone(BatchScheduler(bundle, slots=1), prompts["hello"], GREEDY)[0])


def test_cache_growth_that_runs_out_of_memory_leaves_the_cache_whole(bundle, monkeypatch):
    cache = SlotKVCache(bundle.config, slots=2, dtype=torch.float32, device=torch.device("cpu"), initial_capacity=4)
    calls, real = [0], torch.Tensor.new_zeros

    def oom_on_second(self, *args, **kwargs):
        calls[0] += 1
        if calls[0] == 2:
            raise RuntimeError("out of memory (simulated)")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "new_zeros", oom_on_second)
    with pytest.raises(RuntimeError, match="out of memory"):
        cache.reserve(8)
    monkeypatch.undo()
    assert cache.capacity == 4 and {b.shape[2] for b in cache.keys + cache.values} == {4}
    cache.reserve(8)
    assert cache.capacity == 8 and {b.shape[2] for b in cache.keys + cache.values} == {8}


def test_a_cache_that_cannot_grow_fails_only_the_streams_that_need_the_room(bundle, prompts, monkeypatch):
    scheduler = BatchScheduler(bundle, slots=2, context_tokens=256)
    rec = Recorded(scheduler)
    long_prompt = scheduler.start(prompts["scene"], GREEDY)
    short = scheduler.start(prompts["hello"], GREEDY)
    rec.step()
    cache = scheduler.cache
    assert cache.lengths[long_prompt.slot] > cache.lengths[short.slot]
    cache.capacity = cache.lengths[long_prompt.slot]  # pretend it is full: the next decode must grow it

    def no_memory(tokens):
        if tokens > cache.capacity:
            raise RuntimeError("out of memory (simulated)")

    monkeypatch.setattr(cache, "reserve", no_memory)
    rec.step()
    monkeypatch.undo()
    cache.capacity = cache.keys[0].shape[2]
    assert long_prompt.stats.stop_reason == "failed" and short.slot is not None
    assert torch.equal(rec.run_to_end(short), alone(BatchScheduler(bundle, slots=1), prompts["hello"], GREEDY)[0])


def test_eager_attention_batched_equals_alone(bundle, prompts):
    """The ragged decode's mask is additive: eager attention adds it (a bool mask would add 0/1 and hide
    no padding), SDPA takes it as is."""
    before = bundle.model.config._attn_implementation
    bundle.model.set_attn_implementation("eager")
    try:
        scheduler = BatchScheduler(bundle, slots=2)
        rec = Recorded(scheduler)
        settings = SamplingSettings(greedy=True, max_frames=40)
        a, b = scheduler.start(prompts["long"], settings), scheduler.start(prompts["scene"], settings)  # ragged rows
        rows_a, rows_b = rec.run_to_end(a), rec.run_to_end(b)
        assert torch.equal(rows_a, alone(BatchScheduler(bundle, slots=1), prompts["long"], settings)[0])
        assert torch.equal(rows_b, alone(BatchScheduler(bundle, slots=1), prompts["scene"], settings)[0])
    finally:
        bundle.model.set_attn_implementation(before)  # the bundle is shared by the whole session
    assert bundle.model.config._attn_implementation == before


def test_an_attention_kernel_the_mask_does_not_suit_is_refused(bundle):
    from types import SimpleNamespace

    from higgs_agent.streaming.scheduler import BatchScheduler

    fake = SimpleNamespace(config=SimpleNamespace(_attn_implementation="flash_attention_2"), device=torch.device("cpu"))
    with pytest.raises(ValueError, match="'sdpa' or 'eager'"):
        BatchScheduler(fake)


def test_a_new_request_does_not_jump_the_queue(bundle, prompts):
    scheduler = BatchScheduler(bundle, slots=1, max_queue=2, queue_timeout_s=60)
    first = scheduler.start(prompts["hello"], SamplingSettings(greedy=True, max_frames=3))
    queued = scheduler.start(prompts["long"], GREEDY)
    while not first.finished:
        scheduler.step()  # the step where `first` finishes frees the slot; `queued` gets it at the next step
    late = scheduler.start(prompts["hello"], GREEDY)
    scheduler.step()
    assert scheduler.owners == [queued]
    assert [g for g, _ in scheduler._queued] == [late]


def test_packed_weights_follow_in_place_weight_changes_and_survive_a_deep_copy(bundle):
    import copy

    from higgs_agent.streaming.cpu_gemm import PackedLinears

    packed = PackedLinears.for_model(bundle.model)
    if not packed.enabled:
        pytest.skip("no MKL packing here")
    linear = bundle.model.model.layers[0].self_attn.q_proj
    x = torch.randn(4, 1, linear.in_features)
    with torch.inference_mode():
        with packed.rows(4):
            before = linear(x)
        with torch.no_grad():
            linear.weight.mul_(2.0)  # load_state_dict, a LoRA merge...
        try:
            with packed.rows(4):
                after = linear(x)
            assert torch.allclose(after, torch.nn.functional.linear(x, linear.weight), atol=1e-5)
            assert not torch.allclose(after, before)
        finally:
            with torch.no_grad():
                linear.weight.div_(2.0)  # the bundle is shared by the whole session
        copied = copy.deepcopy(bundle.model)
        copied_linear = copied.model.layers[0].self_attn.q_proj
        with torch.no_grad():
            copied_linear.weight.mul_(3.0)
        with packed.rows(4):
            assert torch.allclose(copied_linear(x), torch.nn.functional.linear(x, copied_linear.weight), atol=1e-5)
            assert torch.allclose(linear(x), before)  # the original kept its own weights


def test_a_queued_request_cancelled_just_before_admission_is_still_ended(bundle, prompts):
    scheduler = BatchScheduler(bundle, slots=1, max_queue=1, queue_timeout_s=60)
    first = scheduler.start(prompts["hello"], SamplingSettings(greedy=True, max_frames=3))
    queued = scheduler.start(prompts["long"], GREEDY)
    run_to_end(scheduler, first)
    queued.cancelled = True  # as if cancel() landed after the step's _reap, before its _admit
    scheduler._admit()
    assert queued.stats.stop_reason == "cancelled" and queued.ended
    assert not scheduler.streams()


def test_no_row_is_delivered_to_a_stream_cancelled_during_a_step(bundle, prompts):
    scheduler = BatchScheduler(bundle, slots=2)
    generation = scheduler.start(prompts["long"], GREEDY)
    scheduler.step()
    rows = generation.rows
    # cancel() landing while the step runs its forward (the flag only)
    hook = bundle.model.register_forward_hook(lambda *_: setattr(generation, "cancelled", True))
    try:
        report = scheduler.step()
    finally:
        hook.remove()
    assert generation in report.ended and all(g is not generation for g, _ in report.outputs)
    assert generation.stats.stop_reason == "cancelled" and generation.rows == rows and generation.slot is None


async def test_a_codec_failure_fails_only_the_streams_it_decoded_and_the_worker_goes_on(bundle, prompts,
                                                                                         monkeypatch):
    import higgs_agent.streaming.worker as worker_module

    real, calls = worker_module.decode_windows, [0]

    def fails_once(*args, **kwargs):
        calls[0] += 1
        if calls[0] == 1:
            raise RuntimeError("codec exploded (simulated)")
        return real(*args, **kwargs)

    monkeypatch.setattr(worker_module, "decode_windows", fails_once)
    engine = StreamingEngine(bundle, slots=2)
    try:
        with pytest.raises(RuntimeError, match="codec exploded"):
            async with engine.stream(prompts["long"], GREEDY) as speech:
                _ = [c async for c in speech.pcm()]
        async with engine.stream(prompts["hello"], GREEDY) as speech:  # the worker lives on
            assert sum(len(c) for c in [c async for c in speech.pcm()]) > 0
        assert engine.active_streams == 0
    finally:
        engine.close()
