"""A phone call's `SessionOutput`: a paced `ReplyAudioSink` whose frames, marks and clears go to the carrier.

A carrier plays what it gets at real time and holds the rest in a buffer of its own, which only a `clear`
empties. So reply audio goes out as whole 20 ms frames at the carrier's rate, each sent when the carrier has
less than `lead_ms` left to play (a barge-in then has at most that much to clear there), with a mark after
every `mark_interval_ms` of it. The carrier echoes a mark once everything before it has played: the only
first-hand word of what the caller heard, so `heard_ms` is where the last echoed mark stands, which is exactly
where the session cuts the agent's turn in the history (LiveKit's playback-position contract, with a number in
it). A barge-in sends `clear` ahead of any later audio; marks still pending then are echoed by the carrier at
once, played or not, and are not taken for playback. The phone carries no events: the call's record observes
the session's domain events instead (`Session.observe`).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable

from higgs_agent.agent.events import DomainEvent
from higgs_agent.transport.audio_sink import Marker, ReplyAudioSink, WireFrame
from higgs_agent.transport.phone.serializer import (
    ClearAudio,
    OutgoingAudio,
    OutgoingMark,
    OutgoingMessage,
)

Send = Callable[[OutgoingMessage], Awaitable[None]]
FRAME_MS = 20
_KEPT_MARKS = 1024  # marks flushed by a clear, awaiting their echo (a carrier that never echoes cannot grow it)


class PhoneOutput(ReplyAudioSink):
    """`send` puts one typed message on the carrier's socket (the call encodes it with its serializer);
    `clock` and `sleep` are injectable so tests run on virtual time."""

    def __init__(self, send: Send, *, wire_rate: int, lead_ms: int = 160,
                 mark_interval_ms: int = 250, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        if (wire_rate * FRAME_MS) % 1000:
            raise ValueError(f"a {FRAME_MS} ms frame at {wire_rate} Hz is not whole samples")
        super().__init__(mode="paced", wire_rate=wire_rate, frame_ms=FRAME_MS, lead_ms=lead_ms,
                         marker_interval_ms=mark_interval_ms, confirms=True, clock=clock, sleep=sleep)
        self._send = send
        self._mark_numbers = itertools.count(1)
        self._pending_marks: dict[str, Marker] = {}  # sent, not yet echoed
        self._flushed_marks: OrderedDict[str, None] = OrderedDict()  # pending at a clear: echo is no playback
        self._all_heard: dict[str, asyncio.Event] = {}  # item -> set when its final mark came back

    # -- SessionOutput (the audio half is the sink's) ------------------------------------------------------------

    async def send_event(self, event: DomainEvent) -> None:
        self._check_open()  # a phone line carries no events

    # -- from the carrier -------------------------------------------------------------------------------------

    def mark_echoed(self, name: str) -> Marker | None:
        """An echoed mark -> the point of the reply the caller has heard; None for a mark that is not ours or
        that a clear flushed."""
        if name in self._flushed_marks:
            del self._flushed_marks[name]
            return None
        marker = self._pending_marks.pop(name, None)
        if marker is None:
            return None
        self.confirm(marker.item_id, marker.position_ms)
        if marker.final:
            self._heard_event(marker.item_id).set()
        return marker

    async def all_heard(self, item_id: str) -> None:
        """Until the carrier confirms the caller heard the whole item (its final mark came back)."""
        await self._heard_event(item_id).wait()

    # -- the sink's wire --------------------------------------------------------------------------------------

    async def _write_frame(self, frame: WireFrame) -> None:
        await self._send(OutgoingAudio(frame.samples, frame.item_id))

    async def _write_marker(self, marker: Marker) -> None:
        name = f"{marker.item_id}.{next(self._mark_numbers)}"
        self._pending_marks[name] = marker  # before the send: its echo may come back first
        await self._send(OutgoingMark(name))

    def _clear_far_side(self, item_id: str, unheard_ms: float) -> float:
        if unheard_ms <= 0:
            return 0.0  # the marks say the caller heard all of it that was sent
        self._flushed_marks.update(dict.fromkeys(self._pending_marks))
        self._pending_marks.clear()
        while len(self._flushed_marks) > _KEPT_MARKS:
            self._flushed_marks.popitem(last=False)
        self.send_first(self._send_clear)
        return unheard_ms

    async def _send_clear(self) -> None:
        await self._send(ClearAudio())

    def _heard_event(self, item_id: str) -> asyncio.Event:
        return self._all_heard.setdefault(item_id, asyncio.Event())
