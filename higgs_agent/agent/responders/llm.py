"""`llm`: reply text and function calls from any OpenAI-compatible chat-completions endpoint, streamed.

`POST {base_url}/chat/completions` with `"stream": true`, the whole conversation (function calls and outputs
included, in the shape the endpoint requires: `tools.chat_history.well_formed`) and, when the request has
tools, `tools` / `tool_choice`; the answer is a server-sent-event stream of `data: {chunk}` lines ending with
`data: [DONE]`. Each text delta goes through a `PhraseSplitter`, and a phrase is yielded the moment it is
complete, so speech starts long before the model has finished writing. `delta.tool_calls` pieces become
function-call events (`responders.assembly.ReplyAssembler`, shared with `local`); words before a call are
flushed as a phrase first, so the reply keeps the model's order. `base_url` is the API base *including* the
version path, as OpenAI clients take it: `https://api.openai.com/v1`, `http://127.0.0.1:8000/v1` (vLLM,
llama.cpp, Ollama's `/v1`).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import httpx

from higgs_agent.agent.responders.assembly import ReplyAssembler
from higgs_agent.agent.responders.base import ReplyEvent, ReplyRequest, ResponderError
from higgs_agent.agent.tools.calls import MalformedToolCall
from higgs_agent.agent.tools.chat_history import well_formed

log = logging.getLogger(__name__)
_ADVICE = {
    401: " Check the API key.",
    403: " Check the API key and its permissions.",
    404: " Check the base URL (the API base including /v1) and the model name.",
    429: " The endpoint is rate-limiting or out of quota.",
}


class SSEParser:
    """Server-sent events, line by line: returns an event's data when a blank line ends the event."""

    def __init__(self) -> None:
        self._data: list[str] = []

    def line(self, line: str) -> str | None:
        if not line:
            return self.end()
        if line.startswith(":"):  # a comment (keep-alive)
            return None
        name, _, value = line.partition(":")
        if name == "data":
            self._data.append(value[1:] if value.startswith(" ") else value)
        return None  # event:, id:, retry: carry nothing we use

    def end(self) -> str | None:
        """End of the current event (also at the end of the stream)."""
        if not self._data:
            return None
        data, self._data = "\n".join(self._data), []
        return data


