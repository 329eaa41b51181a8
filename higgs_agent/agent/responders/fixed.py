"""`fixed`: says given words (a greeting, an apology): no model writes anything."""

from __future__ import annotations

from collections.abc import AsyncIterator

from higgs_agent.agent.phrases import PhraseSplitter
from higgs_agent.agent.responders.base import ReplyRequest


class FixedReply:
    """Speaks `text`, cut into phrases so a long text starts speaking early. Used by `Session.say`."""

    name = "fixed"
    supports_tools = False

    def __init__(self, text: str, min_chars: int = 24, max_chars: int = 160) -> None:
        self.text = text
        self.min_chars = min_chars
        self.max_chars = max_chars

    async def reply(self, request: ReplyRequest) -> AsyncIterator[str]:
        request.first_text()
        splitter = PhraseSplitter(self.min_chars, self.max_chars)
        for phrase in splitter.feed(self.text) + splitter.flush():
            yield phrase

    async def aclose(self) -> None:
        return None
