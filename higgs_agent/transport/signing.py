"""Signed, self-contained tokens: PREFIX + base64url(JSON payload) + "." + base64url(HMAC-SHA256 of what precedes
the dot). Any process holding the same key checks one without a lookup (so a token minted by one agent is good
on another behind the same load balancer), and nothing is stored. Used for client secrets (`ek_...`) and for a
phone call's media-stream token (the webhook answered by one agent, the stream arriving at another)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
from typing import Any


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Signer:
    """One key (random when none is given: its tokens then die with the process)."""

    def __init__(self, key: bytes | None = None) -> None:
        self._key = key or secrets.token_bytes(32)

    def dumps(self, prefix: str, payload: dict[str, Any]) -> str:
        signed = prefix + _b64(json.dumps(payload, separators=(",", ":"), sort_keys=True).encode())
        return f"{signed}.{_b64(self._sign(signed))}"

    def loads(self, prefix: str, value: str) -> dict[str, Any] | None:
        """The payload, or None when the token is not ours or was altered (expiry is the caller's to check)."""
        if not value.startswith(prefix) or value.count(".") != 1:
            return None
        signed, _, signature = value.partition(".")
        try:
            given = _unb64(signature)
            payload = json.loads(_unb64(signed[len(prefix):]))
        except (binascii.Error, ValueError):
            return None
        if not hmac.compare_digest(given, self._sign(signed)) or not isinstance(payload, dict):
            return None
        return payload

    def _sign(self, signed: str) -> bytes:
        return hmac.new(self._key, signed.encode("ascii"), hashlib.sha256).digest()
