"""The OpenAI Realtime (GA) wire protocol as types: client events in, server events out.

Client events are small pydantic models keyed by their literal `type`; `parse_client_event` turns one raw
message into one of them or a `ProtocolError` that becomes an `error` event (the session continues). Fields we
do not use are accepted and ignored, as the reference server does for forward compatibility. Our own server
events carry the `higgs.` prefix so standard clients ignore them.
"""

from __future__ import annotations

import json
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

EXTENSION_PREFIX = "higgs."


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:20]}"


class ProtocolError(Exception):
    """A client message we cannot act on: reported as an `error` event, never fatal to the session."""

    def __init__(self, code: str, message: str, *, param: str | None = None, event_id: str | None = None,
                 type: str = "invalid_request_error") -> None:  # noqa: A002 - the protocol's field name
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param
        self.event_id = event_id
        self.type = type

    def to_event(self) -> dict[str, Any]:
        return server_event("error", error={"type": self.type, "code": self.code, "message": self.message,
                                            "param": self.param, "event_id": self.event_id})


class _ClientEvent(BaseModel):
    model_config = ConfigDict(extra="allow")
    event_id: str | None = None


class SessionUpdate(_ClientEvent):
    type: Literal["session.update"]
    session: dict[str, Any]


class InputAudioBufferAppend(_ClientEvent):
    type: Literal["input_audio_buffer.append"]
    audio: str


class InputAudioBufferCommit(_ClientEvent):
    type: Literal["input_audio_buffer.commit"]


class InputAudioBufferClear(_ClientEvent):
    type: Literal["input_audio_buffer.clear"]


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None
    audio: str | None = None
    transcript: str | None = None


class Item(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str | None = None
    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system"] = "user"
    content: list[ContentPart] = Field(default_factory=list)


class ConversationItemCreate(_ClientEvent):
    type: Literal["conversation.item.create"]
    item: Item
    previous_item_id: str | None = None


class ConversationItemTruncate(_ClientEvent):
    type: Literal["conversation.item.truncate"]
    item_id: str
    content_index: int = 0
    audio_end_ms: int = Field(ge=0)


class ConversationItemDelete(_ClientEvent):
    type: Literal["conversation.item.delete"]
    item_id: str


class ConversationItemRetrieve(_ClientEvent):
    type: Literal["conversation.item.retrieve"]
    item_id: str


class ResponseCreate(_ClientEvent):
    type: Literal["response.create"]
    response: dict[str, Any] | None = None


class ResponseCancel(_ClientEvent):
    type: Literal["response.cancel"]
    response_id: str | None = None


ClientEvent = Annotated[
    SessionUpdate | InputAudioBufferAppend | InputAudioBufferCommit | InputAudioBufferClear
    | ConversationItemCreate | ConversationItemTruncate | ConversationItemDelete | ConversationItemRetrieve
    | ResponseCreate | ResponseCancel,
    Field(discriminator="type"),
]
_client_event = TypeAdapter(ClientEvent)
CLIENT_EVENT_TYPES = frozenset(
    model.model_fields["type"].annotation.__args__[0]  # the Literal's one value
    for model in (SessionUpdate, InputAudioBufferAppend, InputAudioBufferCommit, InputAudioBufferClear,
                  ConversationItemCreate, ConversationItemTruncate, ConversationItemDelete, ConversationItemRetrieve,
                  ResponseCreate, ResponseCancel)
)


def parse_client_event(raw: str | bytes, max_bytes: int) -> ClientEvent:
    """One text message -> a typed client event, or ProtocolError saying exactly what is wrong."""
    if len(raw) > max_bytes:
        raise ProtocolError("message_too_large", f"message of {len(raw)} bytes exceeds the limit of {max_bytes} "
                            "bytes; send audio in smaller input_audio_buffer.append chunks")
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise ProtocolError("invalid_json", f"message is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ProtocolError("invalid_event", "an event must be a JSON object")
    event_id = data.get("event_id") if isinstance(data.get("event_id"), str) else None
    kind = data.get("type")
    if not isinstance(kind, str):
        raise ProtocolError("invalid_event", "the event has no string 'type'", param="type", event_id=event_id)
    if kind not in CLIENT_EVENT_TYPES:
        raise ProtocolError("unknown_event", f"unknown event type '{kind}'", param="type", event_id=event_id)
    try:
        return _client_event.validate_python(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"][1:])  # drop the union tag
        raise ProtocolError("invalid_value", f"{kind}: {first['msg']} ({where})", param=where,
                            event_id=event_id) from None


def server_event(kind: str, **fields: Any) -> dict[str, Any]:
    return {"type": kind, "event_id": new_id("event"), **fields}
