"""A call's `SessionOutput`: events on the `oai-events` data channel (and to any sideband listeners), reply
audio on the outgoing media track (a pulled `ReplyAudioSink`: 20 ms frames at 48 kHz wait here until the
track's clock takes the next one; from then on it plays at real time).

Events go out at once, one JSON text message each: audio no longer shares their path, so nothing queues
behind it and no control lane is needed. Until the client's data channel is open they wait here (so
`session.created` is the first message on it). A client that stops reading shows as data piling up in the
channel's send buffer; past `max_buffered_bytes` for `slow_client_timeout_s` the call is ended. Listeners (the
sideband WebSockets) get every event too, and must never slow the call down: `offer` does not wait.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol

from aiortc import RTCDataChannel

from higgs_agent.agent.events import DomainEvent
from higgs_agent.agent.output import OutputClosed
from higgs_agent.protocol import server_events as se
from higgs_agent.protocol.server_events import (
    OutputAudioBufferCleared,
    OutputAudioBufferStarted,
    OutputAudioBufferStopped,
)
from higgs_agent.transport.audio_sink import PlaybackEvent, ReplyAudioSink
from higgs_agent.transport.realtime_codec import RealtimeEncoder
from higgs_agent.transport.webrtc.tracks import FRAME_MS, WIRE_RATE

log = logging.getLogger(__name__)
MAX_PENDING_EVENTS = 1024  # events waiting for the data channel to open (past this the oldest go)

PLAYBACK_EVENTS = {"started": OutputAudioBufferStarted, "stopped": OutputAudioBufferStopped,
                   "cleared": OutputAudioBufferCleared}


class EventListener(Protocol):
    def offer(self, text: str) -> None:
        """Take one event's JSON without waiting (a listener that cannot keep up drops itself)."""

    def call_ended(self, reason: str) -> None:
        """The call is over: no more events will come."""


class CallOutput(ReplyAudioSink):
    """`on_closed(reason)` hears when the client turns out to be unreachable (its channel closed, or it stopped
    reading); every send after that raises OutputClosed. `ReplyAudioTrack(output)` plays its audio."""

    def __init__(self, on_closed: Callable[[str], None], max_buffered_bytes: int = 1 << 20,
                 slow_client_timeout_s: float = 10.0, max_queued_audio_s: float = 60.0) -> None:
        super().__init__(mode="pulled", wire_rate=WIRE_RATE, frame_ms=FRAME_MS, max_queued_s=max_queued_audio_s)
        self._on_closed = on_closed
        self.max_buffered_bytes = max_buffered_bytes
        self.slow_client_timeout_s = slow_client_timeout_s
        self._channel: RTCDataChannel | None = None
        self._pending: deque[str] = deque(maxlen=MAX_PENDING_EVENTS)
        self._listeners: list[EventListener] = []
        self._backed_up_since: float | None = None
        self.encoder = RealtimeEncoder()

    # -- wiring -------------------------------------------------------------------------------------------

    def attach_channel(self, channel: RTCDataChannel) -> None:
        """The client's event channel is open: what waited goes first, in order."""
        self._channel = channel
        with contextlib.suppress(OutputClosed):  # the call is ending: it learns that elsewhere
            while self._pending and self.closed_reason is None:
                self._to_channel(self._pending.popleft())

    def add_listener(self, listener: EventListener) -> None:
        self._listeners.append(listener)

    def remove_listener(self, listener: EventListener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def listeners(self) -> list[EventListener]:
        return list(self._listeners)

    # -- SessionOutput (the audio half is the sink's) ------------------------------------------------------

    async def send_event(self, event: DomainEvent) -> None:
        self._check_open()
        for text in self.encoder.texts(event):
            self._emit(text)

    # -- sending ------------------------------------------------------------------------------------------

    def _on_playback(self, what: PlaybackEvent, response_id: str) -> None:
        if self.closed_reason is None:  # from the track's sender or a barge-in: never raises into them
            with contextlib.suppress(OutputClosed):
                self._emit(se.to_wire(PLAYBACK_EVENTS[what](response_id=response_id)))

    def _emit(self, text: str) -> None:
        if self._channel is None:
            self._pending.append(text)
        else:
            self._to_channel(text)
        for listener in list(self._listeners):
            listener.offer(text)

    def _to_channel(self, text: str) -> None:
        channel = self._channel
        assert channel is not None
        if channel.readyState != "open":
            self._shut("the event channel closed")
            raise OutputClosed(self.closed_reason or "the event channel closed")
        channel.send(text)
        self._check_backlog(channel.bufferedAmount)

    def _check_backlog(self, buffered: int) -> None:
        if buffered <= self.max_buffered_bytes:
            self._backed_up_since = None
            return
        now = time.monotonic()
        if self._backed_up_since is None:
            self._backed_up_since = now
        elif now - self._backed_up_since > self.slow_client_timeout_s:
            reason = f"client read no events for {self.slow_client_timeout_s:g} s"
            log.warning("ending the call: %s", reason)
            self._shut(reason)
            raise OutputClosed(reason)

    def _shut(self, reason: str) -> None:
        if self.closed_reason is None:
            self.close(reason)
            self._on_closed(reason)
