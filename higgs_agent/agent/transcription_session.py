"""Transcription sessions (OpenAI Realtime GA, `session.type: "transcription"`): live captions, no replies.

A client asks for one by connecting to `/v1/realtime?intent=transcription` (WebSocket or the WebRTC calls
endpoint), or with a client secret or call whose session config says `"type": "transcription"`. The session
hears audio exactly as a voice session does (the same VAD and turn detection, commit and clear, transcription
deltas and completed events) but never answers: no response is made, so no engine slot is ever taken and no
responder is asked. Its session object is `realtime.transcription_session`, whose fields are `type`, `audio.input`
and `include` only: a voice session's fields in a `session.update` are refused with an error naming them, and so
is changing the type once the session is open.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from higgs_agent.protocol.errors import ProtocolError
from higgs_agent.protocol.session_fields import SessionField, given

REALTIME = "realtime"
TRANSCRIPTION = "transcription"
INTENT = "intent"  # the query parameter that opens a transcription session: ?intent=transcription
LOGPROBS = "item.input_audio_transcription.logprobs"  # the one `include` value OpenAI defines
# A voice session's top-level fields: none of them is part of a transcription session's object.
_VOICE_FIELDS = ("model", "instructions", "output_modalities", "tools", "tool_choice", "max_output_tokens",
                 "parallel_tool_calls", "tracing", "truncation", "prompt", "reasoning", "responder",
                 "latency_events")
_VOICE_HIGGS_FIELDS = ("responder", "speakers", "translation")  # ours, about replies


def kind_of_intent(query: Mapping[str, str]) -> str | None:
    """The session type a connection's query asks for (None: the default, a voice session). ProtocolError for an
    intent this server does not know."""
    intent = query.get(INTENT)
    if intent is None:
        return None
    if intent != TRANSCRIPTION:
        raise ProtocolError("invalid_value", f"unknown intent {intent!r}: the only intent is {TRANSCRIPTION!r} "
                            "(a transcription session); leave it out for a voice session", param=INTENT)
    return TRANSCRIPTION


def intent_sessions(query: Mapping[str, str]) -> tuple[list[dict[str, Any]], list[ProtocolError]]:
    """The session config a connection's `?intent=` stands for (applied after any other, before the session
    opens), and the error to report for an unknown intent."""
    try:
        kind = kind_of_intent(query)
    except ProtocolError as exc:
        return [], [exc]
    return ([{"type": kind}] if kind is not None else []), []


def kind_of(sessions: Iterable[Mapping[str, Any]], default: str = REALTIME) -> str:
    """The type that a series of session configs, applied in order before a session opens, leaves it."""
    kind = default
    for raw in sessions:
        if raw.get("type") in (REALTIME, TRANSCRIPTION):
            kind = raw["type"]
    return kind


def voice_only_fields(session: SessionField) -> list[str]:
    """The paths of a voice session's fields given in a transcription session's `session.update`."""
    found = [f"session.{name}" for name in _VOICE_FIELDS if given(session, name)]
    if session.audio is not None and given(session.audio, "output"):
        found.append("session.audio.output")
    found += [f"session.higgs.{name}" for name in _VOICE_HIGGS_FIELDS if given(session.higgs, name)]
    return found


def refuse_voice_fields(session: SessionField) -> None:
    """ProtocolError (nothing applied) naming every voice-session field in a transcription session's update."""
    found = voice_only_fields(session)
    if found:
        raise ProtocolError("unknown_parameter", f"{', '.join(found)}: not part of a transcription session, which "
                            "makes no replies (its session has type, audio.input and include); nothing was applied",
                            param=found[0])


def check_include(include: list[str]) -> None:
    """ProtocolError for an `include` value OpenAI does not define for a transcription session."""
    for value in include:
        if value != LOGPROBS:
            raise ProtocolError("invalid_value", f"session.include: unknown value {value!r}; the only one is "
                                f"{LOGPROBS!r}", param="session.include")


def type_change_error(current: str) -> ProtocolError:
    how = ("connect to /v1/realtime?intent=transcription" if current == REALTIME
           else "connect to /v1/realtime without intent=transcription")
    other = TRANSCRIPTION if current == REALTIME else REALTIME
    return ProtocolError("invalid_value", f"session.type cannot change once a session is open: this is a "
                         f"{current!r} session; for a {other!r} session, {how}", param="session.type")


def no_responses_error(event_type: str) -> ProtocolError:
    return ProtocolError("invalid_request_error", f"{event_type} is not available in a transcription session: it "
                         "transcribes the audio it hears and never responds (for replies, open a voice session: "
                         "/v1/realtime without intent=transcription)", param="type")


def transcription_object(voice: Mapping[str, Any], include: Iterable[str]) -> dict[str, Any]:
    """A transcription session as `session.created`/`session.updated` show it (`realtime.transcription_session`),
    from the same session's voice-session object: its input audio settings, nothing about replies."""
    audio_input = dict(voice["audio"]["input"])
    detection = audio_input.get("turn_detection")
    if detection is not None:  # what a detected turn does to a response has no meaning here
        audio_input["turn_detection"] = {key: value for key, value in detection.items()
                                         if key not in ("create_response", "interrupt_response", "idle_timeout_ms")}
    higgs = {"extension_events": voice["higgs"]["extension_events"]}
    return {"type": TRANSCRIPTION, "object": "realtime.transcription_session", "id": voice["id"],
            "audio": {"input": audio_input}, "include": list(include), "higgs": higgs}
