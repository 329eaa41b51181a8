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
    data = json.loads(raw, parse_constant=_no_constant)
    _check_unicode(data)
    return data


def _check_unicode(value: object) -> None:
    """JSON lets a string escape a lone UTF-16 surrogate (`"\\ud800"`); Python decodes it into a str that no
    UTF-8 encoder takes, so echoing it back (an error naming the bad type, an id) would fail the send. Such a
    message is not valid Unicode: refused here (a ValueError, like any other invalid JSON)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("a string holds a lone UTF-16 surrogate escape (such as \\ud800): not valid "
                             "Unicode") from None
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_unicode(key)
            _check_unicode(item)
    elif isinstance(value, list):
        for item in value:
            _check_unicode(item)
