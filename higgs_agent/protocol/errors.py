"""A client message the server cannot act on: it becomes an `error` event, and the session goes on."""

from __future__ import annotations

import json
import uuid


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:20]}"


class ProtocolError(Exception):
    """`code` and `param` (the path of the offending field) say exactly what is wrong; `type` is
    `invalid_request_error` for a client's mistake, `server_error` only for ours."""

    def __init__(self, code: str, message: str, *, param: str | None = None, event_id: str | None = None,
                 type: str = "invalid_request_error") -> None:  # noqa: A002 - the protocol's field name
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param
        self.event_id = event_id
        self.type = type


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON (RFC 8259 has no NaN or Infinity)")


def loads_strict(raw: str | bytes) -> object:
    """`json.loads` without Python's extensions: `NaN`, `Infinity` and `-Infinity` are refused, as every
    other JSON parser (a browser's, OpenAI's) refuses them, instead of becoming floats nothing can handle."""
    return json.loads(raw, parse_constant=_no_constant)
