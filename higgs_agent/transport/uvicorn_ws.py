"""uvicorn's WebSocket protocol plus one ASGI message of ours: `higgs.websocket.abort` drops the connection now.

A peer that stops reading fills the TCP window; then uvicorn's sends, the close frame included, wait for the
buffer to drain, and the transport's `close()` waits for it too: the connection never goes away and the
session behind it is never freed. Aborting the transport is the only way to keep the promise "a client that
stops reading is disconnected within the timeout". The app knows the message is there from the scope's
`extensions` (`ABORT_EXTENSION`); under another server it falls back to a close with a timeout.
"""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

ABORT_EXTENSION = "higgs.websocket.abort"


class AbortableWebSocketProtocol(WebSocketsSansIOProtocol):
    async def run_asgi(self) -> None:
        self.scope["extensions"][ABORT_EXTENSION] = {}  # type: ignore[index]
        await super().run_asgi()

    async def send(self, message: Any) -> None:  # noqa: ANN401 - an ASGI message
        if message["type"] == ABORT_EXTENSION:
            self.transport.abort()  # connection_lost follows: blocked sends and receives end at once
            return
        await super().send(message)
