"""Reply audio on its way to a listener, written once for every transport (LiveKit's `AudioOutput`, Pipecat's
output media sender).

The engine makes a reply faster than real time, in chunks of any length, as float32 mono at 24 kHz. A sink
takes those chunks per reply item and does everything between there and the wire that does not depend on the
wire: it resamples each item in one soxr stream (filter state spans the chunks), cuts it into whole frames
(the part-frame left over waits for the next chunk; only an item's last frame is padded with silence), moves
the frames out in one of three ways, drops an item's unsent audio on a barge-in (and refuses what the engine
still makes for it), and knows how much of each item the listener has heard:

- `write_through` (WebSocket): each frame is written as it is made; the transport's own outbox and socket
  pace it, and the transport says when a frame really left (`delivered`).
- `paced` (phone): frames wait here and a sender writes each when the listener has less than `lead_ms` left
  to play, so a barge-in has at most that much to clear on the far side; with `marker_interval_ms` a marker
  follows every piece of that length, for carriers that echo marks once the audio before them played.
- `pulled` (WebRTC): frames wait here until the media track's clock asks for the next one (`next_frame`).

What the listener heard is first-hand where the transport can confirm it (`confirm`: a phone carrier's
echoed marks); elsewhere it is a playout clock: each frame plays from max(now, end of the previous one) when it
leaves, so a stall is not counted as heard. A transport subclasses this and only writes a frame
(`_write_frame`), says what its far side drops on a clear (`_clear_far_side`), and confirms. A transport's
`SessionOutput` is a sink: the session reaches it through `send_audio`, `flush_audio`, `discard_audio` and
`heard_ms`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from higgs_agent import SAMPLE_RATE
from higgs_agent.agent.output import OutputClosed
from higgs_agent.audio_formats import StreamResampler

log = logging.getLogger(__name__)

Mode = Literal["write_through", "paced", "pulled"]
PlaybackEvent = Literal["started", "stopped", "cleared"]
KEPT_ITEMS = 16  # progress of recent items: a late heard_ms or an echo of an old marker still finds its item


@dataclass(frozen=True, eq=False)
class WireFrame:
    """One frame of reply audio at the wire's rate."""

    response_id: str
    item_id: str
    samples: np.ndarray  # float32 mono at the item's wire rate
    real_samples: int  # of those, reply audio (the rest pads an item's last frame)
    rate: int

    @property
    def ms(self) -> float:
        return self.real_samples * 1000.0 / self.rate


@dataclass(frozen=True)
class Marker:
    """A point in an item's audio: the listener has heard `position_ms` of it once everything before the
    marker played (all of it when `final`)."""

    response_id: str
    item_id: str
    position_ms: float
    final: bool


@dataclass(frozen=True)
class ItemPlayback:
    """How far an item got, in ms of its audio. `sent_ms`: left for the listener. `confirmed_ms`: what the
    listener confirmed it played (None where the transport cannot confirm). `estimated_ms`: sent minus what
    the playout clock says the listener still holds; it stops at a barge-in."""

    item_id: str
    sent_ms: float
    confirmed_ms: float | None
    estimated_ms: float

    @property
    def heard_ms(self) -> float:
        return self.estimated_ms if self.confirmed_ms is None else self.confirmed_ms


@dataclass
class _Item:
    response_id: str
    rate: int
    resampler: StreamResampler
    remainder: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))
    framed_ms: float = 0.0  # cut into frames so far
    marked_ms: float = 0.0  # where the last marker stands
    queued: int = 0  # frames waiting here
    sent_ms: float = 0.0
    confirmed_ms: float = 0.0
    play_end: float = 0.0  # clock time when the listener will have played all of it sent so far
    cut_at: float | None = None  # a barge-in: nothing of it plays after this moment
    ended: bool = False  # the response sends no more audio
    cut: bool = False

    def estimated_ms(self, now: float) -> float:
        now = now if self.cut_at is None else min(now, self.cut_at)
        return max(0.0, self.sent_ms - max(0.0, self.play_end - now) * 1000.0)


Queued = WireFrame | Marker


