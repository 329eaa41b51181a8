"""Every event a client may send, as a strict type keyed by its literal `type`.

`parse_client_event` turns one raw message into one of them or a `ProtocolError` naming the exact field
(`param`). Types are strict: `"false"` is not a boolean and `3.0` is not an integer, as in OpenAI's schema.
Fields nobody defined yet are accepted and ignored (forward compatibility), except inside `session`, whose
fields `session_fields` checks one by one.
"""

from __future__ import annotations

import base64
import binascii

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, TypeAdapter, ValidationError

from higgs_agent.protocol.errors import ProtocolError, loads_strict


class _Strict(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)


class _ClientEvent(_Strict):
    event_id: str | None = None


class SessionUpdate(_ClientEvent):
    type: Literal["session.update"]
    session: dict[str, Any]


class InputAudioBufferAppend(_ClientEvent):
    type: Literal["input_audio_buffer.append"]
    audio: str
    _data: bytes = PrivateAttr(default=b"")

    @property
    def data(self) -> bytes:
        """The audio's bytes (base64-decoded by `parse_client_event`)."""
        return self._data


class InputAudioBufferCommit(_ClientEvent):
    type: Literal["input_audio_buffer.commit"]


class InputAudioBufferClear(_ClientEvent):
    type: Literal["input_audio_buffer.clear"]


class OutputAudioBufferClear(_ClientEvent):
    """WebRTC: stop playing the reply audio the server has already sent (it cancels the response too)."""

    type: Literal["output_audio_buffer.clear"]


class ContentPart(_Strict):
    type: Literal["input_text", "input_audio", "text", "output_text", "output_audio", "audio"]
    text: str | None = None
    audio: str | None = None
    transcript: str | None = None


class Item(_Strict):
    id: str | None = Field(default=None, max_length=64)
    type: Literal["message", "function_call", "function_call_output", "mcp_approval_response"] = "message"
    role: Literal["user", "assistant", "system"] | None = None
    content: list[ContentPart] = Field(default_factory=list)
    call_id: str | None = None  # function_call, function_call_output
    name: str | None = None  # function_call
    arguments: str | None = None  # function_call
    output: str | None = None  # function_call_output
    approval_request_id: str | None = None  # mcp_approval_response
    approve: bool | None = None  # mcp_approval_response
    reason: str | None = None  # mcp_approval_response


class ConversationItemCreate(_ClientEvent):
    type: Literal["conversation.item.create"]
    item: Item
    previous_item_id: str | None = None


class ConversationItemTruncate(_ClientEvent):
    type: Literal["conversation.item.truncate"]
    item_id: str
    content_index: int = Field(ge=0)
    audio_end_ms: int = Field(ge=0)


class ConversationItemDelete(_ClientEvent):
    type: Literal["conversation.item.delete"]
    item_id: str


class ConversationItemRetrieve(_ClientEvent):
    type: Literal["conversation.item.retrieve"]
    item_id: str


class ResponseParams(_Strict):
    """`response.create`'s `response`: per-response overrides."""

    instructions: str | None = None
    metadata: dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=512)]] | None = Field(
        default=None, max_length=16)
    conversation: Literal["auto", "none"] | str | None = None
    output_modalities: list[Literal["audio", "text"]] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    max_output_tokens: int | Literal["inf"] | None = None
    input: list[dict[str, Any]] | None = None
    audio: dict[str, Any] | None = None


class ResponseCreate(_ClientEvent):
    type: Literal["response.create"]
    response: ResponseParams | None = None


class ResponseCancel(_ClientEvent):
    type: Literal["response.cancel"]
    response_id: str | None = None


_EVENT_MODELS = (SessionUpdate, InputAudioBufferAppend, InputAudioBufferCommit, InputAudioBufferClear,
                 OutputAudioBufferClear, ConversationItemCreate, ConversationItemTruncate, ConversationItemDelete,
                 ConversationItemRetrieve, ResponseCreate, ResponseCancel)
ClientEvent = Annotated[
    SessionUpdate | InputAudioBufferAppend | InputAudioBufferCommit | InputAudioBufferClear | OutputAudioBufferClear
    | ConversationItemCreate | ConversationItemTruncate | ConversationItemDelete | ConversationItemRetrieve
    | ResponseCreate | ResponseCancel,
    Field(discriminator="type"),
]
_client_event = TypeAdapter(ClientEvent)
CLIENT_EVENT_TYPES = frozenset(model.model_fields["type"].annotation.__args__[0] for model in _EVENT_MODELS)


def validation_error(exc: ValidationError, data: Any, prefix: str = "",  # noqa: ANN401 - the raw JSON
                     event_id: str | None = None) -> ProtocolError:
    """The first problem pydantic found, as an `invalid_value` error naming the field as the client wrote it
    (pydantic's location also holds union tags and type names, which are not in the message)."""
    first = exc.errors()[0]
    path, node = [], data
    for part in first["loc"]:
        if isinstance(node, dict) and part in node:
            path.append(str(part))
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            path.append(str(part))
            node = node[part]
    param = ".".join(p for p in (prefix, *path) if p) or None
    return ProtocolError("invalid_value", f"{param or 'value'}: {first['msg']}", param=param, event_id=event_id)


def parse_client_event(raw: str | bytes, max_bytes: int) -> ClientEvent:
    """One text message -> a typed client event, or ProtocolError saying exactly what is wrong."""
    size = len(raw.encode("utf-8", "surrogatepass")) if isinstance(raw, str) else len(raw)
    if size > max_bytes:  # bytes on the wire, not characters: 1 MiB of 3-byte characters is 3 MiB
        raise ProtocolError("message_too_large", f"message of {size} bytes exceeds the limit of {max_bytes} "
                            "bytes; send audio in smaller input_audio_buffer.append chunks")
    try:
        data = loads_strict(raw)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, bad UTF-8, an int past Python's digit limit
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
        event = _client_event.validate_python(data)
    except ValidationError as exc:
        raise validation_error(exc, data, event_id=event_id) from None
    except RecursionError:
        raise ProtocolError("invalid_value", "the event is nested too deeply", event_id=event_id) from None
    if isinstance(event, InputAudioBufferAppend):
        try:
            event._data = base64.b64decode(event.audio, validate=True)
        except (binascii.Error, ValueError):
            raise ProtocolError("invalid_base64", "audio is not valid base64", param="audio",
                                event_id=event_id) from None
    return event
