"""`/v1/realtime` over WebSocket: moves JSON text frames between a client and a `Session`, nothing more.

Outgoing messages go through a bounded outbox drained by one sender task. A client that stops reading
fills it; then the session's sends wait, and if the outbox stays full for `slow_client_timeout_s` the
connection is closed (1008): a slow reader costs bounded memory. Barge-in drops reply audio still in the
outbox, so a listener who interrupted does not keep hearing queued speech.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from starlette.websockets import WebSocket, WebSocketDisconnect

from higgs_agent import SAMPLE_RATE
from higgs_agent.agent.events import ProtocolError, server_event
from higgs_agent.agent.playout import PlayoutClock
from higgs_agent.agent.services import AgentServices
from higgs_agent.agent.session import Session
from higgs_agent.audio_formats import AudioFormat, StreamResampler, encode_audio

log = logging.getLogger(__name__)
SUBPROTOCOL = "realtime"


class ClientTooSlow(Exception):
    """The client has not read its messages for too long."""


@dataclass
class _Outgoing:
    text: str
    item_id: str | None = None
    samples: int = 0  # reply audio (24 kHz samples) in this message


class WebSocketOutput:
    """The session's output on a WebSocket: events as JSON, audio as `response.output_audio.delta`."""

    def __init__(self, websocket: WebSocket, output_format: Callable[[], AudioFormat], max_messages: int = 256,
                 slow_client_timeout_s: float = 10.0) -> None:
        self.websocket = websocket
        self.output_format = output_format
        self.max_messages = max_messages
        self.slow_client_timeout_s = slow_client_timeout_s
        self._queue: deque[_Outgoing] = deque()
        self._changed = asyncio.Condition()
        self._closed = False
        self._sender: asyncio.Task | None = None
        self.audio_seconds_sent = 0.0
        self._playout: dict[str, PlayoutClock] = {}  # per reply item: what the listener has heard
        self._resampler: tuple[tuple[str, int], StreamResampler] | None = None

    def start(self) -> None:
        self._sender = asyncio.create_task(self._send_loop())

    async def close(self) -> None:
        self._closed = True
        if self._sender is not None:
            self._sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._sender

    async def send_event(self, event: dict[str, Any]) -> None:
        await self._put(_Outgoing(json.dumps(event)))

    async def send_audio(self, response_id: str, item_id: str, samples: np.ndarray) -> None:
        fmt = self.output_format()
        if self._resampler is None or self._resampler[0] != (item_id, fmt.rate):
            self._resampler = ((item_id, fmt.rate), StreamResampler(SAMPLE_RATE, fmt.rate))
        wire = self._resampler[1].push(samples)  # phone formats are 8 kHz; filter state spans the chunks
        delta = base64.b64encode(encode_audio(wire, fmt)).decode("ascii")
        event = server_event("response.output_audio.delta", response_id=response_id, item_id=item_id,
                             output_index=0, content_index=0, delta=delta)
        await self._put(_Outgoing(json.dumps(event), item_id=item_id, samples=len(samples)))

    def heard_ms(self, item_id: str) -> float:
        clock = self._playout.get(item_id)
        return 0.0 if clock is None else clock.heard_ms()

    def discard_audio(self, item_id: str) -> int:
        kept = [m for m in self._queue if m.item_id != item_id]
        dropped = sum(m.samples for m in self._queue if m.item_id == item_id)
        self._queue = deque(kept)
        return dropped

    async def _put(self, message: _Outgoing) -> None:
        if self._closed:
            return  # the client is gone; the session is winding down
        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(lambda: len(self._queue) < self.max_messages
                                                              or self._closed),
                                       self.slow_client_timeout_s)
            except TimeoutError:
                self._closed = True
                reason = f"client read nothing for {self.slow_client_timeout_s:.0f} s"
                asyncio.get_running_loop().create_task(self._close_socket(1008, reason))
                raise ClientTooSlow(reason) from None
            self._queue.append(message)
            self._changed.notify_all()

    async def _close_socket(self, code: int, reason: str) -> None:
        with contextlib.suppress(Exception):
            await self.websocket.close(code, reason)

    async def _send_loop(self) -> None:
        while True:
            async with self._changed:
                await self._changed.wait_for(lambda: bool(self._queue))
                message = self._queue.popleft()
                self._changed.notify_all()
            await self.websocket.send_text(message.text)
            if message.item_id is not None:
                if message.item_id not in self._playout:
                    self._playout = {message.item_id: PlayoutClock()}  # one reply at a time is played
                self._playout[message.item_id].sent(message.samples * 1000.0 / SAMPLE_RATE)
            self.audio_seconds_sent += message.samples / SAMPLE_RATE


async def realtime_endpoint(websocket: WebSocket, services: AgentServices) -> None:
    offered = websocket.scope.get("subprotocols", [])
    await websocket.accept(subprotocol=SUBPROTOCOL if SUBPROTOCOL in offered else None)
    session: Session | None = None
    output = WebSocketOutput(websocket, lambda: session.config.output_format,
                             slow_client_timeout_s=services.slow_client_timeout_s)
    session = Session(services, output)
    output.start()
    close_code, reason = 1000, ""
    try:
        await session.open()
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
        log.warning("closing %s: %s", session.config.id, exc)
        close_code, reason = 1008, str(exc)
    except (WebSocketDisconnect, RuntimeError):  # the client vanished mid-send
        pass
    finally:
        await session.close()
        services.metrics.audio_seconds_out.inc(output.audio_seconds_sent)
        await output.close()
        with contextlib.suppress(Exception):
            await websocket.close(close_code, reason)
