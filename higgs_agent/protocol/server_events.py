"""Every event the server sends, as a type: OpenAI Realtime GA events, plus ours under the `higgs.` prefix.

An event is built from its model (`ResponseCreated(response=...)`), never from a bare string, so a field
cannot be misspelt and a test can check each one against OpenAI's own schema (tests/third_party.py holds
them to openai-python's models). `to_wire(event)` gives the JSON text a transport sends.

Extension events (`higgs.turn.latency`, `higgs.input.context`) reach only sessions that opted in
(`session.higgs.extension_events`): a standard client never sees an event type it does not know.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from higgs_agent.protocol.errors import ProtocolError, new_id

EXTENSION_PREFIX = "higgs."


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Event(_Model):
    event_id: str = Field(default_factory=lambda: new_id("event"))

    @property
    def is_extension(self) -> bool:
        return self.type.startswith(EXTENSION_PREFIX)  # type: ignore[attr-defined]


# --- pieces ---------------------------------------------------------------------------------------------


class ErrorDetail(_Model):
    type: str
    code: str | None = None
    message: str
    param: str | None = None
    event_id: str | None = None


class TextPart(_Model):
    type: Literal["input_text", "output_text", "text"]
    text: str


class AudioPart(_Model):
    type: Literal["input_audio", "output_audio", "audio"]
    transcript: str | None = None


class MessageItem(_Model):
    id: str
    type: Literal["message"] = "message"
    object: Literal["realtime.item"] = "realtime.item"
    status: Literal["completed", "incomplete", "in_progress"] = "completed"
    role: Literal["user", "assistant", "system"]
    content: list[TextPart | AudioPart]


class FunctionCallItem(_Model):
    id: str
    type: Literal["function_call"] = "function_call"
    object: Literal["realtime.item"] = "realtime.item"
    status: Literal["completed", "incomplete", "in_progress"] = "completed"
    call_id: str
    name: str
    arguments: str


class FunctionCallOutputItem(_Model):
    id: str
    type: Literal["function_call_output"] = "function_call_output"
    object: Literal["realtime.item"] = "realtime.item"
    status: Literal["completed", "incomplete", "in_progress"] = "completed"
    call_id: str
    output: str


class McpCallItem(_Model):
    id: str
    type: Literal["mcp_call"] = "mcp_call"
    server_label: str
    name: str
    arguments: str
    approval_request_id: str | None = None
    output: str | None = None
    error: dict[str, Any] | None = None  # {type: protocol_error | tool_execution_error | http_error, message, code?}


class McpListToolsItem(_Model):
    id: str
    type: Literal["mcp_list_tools"] = "mcp_list_tools"
    server_label: str
    tools: list[dict[str, Any]]  # {name, input_schema, description, annotations}


class McpApprovalRequestItem(_Model):
    id: str
    type: Literal["mcp_approval_request"] = "mcp_approval_request"
    server_label: str
    name: str
    arguments: str


class McpApprovalResponseItem(_Model):
    id: str
    type: Literal["mcp_approval_response"] = "mcp_approval_response"
    approval_request_id: str
    approve: bool
    reason: str | None = None


Item = (MessageItem | FunctionCallItem | FunctionCallOutputItem | McpCallItem | McpListToolsItem
        | McpApprovalRequestItem | McpApprovalResponseItem)


class StatusError(_Model):
    type: str
    code: str | None = None
    message: str | None = None


class StatusDetails(_Model):
    type: Literal["completed", "cancelled", "incomplete", "failed"]
    reason: Literal["turn_detected", "client_cancelled", "max_output_tokens", "content_filter"] | None = None
    error: StatusError | None = None


class InputTokenDetails(_Model):
    text_tokens: int = 0
    audio_tokens: int = 0
    cached_tokens: int = 0


class OutputTokenDetails(_Model):
    text_tokens: int = 0
    audio_tokens: int = 0


class Usage(_Model):
    total_tokens: int
    input_tokens: int
    output_tokens: int
    input_token_details: InputTokenDetails
    output_token_details: OutputTokenDetails

    @classmethod
    def of(cls, text_in: int, audio_in: int, text_out: int, audio_out: int) -> Usage:
        return cls(total_tokens=text_in + audio_in + text_out + audio_out, input_tokens=text_in + audio_in,
                   output_tokens=text_out + audio_out,
                   input_token_details=InputTokenDetails(text_tokens=text_in, audio_tokens=audio_in),
                   output_token_details=OutputTokenDetails(text_tokens=text_out, audio_tokens=audio_out))


class Response(_Model):
    object: Literal["realtime.response"] = "realtime.response"
    id: str
    status: Literal["completed", "cancelled", "failed", "incomplete", "in_progress"]
    status_details: StatusDetails | None = None
    output: list[Item] = Field(default_factory=list)
    output_modalities: list[Literal["audio", "text"]] = Field(default_factory=lambda: ["audio"])
    usage: Usage | None = None
    metadata: dict[str, str] | None = None
    conversation_id: str | None = None


class TranscriptLanguage(_Model):
    code: str


class DurationUsage(_Model):
    type: Literal["duration"] = "duration"
    seconds: float


# --- session --------------------------------------------------------------------------------------------


class SessionCreated(_Event):
    type: Literal["session.created"] = "session.created"
    session: dict[str, Any]


class SessionUpdated(_Event):
    type: Literal["session.updated"] = "session.updated"
    session: dict[str, Any]


class Error(_Event):
    type: Literal["error"] = "error"
    error: ErrorDetail

    @classmethod
    def of(cls, exc: ProtocolError) -> Error:
        return cls(error=ErrorDetail(type=exc.type, code=exc.code, message=exc.message, param=exc.param,
                                     event_id=exc.event_id))


# --- input audio ----------------------------------------------------------------------------------------


class SpeechStarted(_Event):
    type: Literal["input_audio_buffer.speech_started"] = "input_audio_buffer.speech_started"
    audio_start_ms: int
    item_id: str


class SpeechStopped(_Event):
    type: Literal["input_audio_buffer.speech_stopped"] = "input_audio_buffer.speech_stopped"
    audio_end_ms: int
    item_id: str


class InputAudioCommitted(_Event):
    type: Literal["input_audio_buffer.committed"] = "input_audio_buffer.committed"
    previous_item_id: str | None = None
    item_id: str


class InputAudioCleared(_Event):
    type: Literal["input_audio_buffer.cleared"] = "input_audio_buffer.cleared"


class DtmfReceived(_Event):
    """A key the caller pressed on a phone call (OpenAI's SIP event; Twilio's `dtmf` arrives as this)."""

    type: Literal["input_audio_buffer.dtmf_event_received"] = "input_audio_buffer.dtmf_event_received"
    event: str
    received_at: int


# --- conversation ---------------------------------------------------------------------------------------


class ItemAdded(_Event):
    type: Literal["conversation.item.added"] = "conversation.item.added"
    previous_item_id: str | None = None
    item: Item


class ItemDone(_Event):
    type: Literal["conversation.item.done"] = "conversation.item.done"
    previous_item_id: str | None = None
    item: Item


class ItemRetrieved(_Event):
    type: Literal["conversation.item.retrieved"] = "conversation.item.retrieved"
    item: Item


class ItemDeleted(_Event):
    type: Literal["conversation.item.deleted"] = "conversation.item.deleted"
    item_id: str


class ItemTruncated(_Event):
    type: Literal["conversation.item.truncated"] = "conversation.item.truncated"
    item_id: str
    content_index: int
    audio_end_ms: int


class TranscriptionCompleted(_Event):
    type: Literal["conversation.item.input_audio_transcription.completed"] = (
        "conversation.item.input_audio_transcription.completed")
    item_id: str
    content_index: int = 0
    transcript: str
    usage: DurationUsage
    languages: list[TranscriptLanguage] | None = None  # the language Whisper detected (or was told)


class TranscriptionDelta(_Event):
    """Words of a turn in progress (or just ended), agreed by two readings in a row; never taken back."""

    type: Literal["conversation.item.input_audio_transcription.delta"] = (
        "conversation.item.input_audio_transcription.delta")
    item_id: str
    content_index: int = 0
    delta: str


class TranscriptionFailed(_Event):
    type: Literal["conversation.item.input_audio_transcription.failed"] = (
        "conversation.item.input_audio_transcription.failed")
    item_id: str
    content_index: int = 0
    error: ErrorDetail


# --- response -------------------------------------------------------------------------------------------


class ResponseCreated(_Event):
    type: Literal["response.created"] = "response.created"
    response: Response


class ResponseDone(_Event):
    type: Literal["response.done"] = "response.done"
    response: Response


class OutputItemAdded(_Event):
    type: Literal["response.output_item.added"] = "response.output_item.added"
    response_id: str
    output_index: int
    item: Item


class OutputItemDone(_Event):
    type: Literal["response.output_item.done"] = "response.output_item.done"
    response_id: str
    output_index: int
    item: Item


class _PartEvent(_Event):
    response_id: str
    item_id: str
    output_index: int
    content_index: int


class ContentPartAdded(_PartEvent):
    type: Literal["response.content_part.added"] = "response.content_part.added"
    part: AudioPart | TextPart


class ContentPartDone(_PartEvent):
    type: Literal["response.content_part.done"] = "response.content_part.done"
    part: AudioPart | TextPart


class OutputTextDelta(_PartEvent):
    """A text-only response's words (`output_modalities: ["text"]`)."""

    type: Literal["response.output_text.delta"] = "response.output_text.delta"
    delta: str


