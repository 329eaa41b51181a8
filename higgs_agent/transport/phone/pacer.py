"""Reply audio to a phone carrier: whole 20 ms frames, sent at real time a little ahead, with marks.

The engine produces a reply faster than real time, in chunks of any length at 24 kHz. A carrier plays what
it gets at real time and holds the rest in a buffer of its own, which only a `clear` empties. So this pacer
resamples each reply to the carrier's rate in one stream, cuts it into whole frames (160 mu-law bytes for
Twilio; the part-frame left over waits for the next chunk, and only a reply's very last frame is padded with
silence), and sends each frame when the carrier has less than `lead_ms` of audio left to play: a barge-in
then has at most that much audio on the carrier's side to clear, and the caller never runs dry while the
engine keeps up. After each chunk's frames goes a mark; the carrier echoes it once everything before it has
played, so `mark_echoed` says how much of a reply the caller has really heard (LiveKit's playback-position
contract, with a number in it). `clear()` overtakes queued audio: nothing queued is sent after it.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np

from higgs_agent import SAMPLE_RATE
from higgs_agent.audio_formats import StreamResampler
from higgs_agent.transport.phone.serializer import (
    ClearAudio,
    OutgoingAudio,
    OutgoingMark,
    OutgoingMessage,
)

Send = Callable[[OutgoingMessage], Awaitable[None]]
_KEPT_REPLIES = 16  # progress of recent replies, for marks that echo late
_KEPT_MARKS = 1024


@dataclass(frozen=True)
class Playback:
    """What an echoed mark means: the caller has heard `played_ms` of the reply (all of it when `final`)."""

    reply_id: str
    played_ms: int
    final: bool


@dataclass(frozen=True)
class ReplyPlayback:
    """How far a reply got, in milliseconds of its audio. `sent_ms`: handed to the carrier. `played_ms`:
    confirmed heard by echoed marks (a lower bound, late by the network's round trip).
    `estimated_played_ms`: sent minus what the playout clock says is still in the carrier's buffer (what a
    truncation should use while marks lag); it stops moving when a clear empties that buffer."""

    reply_id: str
    sent_ms: int
    played_ms: int
    estimated_played_ms: int


@dataclass(frozen=True, eq=False)
class _Frame:
    reply_id: str
    samples: np.ndarray


@dataclass(frozen=True)
class _Mark:
    reply_id: str
    name: str
    position_ms: int
    final: bool


@dataclass
class _Framing:
    """One reply on its way into frames: its resampler and the part-frame waiting for more audio."""

    reply_id: str
    resampler: StreamResampler
    remainder: np.ndarray
    queued_ms: int = 0
    marked_ms: int = 0


@dataclass
class _Progress:
    sent_ms: int = 0
    played_ms: int = 0
    play_end: float = 0.0  # clock time when the carrier will have played every frame of it sent so far
    cut_at: float | None = None  # when a clear emptied the carrier's buffer of it

    def estimated_played_ms(self, now: float) -> int:
        now = now if self.cut_at is None else min(now, self.cut_at)
        return round(max(0.0, self.sent_ms - max(0.0, self.play_end - now) * 1000))


class PacerStoppedError(RuntimeError):
    """The send callable failed (the socket closed); the pacer sends nothing more."""


class AudioPacer:
    """Frames, paces and marks reply audio for one call. `send` receives typed messages (encode them with
    the call's serializer); `clock` and `sleep` are injectable so tests can run on virtual time."""

    def __init__(self, send: Send, *, wire_rate: int, source_rate: int = SAMPLE_RATE, frame_ms: int = 20,
                 lead_ms: int = 160, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        if lead_ms < 0 or frame_ms <= 0 or (wire_rate * frame_ms) % 1000:
            raise ValueError(f"need lead_ms >= 0 and a frame of whole samples; got lead {lead_ms} ms, "
                             f"frame {frame_ms} ms at {wire_rate} Hz")
        self.wire_rate = wire_rate
        self.source_rate = source_rate
        self.frame_ms = frame_ms
        self.frame_samples = wire_rate * frame_ms // 1000
        self.lead_s = lead_ms / 1000
        self._send = send
        self._clock = clock
        self._sleep = sleep
        self._queue: deque[_Frame | _Mark] = deque()
        self._control: deque[OutgoingMessage] = deque()  # overtakes queued audio (Pipecat's system frames)
        self._control_task: asyncio.Task[None] | None = None
        self._framing: _Framing | None = None
        self._progress: OrderedDict[str, _Progress] = OrderedDict()
        self._pending_marks: dict[str, _Mark] = {}  # sent, not yet echoed
        self._flushed_marks: OrderedDict[str, None] = OrderedDict()  # pending at a clear: echo is no playback
        self._cleared: OrderedDict[str, None] = OrderedDict()  # replies a clear cut: later audio is dropped
        self._mark_numbers = itertools.count(1)
        self._play_end: float | None = None
        self._lock = asyncio.Lock()  # one send at a time, and a clear never interleaves with a frame
        self._wakeup = asyncio.Event()
        self._drained = asyncio.Event()
        self._drained.set()
        self._task: asyncio.Task[None] | None = None
        self._failure: BaseException | None = None

    # -- lifetime ----------------------------------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="phone-audio-pacer")

    async def aclose(self) -> None:
        """Stop sending; whatever is still queued is dropped."""
        for task in (self._task, self._control_task):
            if task is not None and not task.done():
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
        self._task = None

    async def __aenter__(self) -> AudioPacer:
        self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- reply audio in ----------------------------------------------------------------------------------------

    def push(self, reply_id: str, samples: np.ndarray) -> bool:
        """Queue a chunk of a reply (float32 mono at `source_rate`) and a mark after its whole frames.
        A chunk of another reply first finishes the one before. Returns False, queuing nothing, for a reply a
        clear already cut (audio the engine made before it saw the cancel)."""
        self._check_running()
        if reply_id in self._cleared:
            return False
        framing = self._framing_for(reply_id)
        audio = framing.resampler.push(np.asarray(samples, dtype=np.float32).reshape(-1))
        self._queue_frames(framing, audio, pad=False)
        self._queue_mark(framing, final=False)
        return True

    def finish(self, reply_id: str) -> None:
        """The reply is complete: send the resampler's tail, the last frame padded with silence, and a final
        mark (its echo means the caller heard all of it)."""
        self._check_running()
        framing = self._framing
        if framing is None or framing.reply_id != reply_id:
            return
        self._finish(framing)

    async def wait_sent(self) -> None:
        """Until everything queued has been sent (raises `PacerStoppedError` if sending failed)."""
        await self._drained.wait()
        self._check_running()

    @property
    def stopped(self) -> bool:
        """Sending failed (the socket is gone): nothing more goes out."""
        return self._failure is not None

    def holds(self, reply_id: str) -> bool:
        """Whether audio of the reply still waits here: queued frames, or a reply still being framed."""
        if self._framing is not None and self._framing.reply_id == reply_id:
            return True
        return any(isinstance(entry, _Frame) and entry.reply_id == reply_id for entry in self._queue)

    @property
    def queued_ms(self) -> int:
        """Reply audio queued here, not yet sent."""
        return sum(self.frame_ms for entry in self._queue if isinstance(entry, _Frame))

    # -- control -----------------------------------------------------------------------------------------------

    def clear_nowait(self) -> int:
        """Barge-in: from this instant nothing queued goes out; the carrier is told to drop what it holds (the
        `clear` goes ahead of any later audio, after at most the one frame being sent now); returns the ms of
        audio that was queued here and never sent. Audio pushed later for the replies cut here is refused.
        Never raises: after a failed send there is no carrier left to clear."""
        now = self._clock()
        dropped_ms = self.queued_ms
        cut = {entry.reply_id for entry in self._queue}
        if self._framing is not None:
            cut.add(self._framing.reply_id)
        for reply_id in cut:
            self._cleared[reply_id] = None
        while len(self._cleared) > _KEPT_REPLIES:
            self._cleared.popitem(last=False)
        for progress in self._progress.values():
            if progress.play_end > now and progress.cut_at is None:
                progress.cut_at = now
        self._queue.clear()
        self._framing = None
        self._flushed_marks.update(dict.fromkeys(self._pending_marks))
        self._pending_marks.clear()
        while len(self._flushed_marks) > _KEPT_MARKS:  # a carrier that never echoes cannot grow this
            self._flushed_marks.popitem(last=False)
        self._play_end = None  # the carrier's buffer is empty again
        if self._failure is None:
            self._control.append(ClearAudio())
            self._drained.clear()
            if self._control_task is None or self._control_task.done():  # a pending flush sends it too
                self._control_task = asyncio.get_running_loop().create_task(self._flush_control())
        return dropped_ms

    def playback(self, reply_id: str, now: float | None = None) -> ReplyPlayback | None:
        """How far a recent reply got (None for one this pacer never saw or has forgotten)."""
        progress = self._progress.get(reply_id)
        if progress is None:
            return None
        now = self._clock() if now is None else now
        return ReplyPlayback(reply_id, progress.sent_ms, progress.played_ms, progress.estimated_played_ms(now))

    def mark_echoed(self, name: str) -> Playback | None:
        """An echoed mark -> how much of its reply the caller has heard; None for a mark that is not ours or
        that a clear flushed (the carrier echoes those at once, played or not)."""
        if name in self._flushed_marks:
            del self._flushed_marks[name]
            return None
        mark = self._pending_marks.pop(name, None)
        if mark is None:
            return None
        progress = self._progress.get(mark.reply_id)
        if progress is not None:
            progress.played_ms = max(progress.played_ms, mark.position_ms)
        return Playback(mark.reply_id, mark.position_ms, mark.final)

    # -- framing -----------------------------------------------------------------------------------------------

    def _framing_for(self, reply_id: str) -> _Framing:
        if self._framing is not None and self._framing.reply_id != reply_id:
            self._finish(self._framing)
        if self._framing is None:
            self._framing = _Framing(reply_id, StreamResampler(self.source_rate, self.wire_rate),
                                     np.zeros(0, dtype=np.float32))
            self._progress[reply_id] = _Progress()
            while len(self._progress) > _KEPT_REPLIES:
                self._progress.popitem(last=False)
        return self._framing

    def _finish(self, framing: _Framing) -> None:
        self._queue_frames(framing, framing.resampler.flush(), pad=True)
        self._queue_mark(framing, final=True)
        self._framing = None

    def _queue_frames(self, framing: _Framing, audio: np.ndarray, pad: bool) -> None:
        audio = np.concatenate([framing.remainder, audio]) if framing.remainder.size else audio
        whole = len(audio) // self.frame_samples * self.frame_samples
        frames = [audio[start:start + self.frame_samples] for start in range(0, whole, self.frame_samples)]
        framing.remainder = audio[whole:]
        if pad and framing.remainder.size:
            last = np.zeros(self.frame_samples, dtype=np.float32)
            last[:framing.remainder.size] = framing.remainder
            frames.append(last)
            framing.remainder = np.zeros(0, dtype=np.float32)
        for frame in frames:
            self._queue.append(_Frame(framing.reply_id, frame))
        framing.queued_ms += len(frames) * self.frame_ms
        if frames:
            self._wake()

    def _queue_mark(self, framing: _Framing, final: bool) -> None:
        if framing.queued_ms == framing.marked_ms and not (final and framing.queued_ms):
            return  # no new audio since the last mark
        framing.marked_ms = framing.queued_ms
        name = f"{framing.reply_id}.{next(self._mark_numbers)}"
        self._queue.append(_Mark(framing.reply_id, name, framing.queued_ms, final))
        self._wake()

    def _wake(self) -> None:
        self._drained.clear()
        self._wakeup.set()

    # -- sending -----------------------------------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            while True:
                if not self._queue:
                    if not self._control:
                        self._drained.set()
                    self._wakeup.clear()
                    await self._wakeup.wait()
                    continue
                head = self._queue[0]
                if isinstance(head, _Frame):
                    wait = self._ahead_s(self._clock()) - self.lead_s
                    if wait > 1e-6:
                        await self._sleep(wait)
                        continue  # a clear may have emptied the queue meanwhile
                async with self._lock:
                    await self._send_control()  # a clear goes before any audio queued after it
                    if not self._queue or self._queue[0] is not head:
                        continue
                    self._queue.popleft()
                    if isinstance(head, _Frame):
                        await self._send_frame(head)
                    else:
                        self._pending_marks[head.name] = head  # before the send: its echo may come back first
                        await self._send(OutgoingMark(head.name))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the socket is gone: remember why, and let waiters go
            self._stop(exc)

    async def _flush_control(self) -> None:
        try:
            async with self._lock:  # waits for at most the one frame being sent
                await self._send_control()
        except Exception as exc:
            self._stop(exc)
        if not self._queue and not self._control:
            self._drained.set()

    async def _send_control(self) -> None:
        while self._control:
            await self._send(self._control.popleft())

    async def _send_frame(self, frame: _Frame) -> None:
        # Counted as sent when handed over, so a clear during the send already accounts for this frame.
        now = self._clock()
        starts = now if self._play_end is None else max(self._play_end, now)  # a dry carrier stalled
        self._play_end = starts + self.frame_ms / 1000
        progress = self._progress.setdefault(frame.reply_id, _Progress())
        progress.sent_ms += self.frame_ms
        progress.play_end = self._play_end
        await self._send(OutgoingAudio(frame.samples, frame.reply_id))

    def _stop(self, failure: Exception) -> None:
        self._failure = failure
        self._queue.clear()
        self._control.clear()
        self._drained.set()

    def _ahead_s(self, now: float) -> float:
        """Audio sent that the carrier has not played yet, by the playout clock."""
        return 0.0 if self._play_end is None else max(0.0, self._play_end - now)

    def _check_running(self) -> None:
        if self._failure is not None:
            raise PacerStoppedError(f"sending failed: {self._failure!r}") from self._failure
