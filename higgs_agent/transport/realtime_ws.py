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

import numpy as np
from starlette.websockets import WebSocket, WebSocketDisconnect

from higgs_agent import SAMPLE_RATE
from higgs_agent.agent.playout import PlayoutClock
from higgs_agent.agent.reply import OutputClosed
from higgs_agent.agent.services import AgentServices
from higgs_agent.agent.session import Session
from higgs_agent.audio_formats import AudioFormat, StreamResampler, encode_audio
from higgs_agent.defaults import DEFAULT_TENANT
from higgs_agent.logs import session_id
from higgs_agent.protocol import server_events as se
from higgs_agent.protocol.errors import ProtocolError
from higgs_agent.transport.auth import principal_of
from higgs_agent.transport.uvicorn_ws import close_gracefully, close_unresponsive

log = logging.getLogger(__name__)
SUBPROTOCOL = "realtime"


class ClientTooSlow(OutputClosed):
    """The client has not read its messages for too long."""


@dataclass
class _Outgoing:
    text: str
    response_id: str | None = None
    item_id: str | None = None  # reply audio: the item it belongs to
    samples: int = 0  # reply audio (24 kHz samples) in this message


class WebSocketOutput:
    """The session's output on a WebSocket: events as JSON, audio as `response.output_audio.delta`."""

    def __init__(self, websocket: WebSocket, output_format: Callable[[], AudioFormat], max_messages: int = 256,
                 slow_client_timeout_s: float = 10.0) -> None:
        self.websocket = websocket
        self.output_format = output_format
        self.max_messages = max_messages
        self.slow_client_timeout_s = slow_client_timeout_s
        self._control: deque[_Outgoing] = deque()
        self._data: deque[_Outgoing] = deque()
        self._ready = asyncio.Event()  # something to send
        self._room = asyncio.Event()  # room in the outbox
        self._room.set()
        self.closed_reason: str | None = None
        self._sender: asyncio.Task | None = None
        self.audio_seconds_sent = 0.0
        self._playout: dict[str, PlayoutClock] = {}  # per reply item: what the listener has heard
        self._resampler: tuple[tuple[str, int], StreamResampler] | None = None

    def start(self) -> None:
        self._sender = asyncio.create_task(self._send_loop(), name="ws-sender")

    async def close(self) -> None:
        self._shut("session closed")
        if self._sender is not None:
            self._sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sender
            self._sender = None  # its CancelledError holds its frames, whose `self` is this output: no cycle

    async def send_event(self, event: se.ServerEvent) -> None:
        await self._put(_Outgoing(se.to_wire(event), response_id=se.response_id_of(event)))

    async def send_audio(self, response_id: str, item_id: str, samples: np.ndarray) -> None:
        fmt = self.output_format()
        if self._resampler is None or self._resampler[0] != (item_id, fmt.rate):
            self._resampler = ((item_id, fmt.rate), StreamResampler(SAMPLE_RATE, fmt.rate))
        wire = self._resampler[1].push(samples)  # phone formats are 8 kHz; filter state spans the chunks
        delta = base64.b64encode(encode_audio(wire, fmt)).decode("ascii")
        event = se.OutputAudioDelta(response_id=response_id, item_id=item_id, output_index=0, content_index=0,
                                    delta=delta)
        await self._put(_Outgoing(se.to_wire(event), response_id=response_id, item_id=item_id,
                                  samples=len(samples)))

    def heard_ms(self, item_id: str) -> float:
        clock = self._playout.get(item_id)
        return 0.0 if clock is None else clock.heard_ms()

    def discard_audio(self, item_id: str) -> int:
        dropped = sum(m.samples for m in self._data if m.item_id == item_id)
        self._data = deque(m for m in self._data if m.item_id != item_id)
        self._room.set()  # producers waiting for room may go on
        return dropped

    @property
    def queued(self) -> int:
        return len(self._control) + len(self._data)

    async def _put(self, message: _Outgoing) -> None:
        if self.closed_reason is not None:
            raise OutputClosed(self.closed_reason)
        while self.queued >= self.max_messages:
            self._room.clear()
            try:
                await asyncio.wait_for(self._room.wait(), self.slow_client_timeout_s)
            except TimeoutError:
                reason = f"client read nothing for {self.slow_client_timeout_s:g} s"
                self._abort(reason)
                raise ClientTooSlow(reason) from None
            if self.closed_reason is not None:
                raise OutputClosed(self.closed_reason)
        # Control overtakes audio, except a response's own events, which stay behind its queued audio.
        behind_audio = message.samples or (message.response_id is not None
                                           and any(m.response_id == message.response_id for m in self._data))
        (self._data if behind_audio else self._control).append(message)
        self._ready.set()

    async def _send_loop(self) -> None:
        try:
            while True:
                await self._ready.wait()
                lane = self._control if self._control else self._data
                if not lane:
                    self._ready.clear()
                    continue
                message = lane.popleft()
                self._room.set()
                try:  # a send that cannot finish is a client that stopped reading
                    await asyncio.wait_for(self.websocket.send_text(message.text), self.slow_client_timeout_s)
                except TimeoutError:
                    self._abort(f"client read nothing for {self.slow_client_timeout_s:g} s")
                    return
                if message.item_id is not None:
                    if message.item_id not in self._playout:
                        self._playout = {message.item_id: PlayoutClock()}  # one reply at a time is played
                    self._playout[message.item_id].sent(message.samples * 1000.0 / SAMPLE_RATE)
                self.audio_seconds_sent += message.samples / SAMPLE_RATE
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the client went away mid-send: every producer must learn it
            log.info("sending failed (%s: %s); closing", type(exc).__name__, exc)
            self._shut(f"the connection failed while sending ({type(exc).__name__})")

    def _shut(self, reason: str) -> None:
        if self.closed_reason is None:
            self.closed_reason = reason
        self._room.set()
        self._ready.set()

    def _abort(self, reason: str) -> None:
        """Cut a client that does not read: no close frame can reach it through a full window."""
        log.warning("disconnecting: %s", reason)
        self._shut(reason)
        asyncio.get_running_loop().create_task(close_unresponsive(self.websocket, 1008, reason))


def chosen_subprotocol(offered: list[str]) -> str | None:
    """`realtime` when offered; else the first offered (a browser that offers only its key subprotocol
    refuses a handshake that selects none)."""
    if SUBPROTOCOL in offered:
        return SUBPROTOCOL
    return offered[0] if offered else None


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
                await session.handle_message(message["text"])
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
        services.metrics.audio_seconds_out.inc(output.audio_seconds_sent)
        await output.close()
        if close_code == 1008:
            await close_unresponsive(websocket, close_code, reason)
        else:
            await close_gracefully(websocket, close_code, reason)
        log.info("session closed (%s)", reason or "client left")