class ReplyAudioSink:
    """One listener's reply audio. The session side: `push`, `flush`, `discard`, `heard_ms`. The transport
    side: override `_write_frame` (and `_write_marker`, `_clear_far_side`, `_on_playback` where the wire has
    them); call `delivered` (write-through), `next_frame` (pulled) or `confirm` (first-hand playback)."""

    def __init__(self, *, mode: Mode, wire_rate: int | Callable[[], int], frame_ms: int | None = 20,
                 lead_ms: float = 160.0, marker_interval_ms: int | None = None, confirms: bool = False,
                 max_queued_s: float = 60.0, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        if frame_ms is None and mode != "write_through":
            raise ValueError("only a write-through sink may send chunks as they come (frame_ms=None)")
        if lead_ms < 0:
            raise ValueError(f"lead_ms must be >= 0, got {lead_ms}")
        self.mode = mode
        self._wire_rate = wire_rate
        self.frame_ms = frame_ms
        self.lead_s = lead_ms / 1000.0
        self.marker_interval_ms = marker_interval_ms
        self.confirms = confirms
        self._max_frames = max(1, int(max_queued_s * 1000 / (frame_ms or 20)))
        self._clock = clock
        self._sleep = sleep
        self._items: OrderedDict[str, _Item] = OrderedDict()
        self._framing: str | None = None  # the item whose audio is being cut into frames
        self._queue: deque[Queued] = deque()  # paced and pulled: frames (and markers) not yet out
        self._control: deque[Callable[[], Awaitable[None]]] = deque()  # overtakes queued audio (paced)
        self._playing: set[str] = set()  # responses whose audio started and has not stopped or been cleared
        self._play_end: float | None = None  # when the listener will have played everything sent
        self._room = asyncio.Event()
        self._room.set()
        self._wakeup = asyncio.Event()
        self._drained = asyncio.Event()
        self._drained.set()
        self._lock = asyncio.Lock()  # paced: one write at a time; a clear never interleaves with a frame
        self._sender: asyncio.Task[None] | None = None
        self._control_task: asyncio.Task[None] | None = None
        self.closed_reason: str | None = None
        self.seconds_sent = 0.0  # reply audio that left for the listener, every item together
        self.held = False  # paced and pulled: nothing goes out (the caller may be interrupting)

    # -- lifetime ----------------------------------------------------------------------------------------------

    def start(self) -> None:
        if self.mode == "paced" and self._sender is None:
            self._sender = asyncio.get_running_loop().create_task(self._send_paced(), name="reply-audio-sender")

    def close(self, reason: str) -> None:
        """Nothing more goes out; every later push raises OutputClosed with this reason."""
        if self.closed_reason is None:
            self.closed_reason = reason
        self._queue.clear()
        self._control.clear()
        self._room.set()
        self._wakeup.set()
        self._drained.set()

    async def aclose(self, reason: str = "the output closed") -> None:
        self.close(reason)
        for task in (self._sender, self._control_task):
            if task is not None and not task.done():
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
        # Their CancelledErrors hold frames whose `self` is this sink: let go of them (no cycle).
        self._sender = self._control_task = None

    # -- the session's side ------------------------------------------------------------------------------------

    async def push(self, response_id: str, item_id: str, samples: np.ndarray) -> bool:
        """Take a chunk of an item (float32 mono 24 kHz). A chunk of another item first ends the one before.
        False, taking nothing, for an item a barge-in cut (audio the engine made before it saw the cancel)."""
        self._check_open()
        known = self._items.get(item_id)
        if known is not None and known.cut:
            return False
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        piece = max(1, len(samples))
        if self.marker_interval_ms is not None:
            piece = max(1, SAMPLE_RATE * self.marker_interval_ms // 1000)
        for start in range(0, max(len(samples), 1), piece):
            await self._wait_for_room()
            item = self._items.get(item_id)
            if item is not None and item.cut:  # cut while this push waited for room
                return False
            item = await self._item_for(response_id, item_id)
            await self._frame(item_id, item, item.resampler.push(samples[start:start + piece]), last=False)
        return True

    async def flush(self, response_id: str) -> None:
        """The response sends no more audio: each of its items' last part-frame goes out (padded), and once
        all of it has left, playback of the response is reported `stopped`."""
        self._check_open()
        for item_id, item in list(self._items.items()):
            if item.response_id != response_id or item.ended:
                continue
            item.ended = True
            if not item.cut:
                await self._frame(item_id, item, item.resampler.flush(), last=True)
            if self._framing == item_id:
                self._framing = None
        self._stopped_if_drained(response_id)

    def discard(self, item_id: str) -> int:
        """Barge-in: drop the item's audio not yet heard (here, and on the far side where the transport can
        clear it) and refuse the rest; returns the 24 kHz samples the listener will not hear. Never raises."""
        item = self._items.get(item_id)
        if item is None:  # nothing of it came yet: refuse what may still come
            self._remember(item_id, _Item("", SAMPLE_RATE, StreamResampler(SAMPLE_RATE, SAMPLE_RATE), cut=True))
            return 0
        if item.cut:  # cut before: nothing of it is left here or on the far side
            return 0
        now = self._clock()
        dropped_ms = sum(entry.ms for entry in self._queue
                         if isinstance(entry, WireFrame) and entry.item_id == item_id)
        dropped_ms += len(item.remainder) * 1000.0 / item.rate
        self._queue = deque(entry for entry in self._queue if entry.item_id != item_id)
        item.queued = 0
        item.remainder = np.zeros(0, dtype=np.float32)
        if self._framing == item_id:
            self._framing = None
        unheard_ms = item.sent_ms - (item.confirmed_ms if self.confirms else item.estimated_ms(now))
        dropped_ms += self._clear_far_side(item_id, max(0.0, unheard_ms))
        item.cut = True
        if item.cut_at is None and item.play_end > now:
            item.cut_at = now
        self._play_end = None  # the listener's buffer is empty again
        self._room.set()
        if item.response_id in self._playing or dropped_ms:
            self._playing.discard(item.response_id)
            self._on_playback("cleared", item.response_id)
        return round(dropped_ms * SAMPLE_RATE / 1000)

    def heard_ms(self, item_id: str) -> float:
        playback = self.playback(item_id)
        return 0.0 if playback is None else playback.heard_ms

    def playback(self, item_id: str, now: float | None = None) -> ItemPlayback | None:
        """How far a recent item got (None for one this sink never saw or has forgotten)."""
        item = self._items.get(item_id)
        if item is None:
            return None
        estimated = item.estimated_ms(self._clock() if now is None else now)
        return ItemPlayback(item_id, item.sent_ms, item.confirmed_ms if self.confirms else None, estimated)

    @property
    def queued_ms(self) -> float:
        """Reply audio waiting here, not yet sent."""
        return sum(entry.ms for entry in self._queue if isinstance(entry, WireFrame))

    async def wait_sent(self) -> None:
        """Until everything queued has gone out (raises OutputClosed if sending failed)."""
        await self._drained.wait()
        self._check_open()

    # -- SessionOutput's audio half (a transport's output is a sink) ----------------------------------------

    async def send_audio(self, response_id: str, item_id: str, samples: np.ndarray) -> None:
        await self.push(response_id, item_id, samples)

    async def flush_audio(self, response_id: str) -> None:
        await self.flush(response_id)

    def discard_audio(self, item_id: str) -> int:
        return self.discard(item_id)

    def hold_audio(self) -> bool:
        """Stop playing out, keeping what is queued (the caller started speaking: maybe an interruption, maybe
        an "uh-huh"); False where the sink cannot hold (write-through: the client holds the audio it got)."""
        if self.mode == "write_through":
            return False
        self.held = True
        return True

    def release_audio(self) -> None:
        """Play on from where `hold_audio` stopped (it was not an interruption)."""
        if self.held:
            self.held = False
            self._wakeup.set()

    # -- the transport's side ----------------------------------------------------------------------------------

    @property
    def wire_rate(self) -> int:
        return self._wire_rate() if callable(self._wire_rate) else self._wire_rate

    async def _write_frame(self, frame: WireFrame) -> None:
        """Put one frame on the wire (write-through and paced sinks)."""
        raise NotImplementedError

    async def _write_marker(self, marker: Marker) -> None:
        """Put a marker on the wire (sinks with `marker_interval_ms`)."""

    def _clear_far_side(self, item_id: str, unheard_ms: float) -> float:
        """Barge-in: make the far side drop what it holds of the item and has not played (`unheard_ms` of it
        left here by the sink's account); return the ms it will not play. Without a way to clear, 0."""
        return 0.0

    def _on_playback(self, what: PlaybackEvent, response_id: str) -> None:
        """A response's audio started, stopped (all of it out, after `flush`) or was cleared."""

    def delivered(self, frame: WireFrame, at: float | None = None) -> None:
        """The frame has left for the listener, who plays it at real time from now (or when what was sent
        before it ends)."""
        at = self._clock() if at is None else at
        start = at if self._play_end is None else max(self._play_end, at)  # a listener that ran dry stalled
        self._play_end = start + len(frame.samples) / frame.rate
        self.seconds_sent += frame.real_samples / frame.rate
        item = self._items.get(frame.item_id)
        if item is None:
            return
        item.sent_ms += frame.ms
        item.play_end = self._play_end
        if frame.response_id not in self._playing and not item.cut:
            self._playing.add(frame.response_id)
            self._on_playback("started", frame.response_id)
        self._stopped_if_drained(frame.response_id)

    def confirm(self, item_id: str, position_ms: float) -> None:
        """The listener has played the item up to `position_ms` (first-hand, e.g. an echoed mark)."""
        item = self._items.get(item_id)
        if item is not None:
            item.confirmed_ms = max(item.confirmed_ms, min(position_ms, item.sent_ms))

    def next_frame(self) -> WireFrame | None:
        """Pulled sinks: the frame due now (None: play silence), counted as delivered."""
        while self._queue and not self.held:
            entry = self._queue.popleft()
            if isinstance(entry, WireFrame):
                self._room.set()
                self._left_queue(entry)
                self.delivered(entry)
                return entry
        return None

    def send_first(self, send: Callable[[], Awaitable[None]]) -> None:
        """Paced sinks: send a control message ahead of any queued audio, after at most the one frame being
        written now."""
        if self.closed_reason is not None:
            return
        self._control.append(send)
        self._drained.clear()
        if self._control_task is None or self._control_task.done():
            self._control_task = asyncio.get_running_loop().create_task(self._flush_control())

    # -- framing -----------------------------------------------------------------------------------------------

    async def _item_for(self, response_id: str, item_id: str) -> _Item:
        if self._framing is not None and self._framing != item_id:
            previous_id, self._framing = self._framing, None
            previous = self._items.get(previous_id)
            if previous is not None and not previous.cut:  # a new item: the previous one is complete
                await self._frame(previous_id, previous, previous.resampler.flush(), last=True)
        item = self._items.get(item_id)
        if item is None:
            rate = self.wire_rate
            item = self._remember(item_id, _Item(response_id, rate, StreamResampler(SAMPLE_RATE, rate)))
        self._framing = item_id
        return item

    async def _frame(self, item_id: str, item: _Item, audio: np.ndarray, last: bool) -> None:
        frames = self._cut(item_id, item, audio, last)
        if self.mode == "write_through":
            for frame in frames:
                await self._write_frame(frame)
            return
        self._queue_frames(item_id, item, frames, final=last)

    def _cut(self, item_id: str, item: _Item, audio: np.ndarray, last: bool) -> list[WireFrame]:
        if self.frame_ms is None:  # write-through as it comes
            return [WireFrame(item.response_id, item_id, audio, len(audio), item.rate)] if audio.size else []
        size = item.rate * self.frame_ms // 1000
        audio = np.concatenate([item.remainder, audio]) if item.remainder.size else audio
        whole = len(audio) // size * size
        frames = [WireFrame(item.response_id, item_id, audio[start:start + size], size, item.rate)
                  for start in range(0, whole, size)]
        rest = audio[whole:]
        if last and rest.size:
            padded = np.zeros(size, dtype=np.float32)
            padded[:rest.size] = rest
            frames.append(WireFrame(item.response_id, item_id, padded, rest.size, item.rate))
            rest = rest[:0]
        item.remainder = rest
        item.framed_ms += sum(frame.ms for frame in frames)
        return frames

    def _queue_frames(self, item_id: str, item: _Item, frames: list[WireFrame], final: bool) -> None:
        self._queue.extend(frames)
        item.queued += len(frames)
        marked = self.marker_interval_ms is not None and (item.framed_ms > item.marked_ms
                                                          or (final and item.framed_ms > 0))
        if marked:
            item.marked_ms = item.framed_ms
            self._queue.append(Marker(item.response_id, item_id, item.framed_ms, final))
        if frames or marked:
            self._drained.clear()
            self._wakeup.set()

    def _remember(self, item_id: str, item: _Item) -> _Item:
        self._items[item_id] = item
        while len(self._items) > KEPT_ITEMS:
            self._items.popitem(last=False)
        return item

    async def _wait_for_room(self) -> None:
        while self.mode != "write_through" and self._frames_queued() >= self._max_frames:
            self._room.clear()
            await self._room.wait()
            self._check_open()

    def _frames_queued(self) -> int:
        return sum(isinstance(entry, WireFrame) for entry in self._queue)

    def _left_queue(self, frame: WireFrame) -> None:
        item = self._items.get(frame.item_id)
        if item is not None:
            item.queued -= 1

    def _stopped_if_drained(self, response_id: str) -> None:
        """`stopped` once the response has ended and every frame of it has left."""
        if response_id not in self._playing:
            return
        items = [item for item in self._items.values() if item.response_id == response_id]
        if all(item.ended and item.queued == 0 for item in items):
            self._playing.discard(response_id)
            self._on_playback("stopped", response_id)

    def _check_open(self) -> None:
        if self.closed_reason is not None:
            raise OutputClosed(self.closed_reason)

    # -- the paced sender --------------------------------------------------------------------------------------

    async def _send_paced(self) -> None:
        try:
            while True:
                if not self._queue:
                    if not self._control:
                        self._drained.set()
                    self._wakeup.clear()
                    await self._wakeup.wait()
                    if self.closed_reason is not None:
                        return
                    continue
                head = self._queue[0]
                if isinstance(head, WireFrame) and self.held:
                    self._wakeup.clear()
                    await self._wakeup.wait()  # release_audio, a discard or the close wakes it
                    if self.closed_reason is not None:
                        return
                    continue
                if isinstance(head, WireFrame):
                    wait = self._ahead_s(self._clock()) - self.lead_s
                    if wait > 1e-6:
                        await self._sleep(wait)
                        continue  # a barge-in may have emptied the queue meanwhile
                async with self._lock:
                    await self._send_control()  # a clear goes before any audio queued after it
                    if not self._queue or self._queue[0] is not head:
                        continue
                    self._queue.popleft()
                    if isinstance(head, WireFrame):
                        self._room.set()
                        self._left_queue(head)
                        # Counted as sent when handed over: a clear during the write already accounts for it.
                        self.delivered(head)
                        await self._write_frame(head)
                    else:
                        await self._write_marker(head)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the wire is gone: say why to every producer, let waiters go
            log.info("sending reply audio failed (%s: %s)", type(exc).__name__, exc)
            self.close(f"sending failed: {exc!r}")

    async def _flush_control(self) -> None:
        try:
            async with self._lock:  # waits for at most the one frame being written
                await self._send_control()
        except Exception as exc:  # noqa: BLE001
            self.close(f"sending failed: {exc!r}")
        if not self._queue and not self._control:
            self._drained.set()

    async def _send_control(self) -> None:
        while self._control:
            await self._control.popleft()()

    def _ahead_s(self, now: float) -> float:
        """Audio sent that the listener has not played yet, by the playout clock."""
        return 0.0 if self._play_end is None else max(0.0, self._play_end - now)

