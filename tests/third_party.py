"""Helpers for driving third-party OpenAI Realtime clients against the real server.

`WireTap` is a transparent WebSocket relay between a client library and the server that records every JSON
frame both ways, so a test can check what a library sent and what reached it, and a failure can show the
trace. `server_event_shape_errors` checks one server event against openai-python's own pydantic models of
the Realtime server events: the exact shape a client written against the SDK expects.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args

import numpy as np
import pydantic
import websockets
from openai.types.realtime import RealtimeServerEvent
from speech import pad, synthesize

from higgs_agent.audio import float_to_pcm16

EXTENSION_PREFIX = "higgs."  # our own events and fields; standard clients must never need them
EXTENSION_FIELD = "higgs"  # the one key of ours allowed inside a standard event (opt-in settings)
# Sent by OpenAI's own server in session.created / session.updated (see the OpenAPI spec's session object) but
# absent from the SDK's model of them, which reuses the session.update request type.
API_FIELDS_NOT_IN_SDK = {"session.id", "session.object", "session.expires_at"}


# --- recording the wire -------------------------------------------------------------------------------


@dataclass
class TappedConnection:
    """One client connection through the tap: the upgrade request and every JSON frame, in order."""

    path: str
    headers: dict[str, str]
    sent: list[dict[str, Any]] = field(default_factory=list)  # client -> server
    received: list[dict[str, Any]] = field(default_factory=list)  # server -> client
    close_code: int | None = None

    def received_of(self, kind: str) -> list[dict[str, Any]]:
        return [event for event in self.received if event.get("type") == kind]

    def sent_of(self, kind: str) -> list[dict[str, Any]]:
        return [event for event in self.sent if event.get("type") == kind]

    def save(self) -> None:
        """With $HIGGS_WIRE_TRACE_DIR set, keep the whole exchange there as JSON (one file per connection)."""
        folder = os.environ.get("HIGGS_WIRE_TRACE_DIR")
        if folder:
            path = Path(folder) / f"{time.strftime('%H%M%S')}-{uuid.uuid4().hex[:6]}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"path": self.path, "headers": self.headers, "sent": self.sent,
                                        "received": self.received, "close_code": self.close_code}, indent=1))

    def trace(self, limit: int = 80) -> str:
        """What the client sent, then what it got, audio events left out: for failure messages."""
        out = [">> " + json.dumps(e)[:400] for e in self.sent if e.get("type") != "input_audio_buffer.append"]
        out += ["<< " + json.dumps(e)[:400] for e in self.received if e.get("type") != "response.output_audio.delta"]
        return "\n".join(out[:limit])


class WireTap:
    """A WebSocket relay on 127.0.0.1 in front of the agent server. A library pointed at `http_base` (or
    `ws_base`) reaches the server with the same path, query and Authorization header it sent; the tap
    forwards every frame untouched and keeps a JSON copy of each in `connections`."""

    def __init__(self, server_http_base: str) -> None:
        self.upstream = server_http_base.replace("http://", "ws://", 1)
        self.connections: list[TappedConnection] = []
        self._server: Any = None

    @property
    def http_base(self) -> str:
        host, port = self._server.sockets[0].getsockname()[:2]
        return f"http://{host}:{port}"

    @property
    def ws_base(self) -> str:
        return self.http_base.replace("http://", "ws://", 1)

    async def __aenter__(self) -> WireTap:
        self._server = await websockets.serve(self._relay, "127.0.0.1", 0, max_size=None)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        await self._server.wait_closed()

    def last(self) -> TappedConnection:
        assert self.connections, "no client connected through the tap"
        return self.connections[-1]

    async def _relay(self, downstream: websockets.ServerConnection) -> None:
        request = downstream.request
        record = TappedConnection(path=request.path, headers={k.lower(): v for k, v in request.headers.raw_items()})
        self.connections.append(record)
        forwarded = {k: v for k, v in record.headers.items() if k in ("authorization", "user-agent")}
        try:
            upstream = await websockets.connect(self.upstream + request.path, additional_headers=forwarded,
                                                max_size=None)
        except (websockets.InvalidStatus, websockets.InvalidHandshake, OSError) as exc:
            record.close_code = 1008
            await downstream.close(1008, f"upstream refused: {exc}"[:120])
            return
        try:
            async with upstream:
                pumps = [asyncio.create_task(self._pump(downstream, upstream, record.sent)),
                         asyncio.create_task(self._pump(upstream, downstream, record.received))]
                await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
                for pump in pumps:  # one side closed: stop relaying the other
                    pump.cancel()
                await asyncio.gather(*pumps, return_exceptions=True)
                record.close_code = upstream.close_code or downstream.close_code
            await downstream.close()
        finally:
            record.save()

    @staticmethod
    async def _pump(source: Any, sink: Any, log: list[dict[str, Any]]) -> None:  # noqa: ANN401
        with contextlib.suppress(websockets.ConnectionClosed):
            async for message in source:
                if isinstance(message, str):
                    try:
                        log.append(json.loads(message))
                    except json.JSONDecodeError:
                        log.append({"type": "<not json>", "raw": message[:200]})
                await sink.send(message)


# --- speech -------------------------------------------------------------------------------------------


def spoken_pcm16(text: str, rate: int = 24_000, lead_ms: int = 300, tail_ms: int = 1200) -> bytes:
    """espeak-ng speech with silence around it (the tail lets the server VAD end the turn), as PCM16."""
    audio, _ = synthesize(text, sample_rate=rate)
    return float_to_pcm16(pad(audio, rate, lead_ms=lead_ms, tail_ms=tail_ms))


async def paced_chunks(pcm: bytes, rate: int = 24_000, chunk_ms: int = 100) -> AsyncIterator[bytes]:
    """PCM16 mono in `chunk_ms` pieces at real-time pace, as a microphone delivers it."""
    step = rate * chunk_ms // 1000 * 2
    loop = asyncio.get_running_loop()
    start = loop.time()
    for index, offset in enumerate(range(0, len(pcm), step)):
        delay = start + index * chunk_ms / 1000 - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        yield pcm[offset:offset + step]


def pcm16_samples(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype="<i2")


# --- the exact shape of server events -----------------------------------------------------------------


def _server_event_models() -> dict[str, type[pydantic.BaseModel]]:
    union = get_args(RealtimeServerEvent)[0]  # Annotated[Union[...], PropertyInfo(discriminator="type")]
    return {get_args(model.model_fields["type"].annotation)[0]: model for model in get_args(union)}


SERVER_EVENT_MODELS = _server_event_models()


def _unknown_fields(value: Any, path: str) -> Iterator[str]:  # noqa: ANN401
    """Keys the SDK's models do not declare (they accept and keep them as extras), with dotted paths."""
    if isinstance(value, pydantic.BaseModel):
        for key in value.model_extra or {}:
            if key != EXTENSION_FIELD:
                yield f"{path}.{key}" if path else key
        for name in type(value).model_fields:
            yield from _unknown_fields(getattr(value, name), f"{path}.{name}" if path else name)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _unknown_fields(item, f"{path}.{index}")


