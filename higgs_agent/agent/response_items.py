"""A response's output items, in the order a client expects: each item added to the conversation and to the
response, and closed. Every event of a response goes out through `send`, which also notes when the response
last made progress."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from higgs_agent.agent.conversation import Conversation, ConversationItem
from higgs_agent.agent.events import DomainEvent, Place, ReplyItemAdded, ReplyItemDone, Say


@dataclass
class ResponseItems:
    response_id: str
    say: Say
    conversation: Conversation
    items: list[ConversationItem] = field(default_factory=list)  # the response's output items, in order
    progress_at: float = field(default_factory=time.monotonic)  # the last event or audio sent

    async def send(self, event: DomainEvent) -> None:
        await self.say(event)
        self.progressed()

    def progressed(self) -> None:
        """The response made progress (an event, or audio handed to the output)."""
        self.progress_at = time.monotonic()

    def place(self, item: ConversationItem) -> Place:
        """Where the item is in the response."""
        return Place(self.response_id, item.id, self.items.index(item))

    async def add(self, item: ConversationItem) -> None:
        """A new output item: into the conversation and the response, announced."""
        self.conversation.add(item)
        self.items.append(item)
        await self.send(ReplyItemAdded(self.place(item), item, self.conversation.previous_id(item)))

    async def done(self, item: ConversationItem) -> None:
        await self.send(ReplyItemDone(self.place(item), item, self.conversation.previous_id(item)))
