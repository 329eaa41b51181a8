"""API-key check for every endpoint (ASGI middleware, so HTTP and WebSocket share it).

Accepted, in order: `Authorization: Bearer KEY`; the query parameter `api_key=KEY` (browsers cannot set
headers on a WebSocket); the WebSocket subprotocol `openai-insecure-api-key.KEY`, which is how OpenAI's
browser SDK passes a key. A missing or wrong key gets a 401 (HTTP) or a refused handshake (WebSocket:
the server answers 403 and never accepts the socket).
"""

from __future__ import annotations

import hmac
import json
from urllib.parse import parse_qs

from starlette.types import ASGIApp, Receive, Scope, Send

SUBPROTOCOL_KEY_PREFIX = "openai-insecure-api-key."


def presented_key(scope: Scope) -> str | None:
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
    auth = headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    if query.get("api_key"):
        return query["api_key"][0]
    for protocol in scope.get("subprotocols", []):
        if protocol.startswith(SUBPROTOCOL_KEY_PREFIX):
            return protocol[len(SUBPROTOCOL_KEY_PREFIX):]
    return None


class ApiKeyMiddleware:
    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self.api_key = api_key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        key = presented_key(scope)
        if key is not None and hmac.compare_digest(key.encode(), self.api_key):
            return await self.app(scope, receive, send)
        reason = "missing API key" if key is None else "invalid API key"
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008, "reason": reason})
            return None
        body = json.dumps({"error": {"type": "invalid_request_error", "code": "invalid_api_key",
                                     "message": f"{reason}: send 'Authorization: Bearer KEY'"}}).encode()
        await send({"type": "http.response.start", "status": 401,
                    "headers": [(b"content-type", b"application/json"), (b"www-authenticate", b"Bearer")]})
        await send({"type": "http.response.body", "body": body})
        return None
