"""What a responder is: a reply request in, the reply text out as a stream of speakable phrases.

The session hands a `ReplyRequest` (the chat so far, ending with the user's turn) to its `Responder` and
speaks each phrase as it arrives, so speech starts on the first complete phrase. Closing the phrase
iterator (`aclose()`, or cancelling the task iterating it) stops the work behind it promptly: an HTTP
request is disconnected, a model generation is cancelled. Failures surface as `ResponderError` from the
iterator, with a message fit to show a user.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    import torch


class ResponderError(RuntimeError):
    """The reply could not be produced (endpoint unreachable, HTTP error, malformed stream, ...)."""


@dataclass
class ReplyRequest:
    """One reply to produce.

    `messages`: OpenAI chat format (`{"role": ..., "content": str}`), system instructions first, then the
    whole conversation ending with the current user turn; assistant turns hold what the listener heard.
    `user_audio_codes`: the current user turn as codec codes (num_codebooks, frames), for responders that
    listen (`native`); others ignore it.
    `on_first_text`: called once, on the event loop, when the first reply text exists (before it is a
    whole phrase): the server's time-to-first-token mark.
    """

    messages: list[dict[str, str]]
    user_audio_codes: torch.Tensor | None = None
    on_first_text: Callable[[], None] | None = None

    def last_user_text(self) -> str:
        for message in reversed(self.messages):
            if message.get("role") == "user":
                return message.get("content") or ""
        return ""

    def first_text(self) -> None:
        """Fire `on_first_text` once."""
        callback, self.on_first_text = self.on_first_text, None
        if callback is not None:
            callback()


@runtime_checkable
class Responder(Protocol):
    """Writes reply text. One responder serves many requests, concurrently."""

    name: str

    def reply(self, request: ReplyRequest) -> AsyncIterator[str]:
        """The reply's phrases, in order (an async generator)."""
        ...

    async def aclose(self) -> None:
        """Release what the responder holds (HTTP connections); replies in flight may fail after it."""
        ...
