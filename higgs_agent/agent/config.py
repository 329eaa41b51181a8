"""A session's settings, as `session.update` sets them and `session.updated` reports them.

`SessionConfig.updated` applies one `session` object: a value of the wrong type or out of range is an error
naming its field and nothing changes; a field this server does not support (or does not know) is reported
with its own error while every other field is applied, and `session.updated` then shows what is in force.
Nothing is dropped silently.

Ours, under `session.higgs`: `extension_events` (send higgs.* events to this session), `responder`
(echo | llm | native | local), `speakers` (a voice per [SPEAKERn] of multi-speaker replies), `translation`
({to, from}: speak each of the caller's turns back translated, in the caller's own voice unless another is
set). `audio.output.voice = "caller"` replies in the caller's own voice.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from pydantic import ValidationError

from higgs_agent.agent.end_of_turn import EndOfTurnPolicy
from higgs_agent.agent.noise import NoiseReduction
from higgs_agent.agent.vad import VadSettings, threshold_to_aggressiveness
from higgs_agent.audio_formats import AudioFormat, AudioFormatError
from higgs_agent.protocol.client_events import validation_error
from higgs_agent.protocol.errors import ProtocolError, new_id
from higgs_agent.protocol.session_fields import (
    FormatField,
    InputField,
    NoiseReductionField,
    OutputField,
    SemanticVadField,
    ServerVadField,
    SessionField,
    given,
    unknown_fields,
)

RESPONDERS = ("echo", "llm", "native", "local")
TRANSLATORS = ("llm", "local")  # the responders that can write a translation, in order of preference
CALLER_VOICE = "caller"
# OpenAI's built-in voice names, which SDKs send by default: accepted as this server's default voice (unless a
# voice of the same name is configured), so a client written for OpenAI works unchanged.
OPENAI_VOICES = frozenset({"alloy", "ash", "ballad", "coral", "echo", "fable", "nova", "onyx", "sage", "shimmer",
                           "verse", "marin", "cedar"})
DEFAULT_INSTRUCTIONS = "You are a helpful, concise voice assistant. Answer in one or two short sentences."


def output_modality(modalities: list[str], param: str) -> str:
    """`["audio"]` (speech and its transcript) or `["text"]` (words only), as OpenAI allows: not both."""
    if len(set(modalities)) != 1:
        raise ProtocolError("invalid_value", 'output_modalities must be ["audio"] or ["text"]: a response is '
                            "speech with its transcript, or text alone", param=param)
    return modalities[0]


@dataclass(frozen=True)
class TurnDetection:
    """Server VAD settings plus what a detected turn does."""

    vad: VadSettings = field(default_factory=VadSettings)
    create_response: bool = True
    interrupt_response: bool = True
    eagerness: str | None = None  # set when the client asked for semantic_vad: pauses are judged (end_of_turn.py)

    @property
    def end_of_turn(self) -> EndOfTurnPolicy | None:
        return EndOfTurnPolicy.for_eagerness(self.eagerness) if self.eagerness is not None else None

    def to_dict(self) -> dict[str, Any]:
        """OpenAI's fields only (our VAD knobs are shown under session.higgs.turn_detection)."""
        flags = {"create_response": self.create_response, "interrupt_response": self.interrupt_response}
        if self.eagerness is not None:
            return {"type": "semantic_vad", "eagerness": self.eagerness, **flags}
        vad = self.vad
        return {"type": "server_vad", "threshold": (vad.aggressiveness + 0.5) / 4,
                "prefix_padding_ms": vad.prefix_padding_ms, "silence_duration_ms": vad.silence_duration_ms,
                **flags, "idle_timeout_ms": None}


@dataclass(frozen=True)
class Transcription:
    model: str  # the model that actually transcribes (shown whatever the client asked for)
    language: str | None = None
    prompt: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "language": self.language, "prompt": self.prompt}


@dataclass(frozen=True)
class Translation:
    to: str
    source: str | None = None
    simultaneous: bool = True  # clauses translated while the caller goes on (agent/interpreting.py)

    def to_dict(self) -> dict[str, Any]:
        return {"to": self.to, "from": self.source, "simultaneous": self.simultaneous}