class LLMResponder:
    """Streams replies from an OpenAI-compatible endpoint. Holds one HTTP connection pool; `aclose()` it."""

    name = "llm"
    supports_tools = True

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        timeout_s: float = 30.0,
        min_chars: int = 24,
        max_chars: int = 160,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"the LLM base URL must start with http:// or https://, got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.url = f"{self.base_url}/chat/completions"
        self.model = model
        self.api_key = api_key
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.timeout_s = timeout_s
        self.min_chars = min_chars
        self.max_chars = max_chars
        self._client: httpx.AsyncClient | None = None
        self._client_loop: asyncio.AbstractEventLoop | None = None

    def request_body(self, request: ReplyRequest) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "messages": well_formed(request.messages), "stream": True}
        if request.tools:
            body["tools"] = [tool.to_chat_tool() for tool in request.tools]
            body["tool_choice"] = request.tool_choice.to_chat()
            if request.parallel_tool_calls is not None:
                body["parallel_tool_calls"] = request.parallel_tool_calls
        if self.temperature is not None:
            body["temperature"] = self.temperature
        if self.max_tokens is not None:
            body["max_tokens"] = self.max_tokens
        return body

    async def reply(self, request: ReplyRequest) -> AsyncIterator[ReplyEvent]:
        reply = ReplyAssembler(request, self.min_chars, self.max_chars)
        headers = {"Accept": "text/event-stream"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        try:
            async with self._http().stream("POST", self.url, json=self.request_body(request),
                                           headers=headers) as response:
                if response.status_code >= 400:
                    await response.aread()
                    raise ResponderError(self._status_error(response))
                kind = response.headers.get("content-type", "")
                if "text/event-stream" in kind:
                    deltas = self._stream_deltas(response)
                elif "json" in kind:  # an endpoint that ignores "stream": the whole message at once
                    await response.aread()
                    deltas = _once(self._message_delta(response))
                else:
                    raise ResponderError(f"the LLM endpoint {self.url} answered with content type {kind!r}, "
                                         f"not a chat-completions event stream")
                async with aclosing(deltas):
                    async for text, pieces in deltas:
                        for event in reply.text(text) + reply.pieces(pieces):
                            yield event
            for event in reply.finish():
                yield event
        except MalformedToolCall as exc:
            raise ResponderError(f"malformed tool call from the LLM endpoint {self.url}: {exc}") from None
        except httpx.ConnectError as exc:
            raise ResponderError(f"cannot connect to the LLM endpoint {self.url} ({_reason(exc)}). Is the server "
                                 f"running, and is the base URL right?") from exc
        except httpx.TimeoutException as exc:
            raise ResponderError(f"the LLM endpoint {self.url} did not answer within {self.timeout_s:g} s "
                                 f"({type(exc).__name__})") from exc
        except httpx.HTTPError as exc:
            raise ResponderError(f"the connection to the LLM endpoint {self.url} failed mid-reply "
                                 f"({type(exc).__name__}: {_reason(exc)})") from exc

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None and self._client_loop is asyncio.get_running_loop():
            await client.aclose()
        # A client from another (by now closed) loop has nothing left to close: its connections died with it.

    def _http(self) -> httpx.AsyncClient:
        """One pooled client per event loop (its connections belong to the loop that opened them)."""
        loop = asyncio.get_running_loop()
        if self._client is None or self._client_loop is not loop or self._client.is_closed:
            self._client = httpx.AsyncClient(timeout=httpx.Timeout(self.timeout_s))
            self._client_loop = loop
        return self._client

    async def _stream_deltas(self, response: httpx.Response) -> AsyncIterator[tuple[str, list[Any]]]:
        """(content text, tool_calls pieces) of the first choice, per event. Raises ResponderError on a
        malformed stream, an error event, or a stream that ends before `[DONE]` or a finish reason."""
        parser = SSEParser()
        done = finished = False
        lines = response.aiter_lines()
        try:
            async for line in lines:
                data = parser.line(line)
                if data is None or done:
                    continue
                if data.strip() == "[DONE]":
                    done = True
                    continue
                text, pieces, finish = self._chunk_delta(data)
                finished = finished or finish
                if text or pieces:
                    yield text, pieces
            data = parser.end()
            if data is not None and not done:
                if data.strip() == "[DONE]":
                    done = True
                else:
                    text, pieces, finish = self._chunk_delta(data)
                    finished = finished or finish
                    if text or pieces:
                        yield text, pieces
        finally:
            await lines.aclose()
        if not (done or finished):
            raise ResponderError(f"the LLM stream from {self.url} ended without [DONE] or a finish reason")

    def _chunk_delta(self, data: str) -> tuple[str, list[Any], bool]:
        try:
            chunk = json.loads(data)
        except json.JSONDecodeError as exc:
            raise ResponderError(f"malformed event from the LLM endpoint {self.url}: {data[:200]!r} is not JSON "
                                 f"({exc.msg})") from None
        if not isinstance(chunk, dict):
            raise ResponderError(f"malformed event from the LLM endpoint {self.url}: {data[:200]!r}")
        if "error" in chunk:
            raise ResponderError(f"the LLM endpoint {self.url} reported an error mid-stream: "
                                 f"{_error_text(chunk)}")
        choices = chunk.get("choices") or []
        if not isinstance(choices, list):
            raise ResponderError(f"malformed event from the LLM endpoint {self.url}: 'choices' is not a list")
        for choice in choices:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            if not isinstance(delta, dict):
                raise ResponderError(f"malformed event from the LLM endpoint {self.url}: delta is not an object")
            return (self._text(delta.get("content")), self._pieces(delta.get("tool_calls")),
                    bool(choice.get("finish_reason")))
        return "", [], False

    def _message_delta(self, response: httpx.Response) -> tuple[str, list[Any]]:
        """A whole `chat.completion` answer as one delta: its text and its calls (each a whole piece)."""
        try:
            message = response.json()["choices"][0]["message"]
            if not isinstance(message, dict):
                raise TypeError("message is not an object")
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise ResponderError(f"malformed answer from the LLM endpoint {self.url}: no "
                                 f"choices[0].message ({type(exc).__name__})") from None
        pieces = self._pieces(message.get("tool_calls"))
        return self._text(message.get("content")), [{"index": n, **piece} if isinstance(piece, dict) else piece
                                                    for n, piece in enumerate(pieces)]

    def _text(self, content: Any) -> str:  # noqa: ANN401 - JSON
        if content is not None and not isinstance(content, str):
            raise ResponderError(f"malformed event from the LLM endpoint {self.url}: content is not text")
        return content or ""

    def _pieces(self, tool_calls: Any) -> list[Any]:  # noqa: ANN401 - JSON
        if tool_calls is not None and not isinstance(tool_calls, list):
            raise ResponderError(f"malformed event from the LLM endpoint {self.url}: tool_calls is not a list")
        return tool_calls or []

    def _status_error(self, response: httpx.Response) -> str:
        try:
            detail = _error_text(response.json())
        except ValueError:
            detail = response.text.strip()[:300] or "no body"
        status = response.status_code
        return (f"the LLM endpoint {self.url} answered HTTP {status} {response.reason_phrase}: {detail}."
                f"{_ADVICE.get(status, '')}")


def _error_text(body: Any) -> str:
    """The message of an OpenAI error body (`{"error": {"message": ...}}`) or of the common variants."""
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, str):
            return error
        if isinstance(error, dict):
            for key in ("message", "detail", "msg"):
                if isinstance(error.get(key), str):
                    return error[key]
    return json.dumps(body)[:300]


def _reason(exc: Exception) -> str:
    return str(exc) or type(exc).__name__


async def _once(delta: tuple[str, list[Any]]) -> AsyncIterator[tuple[str, list[Any]]]:
    yield delta