class OutputTextDone(_PartEvent):
    type: Literal["response.output_text.done"] = "response.output_text.done"
    text: str


class OutputAudioDelta(_PartEvent):
    type: Literal["response.output_audio.delta"] = "response.output_audio.delta"
    delta: str  # base64 of the session's output format


class OutputAudioDone(_PartEvent):
    type: Literal["response.output_audio.done"] = "response.output_audio.done"


class OutputTranscriptDelta(_PartEvent):
    type: Literal["response.output_audio_transcript.delta"] = "response.output_audio_transcript.delta"
    delta: str


class OutputTranscriptDone(_PartEvent):
    type: Literal["response.output_audio_transcript.done"] = "response.output_audio_transcript.done"
    transcript: str


class OutputAudioBufferStarted(_Event):
    """WebRTC: a response's first audio frame went to the encoder (the agent is audible from now)."""

    type: Literal["output_audio_buffer.started"] = "output_audio_buffer.started"
    response_id: str


class OutputAudioBufferStopped(_Event):
    """WebRTC: a response's last frame went out (always after its response.done: the track plays at real time)."""

    type: Literal["output_audio_buffer.stopped"] = "output_audio_buffer.stopped"
    response_id: str


class OutputAudioBufferCleared(_Event):
    """WebRTC: a barge-in or the client's output_audio_buffer.clear dropped what had not been sent."""

    type: Literal["output_audio_buffer.cleared"] = "output_audio_buffer.cleared"
    response_id: str


