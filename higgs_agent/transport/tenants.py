"""Tenants: who owns a voice. Each API key belongs to one tenant; a voice belongs to the tenant whose key made it.

Keys map to tenants in `transport.auth.Authenticator` (its middleware puts the caller's `Principal` in the
request scope); this module reads the keys file that fills it and names the tenant of a request. Configured
three ways:
- no key (an open server): everyone is the one tenant `default`;
- one key (`--api-key KEY`): that key is the tenant `default`;
- a keys file (`--api-keys FILE`), one `tenant: key` per line. `#` starts a comment line, blank lines are
  skipped, a tenant may have several keys (to rotate one without downtime), a key may appear only once.
  Tenant names are 1-64 of `A-Z a-z 0-9 _ . -`; keys have no whitespace. For example:

      # tenant: key
      acme: sk-acme-7f3a9c
      acme: sk-acme-rotated-21b0
      globex: sk-globex-44d2

  With both, the single key is one more tenant, `default`.
"""

from __future__ import annotations

import re
from pathlib import Path

from starlette.requests import HTTPConnection

from higgs_agent.transport.auth import OPEN_TENANT, Authenticator, principal_of

DEFAULT_TENANT = OPEN_TENANT
_TENANT_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}")


class TenantKeysError(ValueError):
    """Keys that cannot be used; the message names the line."""


def parse_keys(text: str, source: str = "keys file") -> dict[str, str]:
    """The text of a keys file -> {key: tenant}."""
    keys: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        tenant, sep, key = (part.strip() for part in line.partition(":"))
        where = f"{source} line {number}"
        if not sep or not key:
            raise TenantKeysError(f"{where}: expected 'tenant: key'")
        if not _TENANT_NAME.fullmatch(tenant):
            raise TenantKeysError(f"{where}: tenant name {tenant!r} must be 1-64 of A-Z a-z 0-9 _ . -")
        if any(ch.isspace() for ch in key):
            raise TenantKeysError(f"{where}: the key holds whitespace")
        if key in keys:
            raise TenantKeysError(f"{where}: this key is already given to a tenant (each key names one)")
        keys[key] = tenant
    if not keys:
        raise TenantKeysError(f"{source} names no keys")
    return keys


def read_keys_file(path: str | Path) -> dict[str, str]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise TenantKeysError(f"cannot read the keys file {path}: {exc.strerror or exc}") from None
    return parse_keys(text, source=str(path))


def build_authenticator(api_key: str | None = None, keys_file: str | Path | None = None) -> Authenticator:
    """The server's key check from `--api-key` and/or `--api-keys FILE`; neither: an open server."""
    keys = read_keys_file(keys_file) if keys_file is not None else {}
    if api_key:
        if any(ch.isspace() for ch in api_key):
            raise TenantKeysError("the API key holds whitespace")
        if keys.get(api_key, DEFAULT_TENANT) != DEFAULT_TENANT:
            raise TenantKeysError(f"--api-key is also a key of tenant {keys[api_key]!r} in the keys file")
        keys[api_key] = DEFAULT_TENANT
    return Authenticator(keys or None)


def tenant_of(connection: HTTPConnection) -> str | None:
    """The tenant of an HTTP request or WebSocket, as the API-key middleware found it; None without one."""
    principal = principal_of(connection.scope)
    return principal.tenant if principal is not None else None
