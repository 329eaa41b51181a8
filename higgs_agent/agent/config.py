"""A session's settings, as `session.update` sets them and `session.updated` reports them.

Only the fields a voice agent acts on are kept; the rest of a `session.update` is accepted and ignored.
Extensions of ours: `responder` (echo | llm | native) and `audio.output.voice` = "caller" (reply in the
caller's own voice, cloned from their last turn: the translation use case). A bad value raises
`ProtocolError` naming the field, and the settings stay as they were.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from typing import Any

from higgs_agent.agent.events import ProtocolError, new_id
from higgs_agent.agent.vad import VadSettings
from higgs_agent.audio_formats import AudioFormat, AudioFormatError

RESPONDERS = ("echo", "llm", "native")
SEMANTIC_PAUSE_MS = {"low": 1200, "medium": 600, "auto": 600, "high": 300}  # eagerness -> pause that ends a turn
CALLER_VOICE = "caller"


@dataclass(frozen=True)
class TurnDetection:
    """Server VAD settings plus what a detected turn does."""

    vad: VadSettings = field(default_factory=VadSettings)
    create_response: bool = True
    interrupt_response: bool = True
    eagerness: str | None = None  # set when the client asked for semantic_vad (served by the same VAD)

    def to_dict(self) -> dict[str, Any]:
        flags = {"create_response": self.create_response, "interrupt_response": self.interrupt_response}
        if self.eagerness is not None:
            return {"type": "semantic_vad", "eagerness": self.eagerness, **flags}
        return {**self.vad.to_turn_detection(), **flags}


@dataclass(frozen=True)
class SessionConfig:
    model: str
    responder: str = "echo"
    instructions: str = "You are a helpful, concise voice assistant. Answer in one or two short sentences."
    input_format: AudioFormat = field(default_factory=AudioFormat)
    output_format: AudioFormat = field(default_factory=AudioFormat)
    turn_detection: TurnDetection | None = field(default_factory=TurnDetection)
    transcription_model: str = "whisper"
    voice: str = "default"
    latency_events: bool = True  # extension: send higgs.turn.latency (clients that reject unknown events: false)
    id: str = field(default_factory=lambda: new_id("sess"))

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": "realtime", "object": "realtime.session", "id": self.id, "model": self.model,
            "output_modalities": ["audio"], "instructions": self.instructions, "responder": self.responder,
            "latency_events": self.latency_events,
            "audio": {
                "input": {"format": self.input_format.to_session(),
                          "turn_detection": None if self.turn_detection is None else self.turn_detection.to_dict(),
                          "transcription": {"model": self.transcription_model}},
                "output": {"format": self.output_format.to_session(), "voice": self.voice},
            },
        }

    def updated(self, session: dict[str, Any], available_responders: tuple[str, ...]) -> SessionConfig:
        """A copy with `session.update`'s fields applied; ProtocolError for the first bad one."""
        changes: dict[str, Any] = {}
        if "instructions" in session:
            changes["instructions"] = _string(session["instructions"], "session.instructions")
        if "responder" in session:
            name = session["responder"]
            if name not in available_responders:
                raise ProtocolError("invalid_value", f"responder must be one of {', '.join(available_responders)}"
                                    f" on this server, got {name!r}", param="session.responder")
            changes["responder"] = name
        if "latency_events" in session:
            if not isinstance(session["latency_events"], bool):
                raise ProtocolError("invalid_value", "session.latency_events must be true or false",
                                    param="session.latency_events")
            changes["latency_events"] = session["latency_events"]
        modalities = session.get("output_modalities")
        if modalities is not None and "audio" not in modalities:
            raise ProtocolError("invalid_value", "this server always answers with audio; output_modalities must "
                                "include 'audio'", param="session.output_modalities")
        audio = _object(session.get("audio"), "session.audio")
        inp = _object(audio.get("input"), "session.audio.input")
        out = _object(audio.get("output"), "session.audio.output")
        if "format" in inp:
            changes["input_format"] = _format(inp["format"], "session.audio.input.format")
        if "turn_detection" in inp:
            changes["turn_detection"] = self._turn_detection(inp["turn_detection"])
        if "format" in out:
            fmt = _format(out["format"], "session.audio.output.format")
            changes["output_format"] = fmt
        if "voice" in out:
            changes["voice"] = _string(out["voice"], "session.audio.output.voice")
        return replace(self, **changes)

    def _turn_detection(self, value: Any) -> TurnDetection | None:
        param = "session.audio.input.turn_detection"
        if value is None:
            return None
        value = _object(value, param)
        kind = value.get("type", "server_vad")
        if kind == "semantic_vad":
            return self._semantic_vad(value, param)
        if kind != "server_vad":
            raise ProtocolError("invalid_value", f"turn_detection.type must be 'server_vad', 'semantic_vad' or the "
                                f"whole field null, got {kind!r}", param=f"{param}.type")
        base = self.turn_detection or TurnDetection()
        if base.eagerness is not None:
            base = TurnDetection()
        merged = {k: v for k, v in {**base.to_dict(), **value}.items() if v is not None}
        if "threshold" in value and "aggressiveness" not in value:
            merged.pop("aggressiveness", None)  # a new threshold sets the aggressiveness
        elif "threshold" not in value:
            merged.pop("threshold", None)  # keep the current aggressiveness
        try:
            vad = VadSettings.from_turn_detection(copy.deepcopy(merged))
        except ValueError as exc:
            raise ProtocolError("invalid_value", str(exc), param=param) from None
        return TurnDetection(vad=vad, create_response=bool(merged.get("create_response", True)),
                             interrupt_response=bool(merged.get("interrupt_response", True)))


    def _semantic_vad(self, value: dict[str, Any], param: str) -> TurnDetection:
        """No semantic turn model here: semantic_vad is served by the VAD, its eagerness setting how long a
        pause ends a turn. Accepted (not refused) because SDKs ask for it by default."""
        eagerness = value.get("eagerness", "auto")
        if eagerness not in SEMANTIC_PAUSE_MS:
            raise ProtocolError("invalid_value", f"turn_detection.eagerness must be one of "
                                f"{', '.join(SEMANTIC_PAUSE_MS)}, got {eagerness!r}", param=f"{param}.eagerness")
        vad = VadSettings(silence_duration_ms=SEMANTIC_PAUSE_MS[eagerness])
        return TurnDetection(vad=vad, create_response=bool(value.get("create_response", True)),
                             interrupt_response=bool(value.get("interrupt_response", True)), eagerness=eagerness)


def _object(value: Any, param: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ProtocolError("invalid_value", f"{param} must be an object", param=param)
    return value


def _string(value: Any, param: str) -> str:
    if not isinstance(value, str):
        raise ProtocolError("invalid_value", f"{param} must be a string", param=param)
    return value


def _format(value: Any, param: str) -> AudioFormat:
    try:
        return AudioFormat.from_session(value, param=param)
    except AudioFormatError as exc:
        raise ProtocolError("invalid_value", str(exc), param=exc.param or param) from None
