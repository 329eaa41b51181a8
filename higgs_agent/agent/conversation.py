"""The conversation history: what the user said (words, and their audio as codec codes), what the assistant
said — as heard by the listener, not as generated, once a turn is truncated by barge-in — and the tool calls
made along the way (function calls the client runs, MCP calls the server runs) with their outputs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from higgs_agent.agent.tools.chat_history import function_call_message, function_output_message
from higgs_agent.protocol.errors import ProtocolError
from higgs_agent.understanding.context import TurnContext

Role = Literal["user", "assistant", "system"]
Kind = Literal["message", "function_call", "function_call_output", "mcp_call", "mcp_list_tools",
               "mcp_approval_request", "mcp_approval_response"]
ROOT = "root"  # previous_item_id that puts an item first


@dataclass(frozen=True)
class SpokenPhrase:
    """One phrase of an assistant turn and where its audio sits in the turn's audio timeline."""

    text: str
    start_ms: float
    end_ms: float


def heard_text(phrases: list[SpokenPhrase], audio_end_ms: float) -> str:
    """The words a listener heard by `audio_end_ms`: whole phrases, then the share of words of the phrase
    being played proportional to its audio played (words are spoken at roughly even pace)."""
    words: list[str] = []
    for phrase in phrases:
        if audio_end_ms >= phrase.end_ms:
            words.extend(phrase.text.split())
            continue
        if audio_end_ms > phrase.start_ms:
            phrase_words = phrase.text.split()
            share = (audio_end_ms - phrase.start_ms) / max(phrase.end_ms - phrase.start_ms, 1e-6)
            words.extend(phrase_words[: int(len(phrase_words) * share)])
        break
    return " ".join(words)


@dataclass
class ToolCall:
    """What a function_call / mcp_call / approval item holds (`output` and `error` once the call ran)."""

    call_id: str
    name: str
    arguments: str = ""
    server_label: str | None = None  # MCP: the server; None: a function the client runs
    output: str | None = None
    error: dict[str, Any] | None = None  # MCP: the Realtime error object
    approval_request_id: str | None = None
    approve: bool | None = None  # mcp_approval_response
    reason: str | None = None
    tools: list[dict[str, Any]] | None = None  # mcp_list_tools

    def for_model(self) -> str:
        if self.error is not None:
            return f"The tool call failed: {self.error.get('message', 'unknown error')}"
        return self.output or ""


@dataclass
class ConversationItem:
    id: str
    role: Role
    content_type: Literal["input_audio", "input_text", "output_audio", "output_text"] = "input_text"
    text: str | None = None  # transcript, typed text, or the spoken words (heard words once truncated)
    language: str | None = None
    codes: torch.Tensor | None = None  # (num_codebooks, frames): the user's audio, for the model to hear
    phrases: list[SpokenPhrase] = field(default_factory=list)
    status: Literal["in_progress", "completed", "incomplete"] = "completed"
    audio_seconds: float = 0.0  # the user's audio in this item
    kind: Kind = "message"
    call: ToolCall | None = None  # every kind but "message"
    context: TurnContext | None = None  # a user turn's speaker, emotion and language (understanding)

    @classmethod
    def tool(cls, item_id: str, kind: Kind, call: ToolCall, status: str = "completed") -> ConversationItem:
        role: Role = "user" if kind in ("function_call_output", "mcp_approval_response") else "assistant"
        return cls(item_id, role, status=status, kind=kind, call=call)  # type: ignore[arg-type]

    @property
    def audio_ms(self) -> float:
        return self.phrases[-1].end_ms if self.phrases else 0.0

    @property
    def spoken_text(self) -> str:
        return " ".join(p.text for p in self.phrases)


