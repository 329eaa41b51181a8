"""A local OpenAI-compatible chat-completions server for tests and offline benchmarks: scripted replies,
streamed in small deltas.

    with FakeLLM(reply="Hello there. Bye.", chunk_chars=3) as llm:
        responder = LLMResponder(llm.base_url, model="fake")
        ...
        llm.requests[-1]["messages"]  # what the client sent

It runs uvicorn on 127.0.0.1 (a free port) in a background thread with its own event loop, so tests on any
loop can talk to it. Knobs (set them before the request they should affect):
- `reply`, `chunk_chars`, `delay_s`: what is streamed, in deltas of how many characters, how far apart;
- `hold_at`: stop streaming once that many reply characters went out, until `release()`; `holding` is set
  while it waits. This proves a client acted on part of a reply without timing anything;
- `fail_status` / `fail_message`: answer with that HTTP status and an OpenAI error body instead;
- `api_key`: when set, a request without `Authorization: Bearer <api_key>` gets a 401 like OpenAI's;
- `malformed`: send an event that is not JSON after the first delta;
- `script`: stream this raw text as the whole response body instead (SSE edge cases);
- `ignore_stream`: answer with one JSON `chat.completion`, as servers that cannot stream do;
- `turns`: scripted answers, one `Turn` per request (first in, first out; `reply` again once they run out).
  A turn is words, then function calls, then more words, streamed as OpenAI streams them: each call's first
  piece `{index, id, type: "function", function: {name, arguments: ""}}`, then its arguments in
  `chunk_chars` fragments `{index, function: {arguments}}`, calls one after another by `index`, and
  `finish_reason: "tool_calls"` when there were calls. A `ToolCall` with `id=None` is sent without an id.
What happened to the latest request: `requests` / `headers` (all of them: a test checks that tools and
function outputs reached the model), `sent_chars`, and the events `completed` (the whole reply and [DONE]
went out) and `disconnected` (the client left before that).
Requests without `"stream": true` get a 400: this fake only streams.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

DEFAULT_REPLY = "Hello there, it is nice to hear from you. How can I help today? Ask me anything."


@dataclass
class ToolCall:
    """A function call the fake model makes: `arguments` is sent as is (valid JSON or not)."""

    name: str
    arguments: str = "{}"
    id: str | None = field(default_factory=lambda: f"call_{uuid.uuid4().hex[:12]}")


@dataclass
class Turn:
    """One scripted answer: `text`, then `tool_calls`, then `text_after`."""

    text: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    text_after: str = ""


def error_body(message: str, kind: str, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


class FakeLLM:
    def __init__(self, reply: str = DEFAULT_REPLY, chunk_chars: int = 3, delay_s: float = 0.0) -> None:
        self.reply = reply
        self.chunk_chars = chunk_chars
        self.delay_s = delay_s
        self.hold_at: int | None = None
        self.fail_status: int | None = None
        self.fail_message = "The server had an error while processing your request."
        self.api_key: str | None = None
        self.malformed = False
        self.script: str | None = None
        self.ignore_stream = False
        self.turns: list[Turn] = []
        self.echo = False  # answer with the request's last user message instead of `reply` (an interpreter's
        # stand-in whose "translation" is as long as what it was given)
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.sent_chars = 0
        self.completed = threading.Event()
        self.disconnected = threading.Event()
        self.holding = threading.Event()
        self._release = threading.Event()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None
        self.app = Starlette(routes=[Route("/v1/chat/completions", self._chat, methods=["POST"])])

    @property
    def port(self) -> int:
        if self._sock is None:
            raise RuntimeError("the fake LLM server is not running")
        return self._sock.getsockname()[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def release(self) -> None:
        """Let a held stream go on to the end."""
        self._release.set()

    def start(self) -> FakeLLM:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        config = uvicorn.Config(self.app, log_level="warning", lifespan="off", access_log=False,
                                timeout_graceful_shutdown=1)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]},
                                        name="fake-llm", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the fake LLM server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._release.set()
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._sock is not None:
            self._sock.close()
        self._server = self._thread = None

    def __enter__(self) -> FakeLLM:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    async def _chat(self, request: Request) -> Response:
        try:
            body = await request.json()
        except ValueError:
            return JSONResponse(error_body("The body is not valid JSON.", "invalid_request_error"), status_code=400)
        self.requests.append(body)
        self.headers.append({k.lower(): v for k, v in request.headers.items()})
        self.sent_chars = 0
        self.completed.clear()
        self.disconnected.clear()
        self.holding.clear()
        self._release.clear()
        if self.api_key is not None and request.headers.get("authorization") != f"Bearer {self.api_key}":
            return JSONResponse(error_body("Incorrect API key provided.", "invalid_request_error",
                                           "invalid_api_key"), status_code=401)
        if self.fail_status is not None:
            return JSONResponse(error_body(self.fail_message, "server_error"), status_code=self.fail_status)
        if not body.get("stream"):
            return JSONResponse(error_body("This fake server only streams: set stream to true.",
                                           "invalid_request_error"), status_code=400)
        turn = self.turns.pop(0) if self.turns else Turn(_last_user_text(body) if self.echo else self.reply)
        if self.ignore_stream:
            text = turn.text + turn.text_after
            self.sent_chars = len(text)
            self.completed.set()
            message: dict[str, Any] = {"role": "assistant", "content": text or None}
            if turn.tool_calls:
                message["tool_calls"] = [{"id": call.id, "type": "function",
                                          "function": {"name": call.name, "arguments": call.arguments}}
                                         for call in turn.tool_calls]
            return JSONResponse({"id": "chatcmpl-fake", "object": "chat.completion", "model": body.get("model"),
                                 "choices": [{"index": 0, "message": message,
                                              "finish_reason": "tool_calls" if turn.tool_calls else "stop"}]})
        if self.script is not None:
            return StreamingResponse(iter([self.script]), media_type="text/event-stream")
        return StreamingResponse(self._events(str(body.get("model", "fake")), turn), media_type="text/event-stream")

    def _pieces(self, text: str) -> list[str]:
        return [text[i:i + self.chunk_chars] for i in range(0, len(text), self.chunk_chars)]

    async def _events(self, model: str, turn: Turn):
        def event(delta: dict[str, Any], finish: str | None = None) -> str:
            chunk = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": int(time.time()),
                     "model": model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            return f"data: {json.dumps(chunk)}\n\n"

        async def words(text: str):
            for n, piece in enumerate(self._pieces(text)):
                while self.hold_at is not None and self.sent_chars >= self.hold_at and not self._release.is_set():
                    self.holding.set()
                    await asyncio.sleep(0.005)
                if self.delay_s:
                    await asyncio.sleep(self.delay_s)
                yield event({"content": piece})
                self.sent_chars += len(piece)
                if self.malformed and n == 0:
                    yield "data: {this is not json\n\n"

        try:
            yield event({"role": "assistant", "content": ""})
            async for line in words(turn.text):
                yield line
            for index, call in enumerate(turn.tool_calls):
                first: dict[str, Any] = {"index": index, "type": "function",
                                         "function": {"name": call.name, "arguments": ""}}
                if call.id is not None:
                    first["id"] = call.id
                yield event({"tool_calls": [first]})
                for piece in self._pieces(call.arguments):
                    if self.delay_s:
                        await asyncio.sleep(self.delay_s)
                    yield event({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})
            async for line in words(turn.text_after):
                yield line
            yield event({}, finish="tool_calls" if turn.tool_calls else "stop")
            yield "data: [DONE]\n\n"
            self.completed.set()
        finally:
            if not self.completed.is_set():
                self.disconnected.set()


def _last_user_text(body: dict[str, Any]) -> str:
    messages = [m for m in body.get("messages") or [] if isinstance(m, dict) and m.get("role") == "user"]
    content = messages[-1].get("content") if messages else None
    return content if isinstance(content, str) and content.strip() else DEFAULT_REPLY
