"""The reply-audio sink every transport's output is built on (transport/audio_sink.py), on its own: framing,
the playout clock, barge-in, back-pressure, closing. Each transport's own tests drive it over its wire:
test_ws_output.py and test_hardening.py (WebSocket), test_webrtc.py (the media track), test_phone_protocol.py
and test_phone_call.py (a carrier's frames, marks and clears)."""

import asyncio

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from higgs_agent.agent.output import OutputClosed
from higgs_agent.audio import resample
from higgs_agent.transport.audio_sink import ReplyAudioSink, WireFrame


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Written(ReplyAudioSink):
    """A write-through sink that keeps what it writes."""

    def __init__(self, **options) -> None:  # noqa: ANN003
        super().__init__(mode="write_through", **options)
        self.frames: list[WireFrame] = []

    async def _write_frame(self, frame: WireFrame) -> None:
        self.frames.append(frame)


def tone(seconds: float, rate: int = 24_000) -> np.ndarray:
    return (0.4 * np.sin(np.arange(int(rate * seconds)) * 2 * np.pi * 440 / rate)).astype(np.float32)


def pulled(frame_ms: int = 20, **options) -> ReplyAudioSink:  # noqa: ANN003
    return ReplyAudioSink(mode="pulled", wire_rate=48_000, frame_ms=frame_ms, **options)


def drain(sink: ReplyAudioSink) -> list[WireFrame]:
    frames = []
    while (frame := sink.next_frame()) is not None:
        frames.append(frame)
    return frames


def chunked(audio: np.ndarray, sizes: list[int]) -> list[np.ndarray]:
    chunks, start, index = [], 0, 0
    while start < len(audio):
        size = sizes[index % len(sizes)]
        chunks.append(audio[start:start + size])
        start, index = start + size, index + 1
    return chunks


@settings(max_examples=30, deadline=None)
@given(sizes=st.lists(st.integers(min_value=1, max_value=6000), min_size=1, max_size=8),
       seconds=st.floats(min_value=0.01, max_value=0.5))
def test_frames_do_not_depend_on_how_the_reply_is_chunked(sizes, seconds):
    audio = tone(seconds)

    async def run(chunk_sizes: list[int]) -> list[WireFrame]:
        sink = pulled()
        for chunk in chunked(audio, chunk_sizes):
            assert await sink.push("r", "i", chunk)
        await sink.flush("r")
        return drain(sink)

    frames = asyncio.run(run(sizes))
    whole = asyncio.run(run([len(audio)]))
    expected = resample(audio, 24_000, 48_000)
    assert {len(frame.samples) for frame in frames} == {960}  # whole 20 ms frames, the last one padded
    assert sum(frame.real_samples for frame in frames) == len(expected)
    assert np.array_equal(np.concatenate([f.samples for f in frames]), np.concatenate([f.samples for f in whole]))
    sent = np.concatenate([f.samples for f in frames])[:len(expected)]
    assert np.abs(sent - expected).max() < 1e-3  # ~ one-shot resampling of the whole reply


async def test_a_write_through_sink_writes_each_chunk_as_it_comes_and_the_resamplers_tail_at_the_end():
    sink = Written(wire_rate=16_000, frame_ms=None)
    audio = tone(0.3)
    for chunk in chunked(audio, [2400]):
        await sink.push("r", "i", chunk)
    written = len(sink.frames)
    assert written >= 2  # no waiting for a whole frame
    await sink.flush("r")
    out = np.concatenate([frame.samples for frame in sink.frames])
    assert len(out) == len(resample(audio, 24_000, 16_000))  # the tail came out at the flush
    assert {frame.rate for frame in sink.frames} == {16_000}


async def test_a_new_item_ends_the_one_before():
    sink = pulled()
    await sink.push("r", "first", tone(0.05))  # 2.5 frames
    await sink.push("r", "second", tone(0.02))
    frames = drain(sink)
    first = [frame for frame in frames if frame.item_id == "first"]
    assert len(first) == 3 and first[-1].real_samples == 480  # its part-frame went out padded
    assert [frame.item_id for frame in frames] == ["first"] * 3  # the second waits for more, or its flush


