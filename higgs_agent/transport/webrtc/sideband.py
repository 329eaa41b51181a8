"""Sideband control: `WS /v1/realtime?call_id=ID` attaches a server-side application to a live WebRTC call.

The socket receives every event of the call from the moment it attaches (the same JSON the client's data
channel carries) and may send any client event into it: `session.update`, `response.create`, a tool's
result as `conversation.item.create`. Only the call's own tenant may attach, with its API key (a client
secret cannot: it is the browser's); to anyone else the call does not exist, and the handshake is refused.
Several sockets may attach to one call. A socket that cannot keep up with the call's events is disconnected
(1008) rather than slowing the call down; when the call ends the socket is closed (1000).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque

from starlette.websockets import WebSocket, WebSocketDisconnect

from higgs_agent.logs import session_id
from higgs_agent.transport.auth import principal_of
from higgs_agent.transport.uvicorn_ws import (
    chosen_subprotocol,
    close_gracefully,
    close_unresponsive,
    send_text_within,
)
from higgs_agent.transport.webrtc.calls import CallRegistry

log = logging.getLogger(__name__)
CALL_ID_PARAM = "call_id"


class SidebandLink:
    """One attached socket's way out: a bounded queue of event texts drained by its own task."""

    def __init__(self, websocket: WebSocket, max_messages: int = 512, send_timeout_s: float = 10.0) -> None:
        self.websocket = websocket
        self.max_messages = max_messages
        self.send_timeout_s = send_timeout_s
        self._queue: deque[str] = deque()
        self._ready = asyncio.Event()
        self._close: tuple[int, str] | None = None
        self._sender: asyncio.Task | None = None

    def start(self) -> None:
        self._sender = asyncio.create_task(self._send_loop(), name="sideband-sender")

    def offer(self, text: str) -> None:
        if self._close is not None:
            return
        if len(self._queue) >= self.max_messages:
            self._finish(1008, f"fell {self.max_messages} events behind the call")
            return
        self._queue.append(text)
        self._ready.set()

    def call_ended(self, reason: str) -> None:
        self._finish(1000, f"call ended: {reason}"[:120])

    async def aclose(self) -> None:
        if self._sender is not None:
            self._sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sender

    def _finish(self, code: int, reason: str) -> None:
        if self._close is None:
            self._close = (code, reason)
            if code != 1000:  # cut off now; a normal close first delivers what is queued
                self._queue.clear()
            self._ready.set()

    async def _send_loop(self) -> None:
        try:
            while True:
                await self._ready.wait()
                if self._queue:
                    await send_text_within(self.websocket, self._queue.popleft(), self.send_timeout_s)
                    continue
                if self._close is not None:
                    break
                self._ready.clear()
        except TimeoutError:
            self._close = (1008, f"read nothing for {self.send_timeout_s:g} s")
        except Exception:  # noqa: BLE001 - the socket went away: the receive loop sees it too
            return
        code, reason = self._close or (1000, "")
        log.info("sideband closed: %s", reason)
        if code == 1008:
            await close_unresponsive(self.websocket, code, reason)
        else:
            await close_gracefully(self.websocket, code, reason)


async def sideband_endpoint(websocket: WebSocket, calls: CallRegistry) -> None:
    principal = principal_of(websocket.scope)
    call_id = websocket.query_params.get(CALL_ID_PARAM, "")
    call = calls.get(call_id, principal.tenant) if principal is not None and not principal.ephemeral else None
    if call is None:
        await websocket.close(1008, "no such call")  # before accepting: the client sees a refused handshake
        return
    session_id.set(call.id)
    await websocket.accept(subprotocol=chosen_subprotocol(websocket.scope.get("subprotocols", [])))
    link = SidebandLink(websocket)
    if not call.attach(link):
        await websocket.close(1000, "the call has ended")
        return
    log.info("sideband attached from %s", websocket.client.host if websocket.client else "?")
    link.start()
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                break
            await call.submit(message["text"] if message.get("text") is not None else message.get("bytes") or b"")
    except (WebSocketDisconnect, RuntimeError):  # gone mid-receive
        pass
    finally:
        call.detach(link)
        link.call_ended("sideband left")
        await link.aclose()
