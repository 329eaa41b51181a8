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

from collections.abc import Callable, MutableMapping
from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

ABORT_EXTENSION = "higgs.websocket.abort"


class AbortableWebSocketProtocol(WebSocketsSansIOProtocol):
    async def run_asgi(self) -> None:
        self.scope["extensions"][ABORT_EXTENSION] = {"abort": self._abort}  # type: ignore[index]
        await super().run_asgi()

    def _abort(self) -> None:
        if not self.transport.is_closing():
            self.transport.abort()  # connection_lost follows: blocked sends and receives end at once


def abort_connection(scope: MutableMapping[str, Any]) -> bool:
    """Drop the connection of this ASGI scope at once (no close handshake); False when the server cannot."""
    abort: Callable[[], None] | None = scope.get("extensions", {}).get(ABORT_EXTENSION, {}).get("abort")
    if abort is None:
        return False
    abort()
    return True
