"""`echo`: speak back what the user said. For tests and latency measurement: no model writes anything, so it
calls no tools (`supports_tools` False: the session refuses `session.tools` for it)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from higgs_agent.agent.phrases import PhraseSplitter
from higgs_agent.agent.responders.base import ReplyRequest


class EchoResponder:
    """Replies with the last user message's text, cut into phrases (a long echo starts speaking early)."""

    name = "echo"
    supports_tools = False

    def __init__(self, min_chars: int = 24, max_chars: int = 160) -> None:
        self.min_chars = min_chars
        self.max_chars = max_chars

    async def reply(self, request: ReplyRequest) -> AsyncIterator[str]:
        text = request.last_user_text()
        if not text.strip():
            return
        request.first_text()
        splitter = PhraseSplitter(self.min_chars, self.max_chars)
        for phrase in splitter.feed(text) + splitter.flush():
            yield phrase

    async def aclose(self) -> None:
        return None
