"""uvicorn's WebSocket protocol plus one ASGI extension of ours: `higgs.websocket.abort` drops the connection now.

A peer that stops reading fills the TCP window; then uvicorn's sends, the close frame included, wait for the
buffer to drain, and the transport's `close()` waits for it too: the connection never goes away and the
session behind it is never freed. Aborting the transport is the only way to keep the promise "a client that
stops reading is disconnected within the timeout".

The extension is a callable in the scope (`scope["extensions"]["higgs.websocket.abort"]["abort"]`), not an ASGI
message: Starlette's `WebSocket.send` lets only `websocket.send` / `websocket.close` through once connected,
so a message of our own would never reach the server. Under another server the key is absent and
`abort_connection` says so; callers then fall back to a close with a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Callable, MutableMapping
from typing import Any

from starlette.websockets import WebSocket
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

ABORT_EXTENSION = "higgs.websocket.abort"
CLOSE_GRACE_S = 2.0  # how long a graceful close waits to hand its close frame over
DROP_AFTER_S = 10.0  # a connection still open this long after its close is reset: the slow-client promise


class AbortableWebSocketProtocol(WebSocketsSansIOProtocol):
    async def run_asgi(self) -> None:
        self.scope["extensions"][ABORT_EXTENSION] = {"abort": self._abort}  # type: ignore[index]
        await super().run_asgi()

    def _abort(self) -> None:
        # Even when already closing: a transport that began a close waits for ever to flush its buffer to a
        # peer that does not read (the socket stayed ESTABLISHED); abort drops the buffer and the connection.
        # On a connection already lost it does nothing.
        # And a reset, not a FIN: a plain close leaves the kernel holding the socket in FIN_WAIT1 behind the
        # unsent bytes, probing a zero window for minutes; SO_LINGER 0 makes the close send RST and drop them.
        if self.transport is None:
            return
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError, ValueError):  # ValueError: uvloop's socket whose fd is gone
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.transport.abort()  # connection_lost follows: blocked sends and receives end at once


def abort_connection(scope: MutableMapping[str, Any]) -> bool:
    """Drop the connection of this ASGI scope at once (no close handshake); False when the server cannot."""
    abort: Callable[[], None] | None = scope.get("extensions", {}).get(ABORT_EXTENSION, {}).get("abort")
    if abort is None:
        return False
    abort()
    return True


async def send_text_within(websocket: WebSocket, text: str, timeout_s: float) -> None:
    """`websocket.send_text`, or TimeoutError once it has taken `timeout_s` (a peer that stopped reading).
    asyncio.timeout, not wait_for: wait_for sends from a task of its own, which keeps the exception of a send
    that failed (a peer that went away), whose traceback holds the caller's frame: a cycle that kept the
    connection's output, and through it a call and its session, alive until the cycle collector ran."""
    async with asyncio.timeout(timeout_s):
        await websocket.send_text(text)


async def close_unresponsive(websocket: WebSocket, code: int, reason: str) -> None:
    """Drop the connection now where the server allows it (ours), else try a close frame with a deadline."""
    if abort_connection(websocket.scope):
        return
    with contextlib.suppress(Exception):
        await asyncio.wait_for(websocket.close(code, reason), 1.0)


async def close_gracefully(websocket: WebSocket, code: int = 1000, reason: str = "",
                           grace_s: float = CLOSE_GRACE_S, drop_after_s: float = DROP_AFTER_S) -> None:
    """Send a close frame (waiting at most `grace_s` to hand it over), and make sure the connection is gone
    `drop_after_s` later whatever the peer does: one that reads has long finished the handshake by then (the
    abort finds nothing to do), one that does not is reset instead of being held open for ever by an
    unflushable buffer. Not sooner: a reset makes the peer's kernel drop what it has not read yet, the close
    frame included, and a loaded client may read late."""
    with contextlib.suppress(Exception):
        await asyncio.wait_for(websocket.close(code, reason), grace_s)
    asyncio.get_running_loop().call_later(drop_after_s, abort_connection, websocket.scope)


REALTIME_SUBPROTOCOL = "realtime"


def chosen_subprotocol(offered: list[str]) -> str | None:
    """`realtime` when offered; else the first offered (a browser that offers only its key subprotocol
    refuses a handshake that selects none)."""
    if REALTIME_SUBPROTOCOL in offered:
        return REALTIME_SUBPROTOCOL
    return offered[0] if offered else None
