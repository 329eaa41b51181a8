"""The OpenAI Realtime protocol at the edge, for every wire that carries it (the WebSocket, WebRTC's
`oai-events` data channel and so the sideband, the text-mode harness).

In: a client's text message becomes a typed client event (`protocol/client_events`: JSON, base64 audio, sizes,
types and fields all checked) before the session sees it, and anything wrong with it becomes an `error` event
naming the field. Out: the session's domain events (agent/events.py) become the wire events a client reads
(`RealtimeEncoder`): the response's choreography (an item is both `response.output_item.added` and
`conversation.item.added`; a spoken message closes with `output_audio.done`, `output_audio_transcript.done` and
`content_part.done`), the items' and responses' wire shapes, and which events are ours (`higgs.*`, sent only to a
session that asked). The session itself speaks neither JSON nor this protocol's event names.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from higgs_agent.agent.events import (
    AgentFailed,
    CallArgumentsDone,
    CallArgumentsGrew,
    CallerUnderstood,
    DomainEvent,
    ErrorReported,
    InputCleared,
    InputCommitted,
    ItemAdded,
    ItemDeleted,
    ItemFinished,
    ItemShown,
    KeyPressed,
    McpCallRunning,
    Place,
    ReplyCut,
    ReplyFinished,
    ReplyItemAdded,
    ReplyItemDone,
    ReplyMessageClosed,
    ReplyMessageOpened,
    ReplyStarted,
    ReplyState,
    ReplyWords,
    SessionChanged,
    SessionOpened,
    ToolsListing,
    TranscriptionFailed,
    TurnTimed,
    UserSpeechEnded,
    UserSpeechStarted,
    UserTranscribed,
    UserTranscriptGrew,
)
from higgs_agent.protocol import client_events as ce
from higgs_agent.protocol import server_events as se
from higgs_agent.protocol.errors import ProtocolError

if TYPE_CHECKING:
    from higgs_agent.agent.config import SessionConfig
    from higgs_agent.agent.conversation import ConversationItem
    from higgs_agent.agent.session import Session


async def deliver(session: Session, raw: str | bytes) -> None:
    """One client message off the wire, to the session; OutputClosed (the client cannot be reached any more)
    is for the transport to act on."""
    try:
        event = ce.parse_client_event(raw, session.services.max_event_bytes)
    except ProtocolError as exc:
        await session.report(exc)
        return
    await session.handle(event)


# --- out: the session's domain events as Realtime wire events -------------------------------------------------


class RealtimeEncoder:
    """A session's domain events (agent/events.py) as the Realtime events a client reads, for one connection.

    It remembers what the session last said of its configuration: extension events (`higgs.*`) reach only a
    session that opted in (`session.higgs.extension_events`), as a standard client rejects types it does not
    know. Observer-only facts (a pause judged, an interruption settled) have no wire form."""

    def __init__(self) -> None:
        self._config: SessionConfig | None = None

    def encode(self, event: DomainEvent) -> list[se.ServerEvent]:
        if isinstance(event, SessionOpened | SessionChanged):
            self._config = event.config
        config = self._config
        return [wire for wire in _encode(event) if not wire.is_extension  # type: ignore[attr-defined]
                or (config is not None and config.sends_extension(wire.type))]  # type: ignore[attr-defined]

    def texts(self, event: DomainEvent) -> list[str]:
        """The event as the JSON text messages a client reads."""
        return [se.to_wire(wire) for wire in self.encode(event)]


def _encode(event: DomainEvent) -> list[se.ServerEvent]:  # noqa: C901, PLR0911, PLR0912 - one case per event
    match event:
        case SessionOpened(config, tools) | SessionChanged(config, tools):
            kind = se.SessionCreated if isinstance(event, SessionOpened) else se.SessionUpdated
            tools_shown = {} if config.transcribes_only else tools.to_dict()  # a transcription session has none
            return [kind(session={**config.to_dict(), **tools_shown})]
        case ErrorReported(error):
            return [se.Error.of(error)]
        case AgentFailed(code, message):
            return [se.Error(error=se.ErrorDetail(type="server_error", code=code, message=message))]
        case UserSpeechStarted(item_id, audio_start_ms):
            return [se.SpeechStarted(audio_start_ms=audio_start_ms, item_id=item_id)]
        case UserSpeechEnded(item_id, audio_end_ms):
            return [se.SpeechStopped(audio_end_ms=audio_end_ms, item_id=item_id)]
        case InputCommitted(item_id, previous):
            return [se.InputAudioCommitted(previous_item_id=previous, item_id=item_id)]
        case InputCleared():
            return [se.InputAudioCleared()]
        case KeyPressed(digit, at):
            return [se.DtmfReceived(event=digit, received_at=int(at))]
        case UserTranscriptGrew(item_id, delta):
            return [se.TranscriptionDelta(item_id=item_id, delta=delta)]
        case UserTranscribed(item_id, text, language, audio_s):
            return [se.TranscriptionCompleted(item_id=item_id, transcript=text,
                                              usage=se.DurationUsage(seconds=round(audio_s, 3)),
                                              languages=[se.TranscriptLanguage(code=language or "")])]
        case TranscriptionFailed(item_id, message):
            return [se.TranscriptionFailed(item_id=item_id, error=se.ErrorDetail(
                type="transcription_error", code="transcription_failed", message=message))]
        case CallerUnderstood(item_id, context):
            return [se.InputContext(item_id=item_id, **context.to_event_fields())]
        case ItemAdded(item, previous):
            return [se.ItemAdded(previous_item_id=previous, item=wire_item(item))]
        case ItemFinished(item, previous):
            return [se.ItemDone(previous_item_id=previous, item=wire_item(item))]
        case ItemDeleted(item_id):
            return [se.ItemDeleted(item_id=item_id)]
        case ItemShown(item):
            return [se.ItemRetrieved(item=wire_item(item))]
        case ToolsListing(item_id, state):
            return [{"in_progress": se.McpListToolsInProgress, "completed": se.McpListToolsCompleted,
                     "failed": se.McpListToolsFailed}[state](item_id=item_id)]
        case ReplyCut(item_id, heard_ms):
            return [se.ItemTruncated(item_id=item_id, content_index=0, audio_end_ms=int(heard_ms))]
        case TurnTimed(response_id, user_item_id, _, stages_ms):
            return [se.TurnLatency(response_id=response_id, item_id=user_item_id, latency_ms=dict(stages_ms))]
        case ReplyStarted(state):
            return [se.ResponseCreated(response=wire_response(state, with_output=False))]
        case ReplyFinished(state=state) if state is not None:
            return [se.ResponseDone(response=wire_response(state))]
        case ReplyItemAdded(place, item, previous):
            return [se.OutputItemAdded(response_id=place.response_id, output_index=place.output_index,
                                       item=wire_item(item)),
                    se.ItemAdded(previous_item_id=previous, item=wire_item(item))]
        case ReplyItemDone(place, item, previous):
            return [se.OutputItemDone(response_id=place.response_id, output_index=place.output_index,
                                      item=wire_item(item)),
                    se.ItemDone(previous_item_id=previous, item=wire_item(item))]
        case ReplyMessageOpened(place, spoken):
            part = se.AudioPart(type="audio", transcript="") if spoken else se.TextPart(type="text", text="")
            return [se.ContentPartAdded(**_part(place), part=part)]
        case ReplyWords(place, delta, spoken):
            kind = se.OutputTranscriptDelta if spoken else se.OutputTextDelta
            return [kind(**_part(place), delta=delta)]
        case ReplyMessageClosed(place, text, spoken) if spoken:
            return [se.OutputAudioDone(**_part(place)),
                    se.OutputTranscriptDone(**_part(place), transcript=text or ""),
                    se.ContentPartDone(**_part(place), part=se.AudioPart(type="audio", transcript=text))]
        case ReplyMessageClosed(place, text):
            return [se.OutputTextDone(**_part(place), text=text or ""),
                    se.ContentPartDone(**_part(place), part=se.TextPart(type="text", text=text or ""))]
        case CallArgumentsGrew(place, item, delta) if item.kind == "function_call":
            assert item.call is not None
            return [se.FunctionCallArgumentsDelta(response_id=place.response_id, item_id=item.id,
                                                  output_index=place.output_index, call_id=item.call.call_id,
                                                  delta=delta)]
        case CallArgumentsGrew(place, item, delta):
            return [se.McpCallArgumentsDelta(response_id=place.response_id, item_id=item.id,
                                             output_index=place.output_index, delta=delta)]
        case CallArgumentsDone(place, item) if item.kind == "function_call":
            assert item.call is not None
            return [se.FunctionCallArgumentsDone(response_id=place.response_id, item_id=item.id,
                                                 output_index=place.output_index, call_id=item.call.call_id,
                                                 name=item.call.name, arguments=item.call.arguments)]
        case CallArgumentsDone(place, item):
            assert item.call is not None
            return [se.McpCallArgumentsDone(response_id=place.response_id, item_id=item.id,
                                            output_index=place.output_index, arguments=item.call.arguments)]
        case McpCallRunning(place, state):
            return [{"in_progress": se.McpCallInProgress, "completed": se.McpCallCompleted,
                     "failed": se.McpCallFailed}[state](item_id=place.item_id, output_index=place.output_index)]
    return []  # PauseJudged, InterruptionJudged, a ReplyFinished without its state: for observers only


def _part(place: Place) -> dict[str, Any]:
    return {"response_id": place.response_id, "item_id": place.item_id, "output_index": place.output_index,
            "content_index": 0}


def wire_response(state: ReplyState, with_output: bool = True) -> se.Response:
    details = None
    if state.status not in ("in_progress", "completed"):
        error = None if state.failure is None else se.StatusError(type="server_error", code=state.failure.code,
                                                                  message=state.failure.message)
        reason = state.reason if state.status in ("cancelled", "incomplete") else None  # a stop that then failed
        details = se.StatusDetails(type=state.status, reason=reason, error=error)  # type: ignore[arg-type]
    usage = state.usage
    return se.Response(id=state.response_id, status=state.status, status_details=details,  # type: ignore[arg-type]
                       output=[wire_item(item) for item in state.items] if with_output else [],
                       usage=None if usage is None else se.Usage.of(usage.text_in, usage.audio_in, usage.text_out,
                                                                    usage.audio_out),
                       metadata=dict(state.metadata) if state.metadata is not None else None,
                       output_modalities=["text" if state.text_only else "audio"])


def wire_item(item: ConversationItem) -> se.Item:
    """A conversation item as the Realtime protocol shows it."""
    if item.kind != "message":
        return _tool_item(item)
    part: se.TextPart | se.AudioPart
    if item.content_type in ("input_text", "output_text"):
        part = se.TextPart(type=item.content_type, text=item.text or "")
    else:
        part = se.AudioPart(type=item.content_type, transcript=item.text)
    return se.MessageItem(id=item.id, status=item.status, role=item.role, content=[part])


def _tool_item(item: ConversationItem) -> se.Item:
    call = item.call
    assert call is not None
    if item.kind == "function_call":
        return se.FunctionCallItem(id=item.id, status=item.status, call_id=call.call_id, name=call.name,
                                   arguments=call.arguments)
    if item.kind == "function_call_output":
        return se.FunctionCallOutputItem(id=item.id, call_id=call.call_id, output=call.output or "")
    if item.kind == "mcp_call":
        return se.McpCallItem(id=item.id, server_label=call.server_label or "", name=call.name,
                              arguments=call.arguments, output=call.output, error=call.error,
                              approval_request_id=call.approval_request_id)
    if item.kind == "mcp_list_tools":
        return se.McpListToolsItem(id=item.id, server_label=call.server_label or "", tools=call.tools or [])
    if item.kind == "mcp_approval_request":
        return se.McpApprovalRequestItem(id=item.id, server_label=call.server_label or "", name=call.name,
                                         arguments=call.arguments)
    return se.McpApprovalResponseItem(id=item.id, approval_request_id=call.approval_request_id or "",
                                      approve=bool(call.approve), reason=call.reason)
