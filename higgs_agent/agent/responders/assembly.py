"""From a model's stream to a responder's reply: text deltas and tool-call pieces in, speakable phrases and
function-call events out, in the order the model wrote them.

Shared by the responders that call tools (`llm` reads the pieces off a chat-completions stream, `local` parses
them out of its own model's text). Words go through a `PhraseSplitter`; the words said before a call are
flushed as a phrase before the call starts, and words after a call end it, so "let me check" is spoken before
the call goes out. The pieces are chat-completions `delta.tool_calls` entries; `CallAssembler` checks each
finished call against its tool's schema.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from higgs_agent.agent.phrases import PhraseSplitter
from higgs_agent.agent.responders.base import ReplyEvent, ReplyRequest
from higgs_agent.agent.tools.calls import CallAssembler


class ReplyAssembler:
    """One reply's phrases and calls. Raises `MalformedToolCall` (from `CallAssembler`) on pieces that make no
    sense; the responder turns it into its own `ResponderError`."""

    def __init__(self, request: ReplyRequest, min_chars: int = 24, max_chars: int = 160) -> None:
        self.request = request
        self.splitter = PhraseSplitter(min_chars, max_chars)
        self.calls = CallAssembler(request.tools)

    def text(self, text: str) -> list[ReplyEvent]:
        """Events for a text delta: the call it ends (words after a call), then the phrases it completes."""
        if not text:
            return []
        events: list[ReplyEvent] = []
        if self.calls.open and text.strip():  # words after a call: the call is complete
            events += self.calls.finish()
        self.request.first_text()
        events += self.splitter.feed(text)
        return events

    def pieces(self, pieces: Iterable[Any]) -> list[ReplyEvent]:
        """Events for `delta.tool_calls` entries: the words before the first call as a phrase, then the calls."""
        events: list[ReplyEvent] = []
        for piece in pieces:
            if not self.calls.open:  # the words before a call are said before it
                events += self.splitter.flush()
            events += self.calls.piece(piece)
        return events

    def finish(self) -> list[ReplyEvent]:
        """At the end of the stream: the open call's end, then the words still held."""
        return [*self.calls.finish(), *self.splitter.flush()]