@dataclass(frozen=True)
class ServerOffer:
    """What this server can do, for checking a session's settings against it."""

    responders: tuple[str, ...] = ("echo",)
    is_voice: Callable[[str], bool] = lambda name: name == "default"
    voice_names: Callable[[], list[str]] = lambda: ["default"]
    asr_model: str = "whisper"
    asr_multilingual: bool = False


@dataclass(frozen=True)
class SessionConfig:
    model: str
    responder: str = "echo"
    instructions: str = DEFAULT_INSTRUCTIONS
    input_format: AudioFormat = field(default_factory=AudioFormat)
    output_format: AudioFormat = field(default_factory=AudioFormat)
    turn_detection: TurnDetection | None = field(default_factory=TurnDetection)
    transcription: Transcription = field(default_factory=lambda: Transcription("whisper"))
    voice: str = "default"
    extension_events: bool = False
    latency_events: bool | None = None  # the older per-event switch: None follows extension_events
    max_output_tokens: int | str = "inf"
    output_modality: str = "audio"  # "audio" (speech with its transcript) or "text" (words only, no speech)
    speakers: tuple[str, ...] = ()  # voices for [SPEAKER0], [SPEAKER1], ... (multi-speaker replies)
    translation: Translation | None = None
    noise_reduction: NoiseReduction | None = None  # the caller's audio suppressed before VAD and ASR (agent/noise)
    id: str = field(default_factory=lambda: new_id("sess"))

    def with_responder(self, responder: str) -> SessionConfig:
        return replace(self, responder=responder)

    def sends_extension(self, event_type: str) -> bool:
        """Whether an extension event goes to this session (standard clients reject types they do not know)."""
        if event_type == "higgs.turn.latency" and self.latency_events is not None:
            return self.latency_events
        return self.extension_events

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": "realtime", "object": "realtime.session", "id": self.id, "model": self.model,
            "output_modalities": [self.output_modality], "instructions": self.instructions,
            "max_output_tokens": self.max_output_tokens,
            "tracing": None, "truncation": "auto", "prompt": None, "include": [],
            "audio": {
                "input": {"format": self.input_format.to_session(),
                          "turn_detection": None if self.turn_detection is None else self.turn_detection.to_dict(),
                          "transcription": self.transcription.to_dict(),
                          "noise_reduction": None if self.noise_reduction is None else self.noise_reduction.to_dict()},
                "output": {"format": self.output_format.to_session(), "voice": self.voice, "speed": 1.0},
            },
            "higgs": {"responder": self.responder, "extension_events": self.extension_events,
                      "speakers": list(self.speakers),
                      "translation": None if self.translation is None else self.translation.to_dict(),
                      "turn_detection": None if self.turn_detection is None else {
                          "aggressiveness": self.turn_detection.vad.aggressiveness,
                          "min_speech_ms": self.turn_detection.vad.min_speech_ms,
                          "silence_duration_ms": self.turn_detection.vad.silence_duration_ms}},
        }

    def updated(self, raw: dict[str, Any], offer: ServerOffer) -> tuple[SessionConfig, list[ProtocolError]]:
        """A copy with `session.update`'s fields applied, and the errors for fields left unapplied.
        Raises ProtocolError (and applies nothing) for a value of the wrong type or shape. (`tracing` is
        accepted and has no effect: it concerns OpenAI's own dashboard.)"""
        try:
            session = SessionField.model_validate(raw)
        except ValidationError as exc:
            raise validation_error(exc, raw, prefix="session") from None
        notes = [ProtocolError("unknown_parameter", f"unknown parameter {path}: ignored", param=path)
                 for path in unknown_fields(session)]
        changes: dict[str, Any] = {}
        if session.instructions is not None:
            changes["instructions"] = session.instructions
        responder = session.higgs.responder if session.higgs and session.higgs.responder else session.responder
        if responder is not None:
            if responder not in offer.responders:
                raise ProtocolError("invalid_value", f"responder must be one of {', '.join(offer.responders)} on "
                                    f"this server, got {responder!r}", param="session.higgs.responder")
            changes["responder"] = responder
        higgs = session.higgs
        if higgs is not None and higgs.extension_events is not None:
            changes["extension_events"] = higgs.extension_events
        if higgs is not None and higgs.speakers is not None:
            unknown = [name for name in higgs.speakers if not offer.is_voice(name)]
            if unknown:
                raise ProtocolError("invalid_value", f"unknown voice {unknown[0]!r} in session.higgs.speakers; this "
                                    f"server has: {', '.join(offer.voice_names())}", param="session.higgs.speakers")
            changes["speakers"] = tuple(higgs.speakers)
        translating = higgs is not None and given(higgs, "translation")
        if session.latency_events is not None:
            changes["latency_events"] = session.latency_events
        if session.max_output_tokens is not None:
            if isinstance(session.max_output_tokens, int) and not 1 <= session.max_output_tokens <= 4096:
                raise ProtocolError("invalid_value", "max_output_tokens must be from 1 to 4096, or \"inf\"",
                                    param="session.max_output_tokens")
            changes["max_output_tokens"] = session.max_output_tokens
        if session.output_modalities is not None:
            changes["output_modality"] = output_modality(session.output_modalities, "session.output_modalities")
        notes += _unsupported_top_level(session)
        audio = session.audio
        if audio is not None and audio.input is not None:
            changes.update(self._input_changes(audio.input, offer, notes))
        if audio is not None and audio.output is not None:
            changes.update(_output_changes(audio.output, offer, notes))
        if translating:  # last: it adjusts the voice and turn detection this same update may have set
            changes.update(self._translation_changes(higgs.translation, session, offer,  # type: ignore[union-attr]
                                                     changes.get("turn_detection", self.turn_detection)))
        return replace(self, **changes), notes

    def _translation_changes(self, value: Any, session: SessionField, offer: ServerOffer,  # noqa: ANN401
                             detection: TurnDetection | None) -> dict[str, Any]:
        """Translation on: each turn spoken back translated, by the LLM (or Whisper's own translation into
        English); the caller keeps talking while earlier phrases are spoken (no barge-in, unless the same
        update asks for it), in the caller's voice unless this update names another."""
        if value is None:
            return {"translation": None}
        if not set(TRANSLATORS) & set(offer.responders) and not (value.to == "en" and offer.asr_multilingual):
            raise ProtocolError("invalid_value", "translation needs an LLM to translate (serve --llm-url URL "
                                "--llm-model NAME, or --reply-model), or a multilingual --asr-model for "
                                "translation into en",
                                param="session.higgs.translation")
        changes: dict[str, Any] = {"translation": Translation(value.to, value.source, value.simultaneous)}
        audio = session.audio
        if not (audio and audio.output and audio.output.voice is not None):
            changes["voice"] = CALLER_VOICE
        sets_interrupt = bool(audio and audio.input and audio.input.turn_detection is not None
                              and audio.input.turn_detection.interrupt_response is not None)
        if detection is not None and not sets_interrupt:
            changes["turn_detection"] = replace(detection, interrupt_response=False)
        return changes

    def _input_changes(self, inp: InputField, offer: ServerOffer, notes: list[ProtocolError]) -> dict[str, Any]:
        param = "session.audio.input"
        changes: dict[str, Any] = {}
        if inp.format is not None:
            changes["input_format"] = _format(inp.format, f"{param}.format")
        if given(inp, "turn_detection"):
            changes["turn_detection"] = self._turn_detection(inp.turn_detection, notes)
        if given(inp, "noise_reduction"):
            changes["noise_reduction"] = self._noise_reduction(inp.noise_reduction)
        if inp.transcription is not None:
            wanted = inp.transcription
            language = wanted.language
            if language is not None and language != "en" and not offer.asr_multilingual:
                notes.append(_unsupported(f"{param}.transcription.language", f"the server's ASR model "
                                          f"({offer.asr_model}) is English-only; start it with a multilingual "
                                          f"--asr-model for {language!r}"))
                language = self.transcription.language
            # delay, keywords, languages: hints Whisper has no use for; session.updated shows them absent.
            changes["transcription"] = Transcription(offer.asr_model, language, wanted.prompt)
        return changes

    def _noise_reduction(self, value: NoiseReductionField | None) -> NoiseReduction | None:
        """null turns it off; an omitted type or strength keeps the session's own (OpenAI: strength 1 at first)."""
        if value is None:
            return None
        current = self.noise_reduction or NoiseReduction()
        return NoiseReduction(value.type or current.type,
                              current.strength if value.strength is None else float(value.strength))

    def _turn_detection(self, value: ServerVadField | SemanticVadField | None,
                        notes: list[ProtocolError]) -> TurnDetection | None:
        if value is None:
            return None
        base = self.turn_detection or TurnDetection()
        create = base.create_response if value.create_response is None else value.create_response
        interrupt = base.interrupt_response if value.interrupt_response is None else value.interrupt_response
        if isinstance(value, SemanticVadField):
            # The VAD reports pauses and the end-of-turn judge decides; its silence limit is the longest wait.
            eagerness = value.eagerness or "auto"
            policy = EndOfTurnPolicy.for_eagerness(eagerness)
            return TurnDetection(VadSettings(silence_duration_ms=policy.max_wait_ms, pause_ms=policy.pause_ms),
                                 create, interrupt, eagerness=eagerness)
        if value.idle_timeout_ms is not None:
            notes.append(_unsupported("session.audio.input.turn_detection.idle_timeout_ms",
                                      "idle timeouts are not available yet"))
        vad = base.vad if base.eagerness is None else VadSettings()
        aggressiveness = vad.aggressiveness
        if value.threshold is not None:
            aggressiveness = threshold_to_aggressiveness(value.threshold)
        if value.aggressiveness is not None:
            aggressiveness = value.aggressiveness
        vad = VadSettings(
            aggressiveness=aggressiveness,
            prefix_padding_ms=_pick(value.prefix_padding_ms, vad.prefix_padding_ms),
            silence_duration_ms=_pick(value.silence_duration_ms, vad.silence_duration_ms),
            min_speech_ms=_pick(value.min_speech_ms, vad.min_speech_ms))
        return TurnDetection(vad, create, interrupt)


