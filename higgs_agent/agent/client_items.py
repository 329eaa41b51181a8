"""A client's `conversation.item.create`, checked and turned into what the conversation holds: a message
(text, or a user's audio still to be transcribed), a function call or its output, or a verdict on an MCP call
the server asked to make. Every mistake is a `ProtocolError` naming the field."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

import numpy as np

from higgs_agent.agent.conversation import Conversation, ConversationItem, ToolCall
from higgs_agent.audio_formats import AudioFormat, decode_audio
from higgs_agent.protocol import client_events as ce
from higgs_agent.protocol.errors import ProtocolError, new_id


@dataclass(frozen=True, eq=False)
class UserAudioItem:
    """A user message in audio: the session transcribes it like a spoken turn (without answering it)."""

    item_id: str
    audio: np.ndarray  # float32 mono at `rate`, the session's input format
    rate: int


def client_item(event: ce.ConversationItemCreate, conversation: Conversation,
                input_format: AudioFormat) -> ConversationItem | UserAudioItem:
    item = event.item
    if item.type != "message":
        return _tool_item(item, conversation)
    if item.role is None:
        raise ProtocolError("invalid_value", "a message item needs a role", param="item.role")
    part = item.content[0] if item.content else None
    if part is None or len(item.content) != 1:
        raise ProtocolError("invalid_value", "an item needs exactly one content part", param="item.content")
    item_id = item.id or new_id("item")
    if part.type in ("input_text", "text", "output_text"):
        if part.text is None:
            raise ProtocolError("invalid_value", "a text part needs 'text'", param="item.content.0.text")
        kind = "output_text" if item.role == "assistant" else "input_text"
        return ConversationItem(item_id, item.role, kind, text=part.text)
    if part.type == "input_audio" and item.role == "user":
        try:
            audio = decode_audio(base64.b64decode(part.audio or "", validate=True), input_format)
        except (binascii.Error, ValueError) as exc:
            raise ProtocolError("invalid_audio", f"input_audio: {exc}", param="item.content.0.audio") from None
        return UserAudioItem(item_id, audio, input_format.rate)
    raise ProtocolError("invalid_value", f"unsupported content part type '{part.type}' for role "
                        f"'{item.role}'", param="item.content.0.type")


def _tool_item(item: Any, conversation: Conversation) -> ConversationItem:  # noqa: ANN401 - the client's item
    """A client's function_call_output (its answer to a call), function_call (history it inserts), or
    mcp_approval_response (its verdict on an MCP call the server asked to make)."""
    item_id = item.id or new_id("item")

    def need(name: str) -> Any:  # noqa: ANN401 - the field's value
        value = getattr(item, name)
        if value is None:
            raise ProtocolError("invalid_value", f"a {item.type} item needs '{name}'", param=f"item.{name}")
        return value

    if item.type == "function_call_output":
        call = ToolCall(need("call_id"), "", output=need("output"))
    elif item.type == "function_call":
        call = ToolCall(need("call_id"), need("name"), item.arguments or "{}")
    else:
        request_id, approve = need("approval_request_id"), need("approve")
        asked = next((i for i in conversation.items if i.id == request_id), None)
        if asked is None or asked.kind != "mcp_approval_request":
            raise ProtocolError("invalid_value", f"{request_id!r} is not an mcp_approval_request of this "
                                "conversation", param="item.approval_request_id")
        call = ToolCall("", "", approval_request_id=request_id, approve=approve, reason=item.reason)
    return ConversationItem.tool(item_id, item.type, call)
