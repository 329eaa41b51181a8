"""A call's `SessionOutput`: events on the `oai-events` data channel (and to any sideband listeners), reply
audio on the outgoing media track.

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

import numpy as np
from aiortc import RTCDataChannel
from aiortc.mediastreams import MediaStreamError

from higgs_agent.agent.reply import OutputClosed
from higgs_agent.protocol import server_events as se
from higgs_agent.protocol.server_events import (
    OutputAudioBufferCleared,
    OutputAudioBufferStarted,
    OutputAudioBufferStopped,
)
from higgs_agent.transport.webrtc.tracks import ReplyAudioTrack

log = logging.getLogger(__name__)
MAX_PENDING_EVENTS = 1024  # events waiting for the data channel to open (past this the oldest go)

PLAYBACK_EVENTS = {"started": OutputAudioBufferStarted, "stopped": OutputAudioBufferStopped,
                   "cleared": OutputAudioBufferCleared}


class EventListener(Protocol):
    def offer(self, text: str) -> None:
        """Take one event's JSON without waiting (a listener that cannot keep up drops itself)."""

    def call_ended(self, reason: str) -> None:
        """The call is over: no more events will come."""


class CallOutput:
    """`on_closed(reason)` hears when the client turns out to be unreachable (its channel closed, or it stopped
    reading); every send after that raises OutputClosed."""

    def __init__(self, on_closed: Callable[[str], None], max_buffered_bytes: int = 1 << 20,
                 slow_client_timeout_s: float = 10.0, max_queued_audio_s: float = 60.0) -> None:
        self.track = ReplyAudioTrack(self._playback, max_queued_s=max_queued_audio_s)
        self._on_closed = on_closed
        self.max_buffered_bytes = max_buffered_bytes
        self.slow_client_timeout_s = slow_client_timeout_s
        self._channel: RTCDataChannel | None = None
        self._pending: deque[str] = deque(maxlen=MAX_PENDING_EVENTS)
        self._listeners: list[EventListener] = []
        self._backed_up_since: float | None = None
        self.closed_reason: str | None = None

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

    def close(self, reason: str) -> None:
        if self.closed_reason is None:
            self.closed_reason = reason
        self.track.stop()

    # -- SessionOutput ------------------------------------------------------------------------------------

    async def send_event(self, event: se.ServerEvent) -> None:
        self._check_open()
        if isinstance(event, se.ResponseDone):  # no more audio will come for it
            self.track.finish(event.response.id)
        self._emit(se.to_wire(event))

    async def send_audio(self, response_id: str, item_id: str, samples: np.ndarray) -> None:
        self._check_open()
        try:
            await self.track.push(response_id, item_id, samples)
        except MediaStreamError:
            raise OutputClosed(self.closed_reason or "the call's audio track ended") from None

    def discard_audio(self, item_id: str) -> int:
        return self.track.discard(item_id)

    def heard_ms(self, item_id: str) -> float:
        return self.track.heard_ms(item_id)

    # -- sending ------------------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self.closed_reason is not None:
            raise OutputClosed(self.closed_reason)

    def _playback(self, what: str, response_id: str) -> None:
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
            self.closed_reason = reason
            self.track.stop()
            self._on_closed(reason)
