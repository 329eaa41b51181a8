"""Function calls and their outputs in a chat-completions history.

A Realtime conversation holds calls and outputs as items in the order they happened; a chat endpoint wants
them in a stricter shape: one assistant message carrying every `tool_calls` entry of a turn (with the words
spoken before them as its `content`), then one `{"role": "tool"}` message per call, before anything else.
The session writes its items in order with `function_call_message` / `function_output_message`;
`well_formed` rewrites that into the strict shape: calls of one turn merged, outputs moved up behind their
calls, a call the client never answered given a placeholder output (endpoints reject an unanswered call), an
output whose call is not in the history dropped.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

log = logging.getLogger(__name__)
NO_OUTPUT = "(no output was received for this call)"


def function_call_message(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    """An assistant message with one function call."""
    return {"role": "assistant", "content": None,
            "tool_calls": [{"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}]}


def function_output_message(call_id: str, output: str) -> dict[str, Any]:
    return {"role": "tool", "tool_call_id": call_id, "content": output}


def well_formed(messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """`messages` with its tool calls and outputs in the shape chat endpoints accept (see the module doc).
    A history without tool calls comes back equal to the input."""
    outputs: dict[str, str] = {}
    called: set[str] = set()
    for message in messages:
        if message.get("role") == "tool":
            outputs.setdefault(str(message.get("tool_call_id")), _text(message.get("content")))
        for call in message.get("tool_calls") or ():
            called.add(str(call.get("id")))

    out: list[dict[str, Any]] = []
    pending: list[str] = []  # calls of the latest assistant message, awaiting their outputs

    def answer_pending() -> None:
        for call_id in pending:
            out.append(function_output_message(call_id, outputs.get(call_id, NO_OUTPUT)))
        pending.clear()

    for message in messages:
        role = message.get("role")
        if role == "tool":
            if str(message.get("tool_call_id")) not in called:
                log.warning("dropping the output for call %r: the call is not in the history",
                            message.get("tool_call_id"))
            continue
        calls = message.get("tool_calls")
        if role == "assistant" and calls:
            previous = out[-1] if out else None
            if previous is not None and previous.get("role") == "assistant":
                merged = dict(previous)  # words spoken before the calls, or earlier calls of the same turn
                merged["tool_calls"] = [*(previous.get("tool_calls") or ()), *calls]
                out[-1] = merged
            else:
                answer_pending()
                out.append(dict(message))
            pending.extend(str(call.get("id")) for call in calls)
            continue
        answer_pending()
        out.append(message)
    answer_pending()
    return out


def with_argument_objects(messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """`messages` with each call's `arguments` as the JSON object it spells (left as text when it is not JSON):
    chat templates (Qwen2.5, Llama 3.x) render arguments with `tojson`, so they take the object, not its text."""
    out = []
    for message in messages:
        calls = message.get("tool_calls")
        if calls:
            message = {**message, "tool_calls": [_with_object(call) for call in calls]}
        out.append(message)
    return out


def _with_object(call: dict[str, Any]) -> dict[str, Any]:
    function = call.get("function") or {}
    arguments = function.get("arguments")
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments or "{}")
        except json.JSONDecodeError:
            return call
    return {**call, "function": {**function, "arguments": arguments}}


def _text(content: Any) -> str:  # noqa: ANN401 - JSON
    return content if isinstance(content, str) else "" if content is None else str(content)