def server_event_shape_errors(event: dict[str, Any]) -> list[str]:
    """What in one server event differs from openai-python's model of it: an unknown type, a missing or
    mistyped field (pydantic's words), or a field the model does not have. Empty when it matches."""
    kind = event.get("type")
    model = SERVER_EVENT_MODELS.get(kind)  # type: ignore[arg-type]
    if model is None:
        return [f"{kind}: not a server event type the SDK knows"]
    try:
        parsed = model.model_validate(event)
    except pydantic.ValidationError as exc:
        return [f"{kind}: {'.'.join(str(p) for p in err['loc'])}: {err['msg']} (got {err.get('input')!r:.80})"
                for err in exc.errors()]
    return [f"{kind}: unknown field {name}" for name in _unknown_fields(parsed, "")
            if name not in API_FIELDS_NOT_IN_SDK]


# --- errors a library reports -------------------------------------------------------------------------


def describe_error(error: Any) -> str:  # noqa: ANN401 - whatever a library hands its error callbacks
    """A short account of a library's error object; for a pydantic failure, which event and field failed."""
    if isinstance(error, pydantic.ValidationError):
        return "; ".join(f"{(err['input'] if isinstance(err['input'], dict) else {}).get('type', '?')!r} event: "
                         f"{'.'.join(map(str, err['loc']))}: {err['msg'][:160]}" for err in error.errors())[:600]
    return repr(error)[:600]


class ErrorLogs(logging.Handler):
    """Collects ERROR records of the named standard-library loggers while installed (`with ErrorLogs(...)`)."""

    def __init__(self, *logger_names: str) -> None:
        super().__init__(level=logging.ERROR)
        self.logger_names = logger_names
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def messages(self) -> list[str]:
        return [f"{r.name}: {r.getMessage()}"[:600] for r in self.records]

    def __enter__(self) -> ErrorLogs:
        for name in self.logger_names:
            logging.getLogger(name).addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        for name in self.logger_names:
            logging.getLogger(name).removeHandler(self)
