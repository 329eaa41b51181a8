"""Function calls as a responder reports them, and their assembly from a streamed chat completion.

A responder's reply is a stream of speakable phrases (`str`) and these events, in the order the model wrote
them: `FunctionCallStarted`, then `FunctionCallArgumentsDelta`s, then exactly one of `FunctionCallDone` (the
arguments are JSON that the tool's parameters allow) or `FunctionCallInvalid` (they are not, or the model
named no known tool): never passed on silently.

Chat-completions endpoints stream calls in pieces: `delta.tool_calls[{index, id, type, function: {name,
arguments}}]`, the id and name in a call's first piece, its arguments in fragments, several calls told apart
by `index`. `CallAssembler` turns those pieces into the events above.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from higgs_agent.agent.tools.spec import FunctionTool, InvalidArguments


@dataclass(frozen=True)
class FunctionCallStarted:
    call_id: str
    name: str


@dataclass(frozen=True)
class FunctionCallArgumentsDelta:
    call_id: str
    delta: str


@dataclass(frozen=True)
class FunctionCallDone:
    """`arguments`: the JSON text as the model wrote it ("{}" when it wrote nothing); `parsed`: its value."""

    call_id: str
    name: str
    arguments: str
    parsed: dict[str, Any]


@dataclass(frozen=True)
class FunctionCallInvalid:
    """A call that cannot be run: `error` says why, in words fit for the model (as a tool output) or a log."""

    call_id: str
    name: str
    arguments: str
    error: str


FunctionCallEvent = FunctionCallStarted | FunctionCallArgumentsDelta | FunctionCallDone | FunctionCallInvalid


class MalformedToolCall(ValueError):
    """The endpoint's stream of call pieces makes no sense (not objects, pieces of a call already finished)."""


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


@dataclass
class _Call:
    index: int
    call_id: str | None = None
    name: str = ""
    arguments: str = ""
    started: bool = False
    held: list[str] = field(default_factory=list)  # argument fragments that came before the name


class CallAssembler:
    """Builds function-call events from streamed `tool_calls` pieces. A call is finished when another call
    starts, when `finish()` is called (the endpoint sent text after it, or the stream ended)."""

    def __init__(self, tools: Sequence[FunctionTool], make_call_id: Callable[[], str] = new_call_id) -> None:
        self._tools = {tool.name: tool for tool in tools}
        self._make_call_id = make_call_id
        self._current: _Call | None = None
        self._finished: set[int] = set()

    @property
    def open(self) -> bool:
        return self._current is not None

    def piece(self, piece: Any) -> list[FunctionCallEvent]:  # noqa: ANN401 - JSON from the endpoint
        """Events for one entry of `delta.tool_calls`."""
        if not isinstance(piece, dict):
            raise MalformedToolCall(f"a tool_calls entry is not an object: {piece!r}")
        function = piece.get("function") or {}
        if not isinstance(function, dict):
            raise MalformedToolCall(f"a tool_calls entry's function is not an object: {function!r}")
        index = self._index(piece)
        if index in self._finished:
            raise MalformedToolCall(f"a piece of tool call {index} came after that call had ended")
        events: list[FunctionCallEvent] = []
        call = self._current
        if call is None or call.index != index:
            events += self.finish()
            call = self._current = _Call(index)
        if call.call_id is None and isinstance(piece.get("id"), str) and piece["id"]:
            call.call_id = piece["id"]
        name, arguments = function.get("name"), function.get("arguments")
        if not isinstance(name, str | None) or not isinstance(arguments, str | None):
            raise MalformedToolCall(f"a tool call's name and arguments must be text: {function!r}")
        if name and not call.started:
            call.name += name  # servers send the name whole in the first piece; a split one is joined
        if arguments:
            call.arguments += arguments
            if call.started:
                events.append(FunctionCallArgumentsDelta(call.call_id or "", arguments))
            else:
                call.held.append(arguments)
        if call.name and not call.started:
            events += self._start(call)
        return events

    def finish(self) -> list[FunctionCallEvent]:
        """End the open call (if any): its Started (when it never got a name) and its Done or Invalid."""
        call, self._current = self._current, None
        if call is None:
            return []
        self._finished.add(call.index)
        events: list[FunctionCallEvent] = [] if call.started else self._start(call)
        arguments = call.arguments if call.arguments.strip() else "{}"
        tool = self._tools.get(call.name)
        if tool is None:
            known = ", ".join(sorted(self._tools)) or "none"
            what = f"the function {call.name!r}" if call.name else "a function without a name"
            events.append(FunctionCallInvalid(call.call_id or "", call.name, arguments,
                                              f"the model called {what}, which is not among its tools ({known})"))
            return events
        try:
            parsed = tool.check_arguments(arguments)
        except InvalidArguments as exc:
            events.append(FunctionCallInvalid(call.call_id or "", call.name, arguments, str(exc)))
        else:
            events.append(FunctionCallDone(call.call_id or "", call.name, arguments, parsed))
        return events

    def _index(self, piece: dict[str, Any]) -> int:
        index = piece.get("index")
        if isinstance(index, int) and not isinstance(index, bool):
            return index
        if index is not None:
            raise MalformedToolCall(f"a tool call's index is not an integer: {index!r}")
        # No index (some servers): a new id starts a new call, anything else continues the current one.
        current = self._current
        if current is None:
            return max(self._finished, default=-1) + 1
        new_id = piece.get("id")
        if isinstance(new_id, str) and new_id and current.call_id not in (None, new_id):
            return max(self._finished | {current.index}) + 1
        return current.index

    def _start(self, call: _Call) -> list[FunctionCallEvent]:
        call.started = True
        if call.call_id is None:
            call.call_id = self._make_call_id()  # endpoints that send no id still get a unique one
        events: list[FunctionCallEvent] = [FunctionCallStarted(call.call_id, call.name)]
        if call.held:
            events.append(FunctionCallArgumentsDelta(call.call_id, "".join(call.held)))
            call.held.clear()
        return events
