"""What a responder is: a reply request in, the reply out as a stream of speakable phrases and function calls.

The session hands a `ReplyRequest` (the chat so far, ending with the user's turn or a function's output, and
the tools the model may call) to its `Responder` and speaks each phrase as it arrives, so speech starts on the
first complete phrase. A responder that supports tools (`supports_tools`) also yields function-call events
(`FunctionCallStarted`, `FunctionCallArgumentsDelta`, then `FunctionCallDone` or `FunctionCallInvalid`), in
the order the model produced them relative to the phrases ("let me check" comes before the call). Without
tools in the request only phrases come out.

Closing the iterator (`aclose()`, or cancelling the task iterating it) stops the work behind it promptly: an
HTTP request is disconnected, a model generation is cancelled. Failures surface as `ResponderError` from the
iterator, with a message fit to show a user.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from higgs_agent.agent.tools.calls import (
    FunctionCallArgumentsDelta,
    FunctionCallDone,
    FunctionCallEvent,
    FunctionCallInvalid,
    FunctionCallStarted,
)
from higgs_agent.agent.tools.spec import FunctionTool, ToolChoice

if TYPE_CHECKING:
    import numpy as np
    import torch

__all__ = [
    "FunctionCallArgumentsDelta", "FunctionCallDone", "FunctionCallEvent", "FunctionCallInvalid",
    "FunctionCallStarted", "ReplyEvent", "ReplyRequest", "Responder", "ResponderError", "spoken_turns",
    "tools_unsupported",
]

ReplyEvent = str | FunctionCallEvent  # what `Responder.reply()` yields: a phrase, or a step of a function call


class ResponderError(RuntimeError):
    """The reply could not be produced (endpoint unreachable, HTTP error, malformed stream, ...)."""


@dataclass
class ReplyRequest:
    """One reply to produce.

    `messages`: OpenAI chat format, system instructions first, then the whole conversation; assistant turns
    hold what the listener heard. Function calls are assistant messages with `tool_calls`, their outputs
    `{"role": "tool", "tool_call_id", "content"}` (`higgs_agent.agent.tools.chat_history` builds both).
    `tools` / `tool_choice`: what the model may call (`Toolbox.build` makes them unique and resolves an MCP
    choice); empty for responders that do not support tools. `parallel_tool_calls`: the session's setting,
    passed on when set.
    `user_audio_codes`: the current user turn as codec codes (num_codebooks, frames), for responders that
    listen (`native`); others ignore it.
    `on_first_text`: called once, on the event loop, when the first reply text exists (before it is a
    whole phrase): the server's time-to-first-token mark.
    """

    messages: list[dict[str, Any]]
    user_audio_codes: torch.Tensor | None = None
    on_first_text: Callable[[], None] | None = None
    tools: Sequence[FunctionTool] = ()
    tool_choice: ToolChoice = field(default_factory=ToolChoice)
    parallel_tool_calls: bool | None = None
    user_audio16k: np.ndarray | None = None  # the current user turn's audio (Whisper's own translation)

    def last_user_text(self) -> str:
        for message in reversed(self.messages):
            if message.get("role") == "user":
                content = message.get("content")
                return content if isinstance(content, str) else ""
        return ""

    def first_text(self) -> None:
        """Fire `on_first_text` once."""
        callback, self.on_first_text = self.on_first_text, None
        if callback is not None:
            callback()

    def tool(self, name: str) -> FunctionTool | None:
        return next((tool for tool in self.tools if tool.name == name), None)


@runtime_checkable
class Responder(Protocol):
    """Writes reply text (and, if `supports_tools`, function calls). One responder serves many requests,
    concurrently."""

    name: str
    supports_tools: bool

    def reply(self, request: ReplyRequest) -> AsyncIterator[ReplyEvent]:
        """The reply's phrases and function-call events, in order (an async generator)."""
        ...

    async def aclose(self) -> None:
        """Release what the responder holds (HTTP connections); replies in flight may fail after it."""
        ...


def tools_unsupported(responder: str, param: str = "session.tools") -> str:
    """The error text for tools given to a responder that cannot call them (reported with `param`)."""
    return (f"the {responder} responder cannot call tools: remove {param}, or set session.responder to 'llm' "
            f"(a server started with --llm-url) or 'local' (--reply-model) to use them")


def spoken_turns(messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The history without function calls and outputs: the words of each turn, for responders without tools."""
    turns = []
    for message in messages:
        role, content = message.get("role"), message.get("content")
        if role == "tool" or (role == "assistant" and not content):  # an output, or calls without words
            continue
        turns.append({"role": role, "content": content} if message.get("tool_calls") else message)
    return turns
