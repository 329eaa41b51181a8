"""Function calls written as text by a model running in this process, turned into chat-completions
`tool_calls` pieces (what an OpenAI-compatible server does before it streams them), so they go through the
same `CallAssembler` checks and the same events as the `llm` responder's calls.

Two ways instruct models write calls, both from their own chat templates:
- Hermes / Qwen2.5 / Qwen3: `<tool_call>\\n{"name": "get_weather", "arguments": {"city": "Paris"}}\\n</tool_call>`
  anywhere in the reply, several in a row for several calls, words before them allowed.
- Llama 3.1-3.3: the whole reply is one JSON object `{"name": ..., "parameters": {...}}` (optionally after
  `<|python_tag|>`). Recognised only when the model was offered tools (`json_calls`) and the reply opens with
  `{`; such a reply is held until its end, and spoken as words if it is not a call after all.

`ToolCallText.feed(delta)` returns what the delta completes, in order: text (`str`, to speak) and pieces
(`dict`); a tag split across deltas is held back until it is whole. A call whose body is not JSON becomes a
piece whose arguments are the raw text, so the assembler reports it as `FunctionCallInvalid`, never passes it
on and never speaks it.
"""

from __future__ import annotations

import json
import re
from typing import Any

OPEN, CLOSE = "<tool_call>", "</tool_call>"
PYTHON_TAG = "<|python_tag|>"
_NAME = re.compile(r'"name"\s*:\s*"([^"]*)"')

TextOrPiece = str | dict[str, Any]


class ToolCallText:
    """Splits one reply's text into words and call pieces (see the module doc)."""

    def __init__(self, prefix: str = "", json_calls: bool = True) -> None:
        """`prefix`: text the prompt already wrote on the model's behalf (a forced `<tool_call>` opening);
        `json_calls`: whether a reply that opens with `{` may be a Llama-3 call (only when tools were offered)."""
        self._pending = ""
        self._in_call = False
        self._json_reply: bool | None = None if json_calls else False  # None: not known before the first word
        self._count = 0
        self._prefilled: list[TextOrPiece] = []
        self._prefilled = self.feed(prefix)

    @property
    def calls(self) -> int:
        return self._count

    def feed(self, text: str) -> list[TextOrPiece]:
        out, self._prefilled = self._prefilled, []
        self._pending += text
        if self._json_reply is None:
            opening = self._pending.lstrip()
            if not opening or PYTHON_TAG.startswith(opening):
                return out
            self._json_reply = opening.startswith(("{", PYTHON_TAG))
        if self._json_reply:
            return out  # held until finish()
        while self._pending:
            if self._in_call:
                end = self._pending.find(CLOSE)
                if end < 0:
                    break
                out.append(self._piece(self._pending[:end]))
                self._pending, self._in_call = self._pending[end + len(CLOSE):], False
                continue
            start = self._pending.find(OPEN)
            if start >= 0:
                if start:
                    out.append(self._pending[:start])
                self._pending, self._in_call = self._pending[start + len(OPEN):], True
                continue
            keep = _partial_tag(self._pending, OPEN)
            cut = len(self._pending) - keep
            if cut:
                out.append(self._pending[:cut])
            self._pending = self._pending[cut:]
            break
        return out

    def finish(self) -> list[TextOrPiece]:
        """What is held at the end of the reply: an unclosed call (a model stopped right after its JSON), a
        JSON reply, or a partial tag that turned out to be words."""
        out, self._prefilled = self._prefilled, []
        rest, self._pending = self._pending, ""
        if self._json_reply:
            body = rest.strip().removeprefix(PYTHON_TAG)
            call = _json_call(body)
            out.append(self._piece(body) if call is not None else rest)
        elif self._in_call:
            self._in_call = False
            if rest.strip():
                out.append(self._piece(rest))
        elif rest:
            out.append(rest)
        return [item for item in out if not isinstance(item, str) or item]

    def _piece(self, body: str) -> dict[str, Any]:
        index, self._count = self._count, self._count + 1
        call = _json_call(body.strip())
        if call is None:  # not a call object: report it whole (CallAssembler says what is wrong)
            found = _NAME.search(body)
            return {"index": index, "function": {"name": found.group(1) if found else "", "arguments": body.strip()}}
        name, arguments = call
        return {"index": index, "function": {"name": name, "arguments": arguments}}


def _json_call(body: str) -> tuple[str, str] | None:
    """(name, arguments as JSON text) of `{"name": ..., "arguments"|"parameters": ...}`, else None."""
    try:
        value = json.loads(body)
    except json.JSONDecodeError:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        return None
    arguments = value.get("arguments", value.get("parameters", {}))
    return value["name"], arguments if isinstance(arguments, str) else json.dumps(arguments)


def _partial_tag(text: str, tag: str) -> int:
    """The length of the longest end of `text` that opens `tag` (held back: the next delta may finish it)."""
    for size in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[-size:]):
            return size
    return 0