class Conversation:
    """Items in order, addressable by id."""

    def __init__(self, max_items: int = 200) -> None:
        self.items: list[ConversationItem] = []
        self.max_items = max_items  # old turns drop out so a long call cannot grow without bound

    def add(self, item: ConversationItem, after: str | None = None) -> ConversationItem:
        """Append, or insert right after the item `after` (`"root"`: first), as `previous_item_id` asks."""
        if any(existing.id == item.id for existing in self.items):
            raise ProtocolError("invalid_value", f"an item with id '{item.id}' already exists", param="item.id")
        if after is None:
            self.items.append(item)
        elif after == ROOT:
            self.items.insert(0, item)
        else:
            try:
                index = next(i for i, existing in enumerate(self.items) if existing.id == after)
            except StopIteration:
                raise ProtocolError("item_not_found", f"previous_item_id '{after}' is not in the conversation",
                                    param="previous_item_id") from None
            self.items.insert(index + 1, item)
        del self.items[: -self.max_items]
        return item

    def get(self, item_id: str) -> ConversationItem:
        for item in self.items:
            if item.id == item_id:
                return item
        raise ProtocolError("item_not_found", f"no conversation item with id '{item_id}'", param="item_id")

    def delete(self, item_id: str) -> None:
        self.items.remove(self.get(item_id))

    def previous_id(self, item: ConversationItem) -> str | None:
        index = self.items.index(item)
        return self.items[index - 1].id if index > 0 else None

    def last_user_item(self) -> ConversationItem | None:
        return next((item for item in reversed(self.items) if item.role == "user" and item.kind == "message"), None)

    def find_call(self, kind: Kind, **match: str) -> ConversationItem | None:
        """The latest item of `kind` whose call has these field values (e.g. approval_request_id=...)."""
        return next((item for item in reversed(self.items) if item.kind == kind and item.call is not None
                     and all(getattr(item.call, k) == v for k, v in match.items())), None)

    def truncate(self, item_id: str, content_index: int, audio_end_ms: float) -> ConversationItem:
        """Cut an assistant turn to what was heard by `audio_end_ms` of its audio."""
        item = self.get(item_id)
        if item.role != "assistant" or item.content_type != "output_audio":
            raise ProtocolError("invalid_value", "only assistant audio items can be truncated", param="item_id")
        if content_index != 0:
            raise ProtocolError("invalid_value", f"content_index {content_index} does not exist: the item has one "
                                "content part (index 0)", param="content_index")
        if audio_end_ms > item.audio_ms + 1:
            raise ProtocolError("invalid_value", f"audio_end_ms {audio_end_ms:.0f} is past the end of the item's "
                                f"audio ({item.audio_ms:.0f} ms)", param="audio_end_ms")
        item.text = heard_text(item.phrases, audio_end_ms)
        item.status = "incomplete"
        return item

    def chat_messages(self, instructions: str) -> list[dict[str, Any]]:
        """OpenAI chat messages: the instructions, then every turn with words in it and every tool call with
        its output (an MCP call carries both; the responder puts them in the shape its endpoint wants). With
        more than one caller heard, each user turn says who spoke it ("[speaker 2] ...")."""
        messages: list[dict[str, Any]] = [{"role": "system", "content": instructions}]
        speakers = {item.context.speaker.id for item in self.items
                    if item.context is not None and item.context.speaker is not None}
        for item in self.items:
            call = item.call
            if item.kind == "message":
                if item.text:
                    speaker = item.context.speaker if item.context is not None else None
                    label = f"[{speaker.id}] " if len(speakers) > 1 and speaker is not None else ""
                    messages.append({"role": item.role, "content": label + item.text})
            elif item.kind == "function_call" and call is not None:
                messages.append(function_call_message(call.call_id, call.name, call.arguments or "{}"))
            elif item.kind == "function_call_output" and call is not None:
                messages.append(function_output_message(call.call_id, call.output or ""))
            elif item.kind == "mcp_call" and call is not None and (call.output is not None or call.error):
                messages.append(function_call_message(call.call_id, call.name, call.arguments or "{}"))
                messages.append(function_output_message(call.call_id, call.for_model()))
        return messages
