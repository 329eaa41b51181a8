"""A response's output items and the events that announce them, in the order a client expects: each item
added to the conversation and to the response (`response.output_item.added`, `conversation.item.added`), and
closed (`response.output_item.done`, `conversation.item.done`). Every event of a response goes out through
`send`, which also notes when the response last made progress."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from higgs_agent.agent.conversation import Conversation, ConversationItem
from higgs_agent.agent.output import SessionOutput
from higgs_agent.protocol import server_events as se


@dataclass
class ResponseItems:
    response_id: str
    output: SessionOutput
    conversation: Conversation
    items: list[ConversationItem] = field(default_factory=list)  # the response's output items, in order
    progress_at: float = field(default_factory=time.monotonic)  # the last event or audio sent

    async def send(self, event: se.ServerEvent) -> None:
        await self.output.send_event(event)
        self.progressed()

    def progressed(self) -> None:
        """The response made progress (an event, or audio handed to the output)."""
        self.progress_at = time.monotonic()

    def index(self, item: ConversationItem) -> int:
        return self.items.index(item)

    async def add(self, item: ConversationItem) -> int:
        """A new output item: into the conversation and the response, announced; its output_index."""
        self.conversation.add(item)
        self.items.append(item)
        index = len(self.items) - 1
        await self.send(se.OutputItemAdded(response_id=self.response_id, output_index=index, item=item.to_item()))
        await self.send(se.ItemAdded(previous_item_id=self.conversation.previous_id(item), item=item.to_item()))
        return index

    async def done(self, item: ConversationItem) -> None:
        await self.send(se.OutputItemDone(response_id=self.response_id, output_index=self.index(item),
                                          item=item.to_item()))
        await self.send(se.ItemDone(previous_item_id=self.conversation.previous_id(item), item=item.to_item()))

    def part(self, item: ConversationItem) -> dict[str, Any]:
        """The fields that place an event on the item's (one) content part."""
        return {"response_id": self.response_id, "item_id": item.id, "output_index": self.index(item),
                "content_index": 0}