def _output_changes(out: OutputField, offer: ServerOffer, notes: list[ProtocolError]) -> dict[str, Any]:
    param = "session.audio.output"
    changes: dict[str, Any] = {}
    if out.format is not None:
        changes["output_format"] = _format(out.format, f"{param}.format")
    if out.speed is not None and out.speed != 1.0:
        notes.append(_unsupported(f"{param}.speed", "this server speaks at speed 1.0 only"))
    if out.voice is not None:
        name = out.voice if isinstance(out.voice, str) else out.voice.id
        if name == CALLER_VOICE or offer.is_voice(name) or name in OPENAI_VOICES:
            changes["voice"] = name
        else:
            notes.append(ProtocolError("invalid_value", f"unknown voice {name!r}; this server has: "
                                       f"{', '.join([*offer.voice_names(), CALLER_VOICE])}",
                                       param=f"{param}.voice"))
    return changes


def _unsupported_top_level(session: SessionField) -> list[ProtocolError]:
    """Values whose absence would change what the client gets. Hints with no effect here (include,
    truncation, reasoning, tracing) are not errors: session.updated shows what is in force instead. (tools and
    tool_choice are the session's own: `session_tools`.)"""
    notes = []
    if session.prompt is not None:
        notes.append(_unsupported("session.prompt", "stored prompts are OpenAI's; send instructions instead"))
    return notes


def _unsupported(param: str, why: str) -> ProtocolError:
    return ProtocolError("unsupported_value", f"{param} is not supported: {why}; the rest of the update was "
                         f"applied", param=param)


def _pick(value: int | None, current: int) -> int:
    return current if value is None else value


def _format(value: FormatField, param: str) -> AudioFormat:
    try:
        return AudioFormat.from_session(value.model_dump(exclude_none=True), param=param)
    except AudioFormatError as exc:
        raise ProtocolError("invalid_value", str(exc), param=exc.param or param) from None
