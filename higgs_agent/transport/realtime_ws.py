"""`/v1/realtime` over WebSocket: moves JSON text frames between a client and a `Session`, nothing more.

Outgoing messages go through a bounded outbox drained by one sender task, in two lanes: control (speech
started, errors, cancellations, every event of a response with no audio queued) goes before reply audio, so
a barge-in is announced at once however much audio is queued; a response's own events stay in order behind
its audio. A client that stops reading is disconnected (1008 when it can still hear it, else the connection
is dropped) within `slow_client_timeout_s`: its outbox cannot fill for longer, and no single send may block
for longer. Barge-in drops reply audio still in the outbox, so the listener does not keep hearing queued speech.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from starlette.websockets import WebSocket, WebSocketDisconnect

from higgs_agent.agent.events import DomainEvent
from higgs_agent.agent.output import OutputClosed
from higgs_agent.agent.services import AgentServices
from higgs_agent.agent.session import Session
from higgs_agent.agent.transcription_session import intent_sessions
from higgs_agent.audio_formats import AudioFormat, encode_audio
from higgs_agent.defaults import DEFAULT_TENANT
from higgs_agent.logs import session_id
from higgs_agent.protocol import server_events as se
from higgs_agent.protocol.errors import ProtocolError
from higgs_agent.transport.audio_sink import ReplyAudioSink, WireFrame
from higgs_agent.transport.auth import principal_of
from higgs_agent.transport.realtime_codec import RealtimeEncoder, deliver
from higgs_agent.transport.uvicorn_ws import (
    chosen_subprotocol,
    close_gracefully,
    close_unresponsive,
    send_text_within,
)

log = logging.getLogger(__name__)


class ClientTooSlow(OutputClosed):
    """The client has not read its messages for too long."""


@dataclass
class _Outgoing:
    text: str
    response_id: str | None = None
    frame: WireFrame | None = None  # reply audio: the frame in this message


class WebSocketOutput(ReplyAudioSink):
    """The session's output on a WebSocket: events as JSON, reply audio as `response.output_audio.delta`
    (a write-through sink: each chunk is resampled to the session's output rate and queued as it comes)."""

    def __init__(self, websocket: WebSocket, output_format: Callable[[], AudioFormat], max_messages: int = 256,
                 slow_client_timeout_s: float = 10.0) -> None:
        super().__init__(mode="write_through", wire_rate=lambda: output_format().rate, frame_ms=None)
        self.websocket = websocket
        self.output_format = output_format
        self.max_messages = max_messages
        self.slow_client_timeout_s = slow_client_timeout_s
        self._control_lane: deque[_Outgoing] = deque()
        self._data: deque[_Outgoing] = deque()
        self._ready = asyncio.Event()  # something to send
        self._outbox_room = asyncio.Event()  # room in the outbox
        self._outbox_room.set()
        self._sending: asyncio.Task | None = None
        self.encoder = RealtimeEncoder()

    def start(self) -> None:
        self._sending = asyncio.create_task(self._send_loop(), name="ws-sender")

    async def aclose(self, reason: str = "session closed") -> None:
        self._shut(reason)
        if self._sending is not None:
            self._sending.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sending
            self._sending = None  # its CancelledError holds its frames, whose `self` is this output: no cycle
        await super().aclose(reason)

    async def send_event(self, event: DomainEvent) -> None:
        for wire in self.encoder.encode(event):
            await self._put(_Outgoing(se.to_wire(wire), response_id=se.response_id_of(wire)))

    async def _write_frame(self, frame: WireFrame) -> None:
        # At the item's rate; a format that changed during the item is met here (encode_audio resamples).
        coded = encode_audio(frame.samples, self.output_format(), from_rate=frame.rate)
        delta = base64.b64encode(coded).decode("ascii")
        event = se.OutputAudioDelta(response_id=frame.response_id, item_id=frame.item_id, output_index=0,
                                    content_index=0, delta=delta)
        await self._put(_Outgoing(se.to_wire(event), response_id=frame.response_id, frame=frame))

    def _clear_far_side(self, item_id: str, unheard_ms: float) -> float:
        """The client plays what it received (it stops itself on `speech_started`); what is still in the
        outbox is dropped."""
        dropped = [m for m in self._data if m.frame is not None and m.frame.item_id == item_id]
        self._data = deque(m for m in self._data if m.frame is None or m.frame.item_id != item_id)
        self._outbox_room.set()  # producers waiting for room may go on
        return sum(m.frame.ms for m in dropped if m.frame is not None)

    @property
    def queued(self) -> int:
        return len(self._control_lane) + len(self._data)

    async def _put(self, message: _Outgoing) -> None:
        if self.closed_reason is not None:
            raise OutputClosed(self.closed_reason)
        while self.queued >= self.max_messages:
            self._outbox_room.clear()
            try:
                await asyncio.wait_for(self._outbox_room.wait(), self.slow_client_timeout_s)
            except TimeoutError:
                reason = f"client read nothing for {self.slow_client_timeout_s:g} s"
                self._abort(reason)
                raise ClientTooSlow(reason) from None
            if self.closed_reason is not None:
                raise OutputClosed(self.closed_reason)
        # Control overtakes audio, except a response's own events, which stay behind its queued audio.
        behind_audio = message.frame is not None or (
            message.response_id is not None and any(m.response_id == message.response_id for m in self._data))
        (self._data if behind_audio else self._control_lane).append(message)
        self._ready.set()

    async def _send_loop(self) -> None:
        try:
            while True:
                await self._ready.wait()
                lane = self._control_lane if self._control_lane else self._data
                if not lane:
                    self._ready.clear()
                    continue
                message = lane.popleft()
                self._outbox_room.set()
                try:  # a send that cannot finish is a client that stopped reading
                    await send_text_within(self.websocket, message.text, self.slow_client_timeout_s)
                except TimeoutError:
                    self._abort(f"client read nothing for {self.slow_client_timeout_s:g} s")
                    return
                if message.frame is not None:
                    self.delivered(message.frame)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the client went away mid-send: every producer must learn it
            log.info("sending failed (%s: %s); closing", type(exc).__name__, exc)
            self._shut(f"the connection failed while sending ({type(exc).__name__})")

    def _shut(self, reason: str) -> None:
        self.close(reason)
        self._outbox_room.set()
        self._ready.set()

    def _abort(self, reason: str) -> None:
        """Cut a client that does not read: no close frame can reach it through a full window."""
        log.warning("disconnecting: %s", reason)
        self._shut(reason)
        asyncio.get_running_loop().create_task(close_unresponsive(self.websocket, 1008, reason))


async def realtime_endpoint(websocket: WebSocket, services: AgentServices) -> None:
    await websocket.accept(subprotocol=chosen_subprotocol(websocket.scope.get("subprotocols", [])))
    session_ref: weakref.ref[Session] | None = None
    # The output reads the session's format through a weak reference: a strong one would make session ->
    # output -> session a cycle, and a closed session (with its audio) would wait for the cycle collector.
    output = WebSocketOutput(websocket, lambda: session_ref().config.output_format,  # type: ignore[misc,union-attr]
                             slow_client_timeout_s=services.slow_client_timeout_s)
    principal = principal_of(websocket.scope)
    session = Session(services, output, tenant=principal.tenant if principal is not None else DEFAULT_TENANT)
    session_ref = weakref.ref(session)
    session_id.set(session.config.id)  # every line logged for this connection names the session
    notes: list[ProtocolError] = []
    if principal is not None and principal.session:  # a client secret's session config comes first
        try:
            notes = session.configure(principal.session)
        except ProtocolError as exc:
            notes = [exc]
    intended, refused = intent_sessions(websocket.query_params)  # ?intent=transcription: a captions session
    for raw in intended:
        notes += session.configure(raw)
    notes += refused
    log.info("session opened from %s", websocket.client.host if websocket.client else "?")
    output.start()
    close_code, reason = 1000, ""
    try:
        await session.open()
        for note in notes:
            await session.report(note)
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                break
            if message.get("text") is not None:
                await deliver(session, message["text"])
            else:
                await session.report(ProtocolError("invalid_event", "binary frames are not part of the protocol; "
                                                   "send JSON text frames"))
    except ClientTooSlow as exc:
        close_code, reason = 1008, str(exc)
    except OutputClosed as exc:
        log.info("closing: %s", exc)
    except (WebSocketDisconnect, RuntimeError) as exc:  # the client vanished mid-send or mid-receive
        log.info("client gone: %s", type(exc).__name__)
    finally:
        reason = reason or output.closed_reason or ""  # e.g. cut off as too slow while the reply was sending
        await session.close()
        services.metrics.audio_seconds_out.inc(output.seconds_sent)
        await output.aclose()
        if close_code == 1008:
            await close_unresponsive(websocket, close_code, reason)
        else:
            await close_gracefully(websocket, close_code, reason)
        log.info("session closed (%s)", reason or "client left")