class FunctionCallArgumentsDelta(_Event):
    type: Literal["response.function_call_arguments.delta"] = "response.function_call_arguments.delta"
    response_id: str
    item_id: str
    output_index: int
    call_id: str
    delta: str


class FunctionCallArgumentsDone(_Event):
    type: Literal["response.function_call_arguments.done"] = "response.function_call_arguments.done"
    response_id: str
    item_id: str
    output_index: int
    call_id: str
    name: str
    arguments: str


class McpCallArgumentsDelta(_Event):
    type: Literal["response.mcp_call_arguments.delta"] = "response.mcp_call_arguments.delta"
    response_id: str
    item_id: str
    output_index: int
    delta: str


class McpCallArgumentsDone(_Event):
    type: Literal["response.mcp_call_arguments.done"] = "response.mcp_call_arguments.done"
    response_id: str
    item_id: str
    output_index: int
    arguments: str


class McpCallInProgress(_Event):
    type: Literal["response.mcp_call.in_progress"] = "response.mcp_call.in_progress"
    item_id: str
    output_index: int


class McpCallCompleted(_Event):
    type: Literal["response.mcp_call.completed"] = "response.mcp_call.completed"
    item_id: str
    output_index: int


class McpCallFailed(_Event):
    type: Literal["response.mcp_call.failed"] = "response.mcp_call.failed"
    item_id: str
    output_index: int


class McpListToolsInProgress(_Event):
    type: Literal["mcp_list_tools.in_progress"] = "mcp_list_tools.in_progress"
    item_id: str


class McpListToolsCompleted(_Event):
    type: Literal["mcp_list_tools.completed"] = "mcp_list_tools.completed"
    item_id: str


class McpListToolsFailed(_Event):
    type: Literal["mcp_list_tools.failed"] = "mcp_list_tools.failed"
    item_id: str


# --- ours -----------------------------------------------------------------------------------------------


class TurnLatency(_Event):
    """Milliseconds from the end of the user's speech to each stage of the reply."""

    type: Literal["higgs.turn.latency"] = "higgs.turn.latency"
    response_id: str
    item_id: str | None
    latency_ms: dict[str, float | None]


class InputContext(_Event):
    """Who spoke the user turn and how (speaker, emotion, language)."""

    type: Literal["higgs.input.context"] = "higgs.input.context"
    item_id: str
    speaker: dict[str, Any] | None = None
    emotion: dict[str, Any] | None = None
    language: str | None = None


ServerEvent = _Event


def to_wire(event: ServerEvent) -> str:
    return event.model_dump_json()


def response_id_of(event: ServerEvent) -> str | None:
    """The response an event belongs to (its place in that response's ordered stream), if any."""
    if isinstance(event, ResponseCreated | ResponseDone):
        return event.response.id
    return getattr(event, "response_id", None)
