"""Who is calling: API keys (one tenant per key) checked on every API path, HTTP and WebSocket alike.

Accepted, in order: `Authorization: Bearer KEY`; the query parameter `api_key=KEY` (browsers cannot set
headers on a WebSocket); the WebSocket subprotocol `openai-insecure-api-key.KEY`, which is how OpenAI's
browser SDK passes a key. A missing or wrong key gets a 401 (HTTP) or a refused handshake (WebSocket: the
server answers 403 and never accepts the socket).

Only the API needs a key (`/v1/...`, `/metrics`): the web page and `/health`'s liveness answer anyone (the
health handler shows details to an authenticated caller only); phone webhooks check Twilio's signature instead.
With no key configured, every caller is the one tenant `default`.

Client secrets (`ek_...`, minted by `POST /v1/realtime/client_secrets`) are checked by the `EphemeralKeys`
given to the middleware, on any server, keyed or open: one that is forged or expired is refused like a wrong
key. A valid one acts for the tenant that minted it, and only where a browser needs it: opening a realtime
session (`/v1/realtime`, `/v1/realtime/calls`); everywhere else it is refused.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import parse_qs

from starlette.types import ASGIApp, Receive, Scope, Send

from higgs_agent.defaults import DEFAULT_TENANT

SUBPROTOCOL_KEY_PREFIX = "openai-insecure-api-key."
PROTECTED_PREFIXES = ("/v1/", "/metrics")
OPEN_TENANT = DEFAULT_TENANT
EPHEMERAL_PREFIX = "ek_"
EPHEMERAL_PATHS = frozenset({"/v1/realtime", "/v1/realtime/calls"})  # where a client secret is accepted


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: the tenant its key belongs to. `ephemeral`: it came with a client secret,
    whose `session` config (if any) every session it opens starts with."""

    tenant: str
    ephemeral: bool = False
    session: Mapping[str, Any] | None = field(default=None, compare=False)


class EphemeralKeys(Protocol):
    def principal(self, value: str) -> Principal | None:
        """Who a client secret acts for; None when it is forged or expired."""


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


class Authenticator:
    """Maps keys to tenants. `keys` None or empty: no key is required and everyone is `default`."""

    def __init__(self, keys: dict[str, str] | None = None) -> None:
        self._keys = [(key.encode(), tenant) for key, tenant in (keys or {}).items()]

    @classmethod
    def single(cls, api_key: str | None) -> Authenticator:
        return cls({api_key: OPEN_TENANT} if api_key else None)

    @property
    def required(self) -> bool:
        return bool(self._keys)

    def principal(self, key: str | None) -> Principal | None:
        if not self._keys:
            return Principal(OPEN_TENANT)
        if key is None:
            return None
        match = None
        for known, tenant in self._keys:  # compare against every key: the time taken says nothing
            if hmac.compare_digest(known, key.encode()):
                match = tenant
        return Principal(match) if match is not None else None


def principal_of(scope: Scope) -> Principal | None:
    """Set by `ApiKeyMiddleware` for every request; None when no valid key came with a public path."""
    return scope.get("state", {}).get("principal")


class ApiKeyMiddleware:
    def __init__(self, app: ASGIApp, authenticator: Authenticator, ephemeral: EphemeralKeys | None = None) -> None:
        self.app = app
        self.authenticator = authenticator
        self.ephemeral = ephemeral

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        key = presented_key(scope)
        reason = "missing API key" if key is None else "invalid API key"
        if key is not None and key.startswith(EPHEMERAL_PREFIX) and self.ephemeral is not None:
            principal = self.ephemeral.principal(key)
            if principal is None and self.authenticator.required:  # a configured key that starts with ek_
                principal = self.authenticator.principal(key)
            if principal is None:
                reason = "invalid or expired client secret"
            elif principal.ephemeral and scope["path"] not in EPHEMERAL_PATHS:
                principal, reason = None, "a client secret (ek_...) only opens realtime sessions; use the API key"
        else:
            principal = self.authenticator.principal(key)
        scope.setdefault("state", {})["principal"] = principal
        if principal is not None or not scope["path"].startswith(PROTECTED_PREFIXES):
            return await self.app(scope, receive, send)
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008, "reason": reason})
            return None
        body = json.dumps({"error": {"type": "invalid_request_error", "code": "invalid_api_key", "param": None,
                                     "message": f"{reason}: send 'Authorization: Bearer KEY'"}}).encode()
        await send({"type": "http.response.start", "status": 401,
                    "headers": [(b"content-type", b"application/json"), (b"www-authenticate", b"Bearer")]})
        await send({"type": "http.response.body", "body": body})
        return None