def test_the_playout_clock_counts_a_stall_as_not_heard():
    clock = Clock()
    sink = Written(wire_rate=24_000, frame_ms=None, clock=clock)

    async def run() -> None:
        await sink.push("r", "i", tone(1.0))
        await sink.push("r", "i", tone(2.0))

    asyncio.run(run())
    first, second = sink.frames
    sink.delivered(first, at=0.0)  # 1 s of audio leaves at t=0 s
    clock.now = 0.5
    assert sink.heard_ms("i") == pytest.approx(500)
    sink.delivered(second, at=3.0)  # the listener ran dry at t=1 s; 2 s more leave at t=3 s
    clock.now = 3.1
    assert sink.heard_ms("i") == pytest.approx(1100)  # not min(sent, elapsed) = 3000
    clock.now = 10.0
    assert sink.heard_ms("i") == pytest.approx(3000)


async def test_a_barge_in_drops_the_unsent_audio_freezes_what_was_heard_and_refuses_the_rest():
    clock = Clock()
    sink = pulled(clock=clock)
    await sink.push("r", "i", tone(1.0))
    for _ in range(10):
        sink.next_frame()  # 200 ms left at t=0
    clock.now = 0.1
    # The 800 ms never sent, less the few ms still inside the resampler's filter (dropped, never framed).
    assert 24_000 - 4_800 - 1_200 <= sink.discard("i") <= 24_000 - 4_800
    clock.now = 5.0
    assert sink.heard_ms("i") == pytest.approx(100)  # it stopped playing at the barge-in
    assert not await sink.push("r", "i", tone(0.5))  # the engine's late audio of the cut item
    assert sink.next_frame() is None
    assert sink.discard("never-started") == 0 and not await sink.push("r", "never-started", tone(0.1))
    # A second barge-in on a cut item (a reply cancelled before its audio, then talked over again) finds
    # nothing to drop, and leaves the playout clock of whatever plays now alone.
    await sink.push("r2", "next", tone(0.1))
    sink.next_frame()
    clock.now = 5.01
    playing = sink.heard_ms("next")
    assert sink.discard("never-started") == 0 and sink.discard("i") == 0
    assert sink.heard_ms("next") == playing


async def test_a_full_sink_holds_the_producer_until_the_listener_takes_frames_or_a_barge_in():
    sink = pulled(max_queued_s=0.1)  # five frames
    await sink.push("r", "i", tone(0.2))  # room was left when it started: it queued all of it
    waiting = asyncio.create_task(sink.push("r", "i", tone(0.1)))
    await asyncio.sleep(0)
    assert not waiting.done()
    drain(sink)  # the listener took every frame
    assert await asyncio.wait_for(waiting, 5) is True
    waiting = asyncio.create_task(sink.push("r", "i", tone(0.2)))
    await asyncio.sleep(0)
    assert not waiting.done()
    sink.discard("i")
    assert await asyncio.wait_for(waiting, 5) is False  # woken, and refused: the item was cut


async def test_closing_fails_every_producer_with_the_reason():
    sink = pulled(max_queued_s=0.1)
    await sink.push("r", "i", tone(0.2))
    waiting = asyncio.create_task(sink.push("r", "i", tone(0.1)))
    await asyncio.sleep(0)
    sink.close("the client left")
    with pytest.raises(OutputClosed, match="the client left"):
        await asyncio.wait_for(waiting, 5)
    with pytest.raises(OutputClosed, match="the client left"):
        await sink.push("r", "j", tone(0.1))


def test_only_a_write_through_sink_may_skip_framing():
    with pytest.raises(ValueError, match="write-through"):
        pulled(frame_ms=None)  # type: ignore[arg-type]
