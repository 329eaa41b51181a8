"""Client secrets: short-lived `ek_...` keys a browser holds instead of the real API key (OpenAI's
`POST /v1/realtime/client_secrets`).

A secret is signed, not stored: `ek_` + base64url(JSON {tenant, created_at, expires_at, session, nonce}) +
`.` + base64url(HMAC-SHA256 of everything before the dot, keyed by the server's secret key). So any process
holding the same key (`--client-secret-key`, or a random key per process) checks one without a lookup,
nothing has to be cleaned up when it expires, and minting many cannot grow the server's memory. The price:
one cannot be revoked before it expires, as with OpenAI's (at most two hours). As OpenAI documents, a secret
may open several sessions until it expires, and a session it opened outlives it. Its tenant is the tenant
of the key that minted it; its `session` config is applied to every session it opens.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from higgs_agent.transport.auth import Principal
from higgs_agent.transport.signing import Signer

PREFIX = "ek_"
DEFAULT_SECONDS = 600  # OpenAI's default lifetime
MIN_SECONDS = 10  # and its bounds
MAX_SECONDS = 7200
MAX_SESSION_BYTES = 8192  # the session rides in the key, and keys ride in HTTP headers


@dataclass(frozen=True)
class ClientSecret:
    value: str
    tenant: str
    created_at: int
    expires_at: int
    session: Mapping[str, Any] | None


class SessionTooLargeError(ValueError):
    """A session config too large to carry in a key."""


class ClientSecrets:
    """Mints and checks `ek_` keys with one server key (random when none is given: keys then die with the
    process, which suits keys that live minutes)."""

    def __init__(self, key: bytes | None = None, clock: Callable[[], float] = time.time) -> None:
        self._signer = Signer(key)
        self._clock = clock

    def mint(self, tenant: str, seconds: int = DEFAULT_SECONDS, session: Mapping[str, Any] | None = None,
             created_at: int | None = None) -> ClientSecret:
        if session is not None and len(json.dumps(session)) > MAX_SESSION_BYTES:
            raise SessionTooLargeError(f"the session config is over {MAX_SESSION_BYTES} bytes: too large to carry "
                                       "in a client secret; send the rest with session.update once connected")
        created = int(self._clock()) if created_at is None else created_at
        payload = {"tenant": tenant, "created_at": created, "expires_at": created + seconds,
                   "session": dict(session) if session is not None else None, "nonce": secrets.token_hex(8)}
        value = self._signer.dumps(PREFIX, payload)
        return ClientSecret(value, tenant, created, created + seconds, payload["session"])

    def verify(self, value: str) -> ClientSecret | None:
        """The secret, or None when it is not one of ours, was altered, or has expired."""
        payload = self._signer.loads(PREFIX, value)
        if payload is None:
            return None
        try:
            secret = ClientSecret(value, str(payload["tenant"]), int(payload["created_at"]),
                                  int(payload["expires_at"]), payload.get("session"))
        except (KeyError, TypeError, ValueError):
            return None
        return secret if self._clock() < secret.expires_at else None

    def principal(self, value: str) -> Principal | None:
        """For the API-key middleware: who a presented `ek_` key acts for."""
        secret = self.verify(value)
        if secret is None:
            return None
        return Principal(secret.tenant, ephemeral=True, session=secret.session)
