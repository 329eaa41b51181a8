"""The `session` object of `session.update`, as strict types mirroring OpenAI's Realtime GA schema.

Every GA field is known here, so a value of the wrong type is an `invalid_value` error naming its path
(`session.audio.input.turn_detection.create_response`) and nothing is applied; a field nobody defined is
reported by `unknown_fields` (and ignored); whether a valid value is one this server supports is for
`agent/config.py` to say. Our own settings live under `session.higgs` so they never collide with OpenAI's.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)


class FormatField(_Strict):
    type: Literal["audio/pcm", "audio/pcmu", "audio/pcma"]
    rate: int | None = None


class ServerVadField(_Strict):
    type: Literal["server_vad"]
    threshold: float | None = Field(default=None, ge=0, le=1)
    prefix_padding_ms: int | None = Field(default=None, ge=0, le=10_000)
    silence_duration_ms: int | None = Field(default=None, ge=10, le=10_000)
    create_response: bool | None = None
    interrupt_response: bool | None = None
    idle_timeout_ms: int | None = Field(default=None, ge=0)
    aggressiveness: int | None = Field(default=None, ge=0, le=3)  # ours: webrtcvad's mode, wins over threshold
    min_speech_ms: int | None = Field(default=None, ge=0, le=10_000)  # ours


class SemanticVadField(_Strict):
    type: Literal["semantic_vad"]
    eagerness: Literal["low", "medium", "high", "auto"] | None = None
    create_response: bool | None = None
    interrupt_response: bool | None = None


TurnDetectionField = Annotated[ServerVadField | SemanticVadField, Field(discriminator="type")]


class TranscriptionField(_Strict):
    model: str | None = None
    language: str | None = None
    prompt: str | None = None
    delay: str | None = None
    keywords: list[str] | None = None
    languages: list[str] | None = None


class NoiseReductionField(_Strict):
    type: Literal["near_field", "far_field"] | None = None  # omitted: the session's current type (else near_field)
    strength: float | None = Field(default=None, ge=0, le=1)  # omitted: the current strength (else 1)


class InputField(_Strict):
    format: FormatField | None = None
    turn_detection: TurnDetectionField | None = None
    transcription: TranscriptionField | None = None
    noise_reduction: NoiseReductionField | None = None


class VoiceIdField(_Strict):
    id: str


class OutputField(_Strict):
    format: FormatField | None = None
    voice: str | VoiceIdField | None = None
    speed: float | None = Field(default=None, ge=0.25, le=1.5)


class AudioField(_Strict):
    input: InputField | None = None
    output: OutputField | None = None


class TranslationField(_Strict):
    """Speak every turn of the caller back translated (in their own voice unless the session sets another)."""

    to: str = Field(min_length=2, max_length=16)  # the language to speak, e.g. "fr", "en"
    source: str | None = Field(default=None, alias="from", min_length=2, max_length=16)  # the caller's, if known
    simultaneous: bool = True  # translate each clause while the caller goes on (false: each whole turn)


class HiggsField(_Strict):
    """Ours: what OpenAI's schema has no place for."""

    extension_events: bool | None = None  # send higgs.* events to this session
    responder: str | None = None  # echo | llm | native | local
    speakers: list[str] | None = None  # voices for [SPEAKER0], [SPEAKER1], ...: multi-speaker replies
    translation: TranslationField | None = None  # speech translation mode


class SessionField(_Strict):
    type: Literal["realtime"] | None = None
    model: str | None = None
    instructions: str | None = None
    output_modalities: list[Literal["audio", "text"]] | None = None
    audio: AudioField | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    max_output_tokens: int | Literal["inf"] | None = None
    parallel_tool_calls: bool | None = None
    tracing: str | dict[str, Any] | None = None
    truncation: str | dict[str, Any] | None = None
    prompt: dict[str, Any] | None = None
    include: list[str] | None = None
    reasoning: dict[str, Any] | None = None
    higgs: HiggsField | None = None
    # Ours, from before `higgs`: still honoured.
    responder: str | None = None
    latency_events: bool | None = None


def unknown_fields(model: BaseModel, path: str = "session") -> list[str]:
    """Paths of fields the schema does not define, anywhere in a parsed session object."""
    found = [f"{path}.{name}" for name in (model.model_extra or {})]
    for name in model.model_fields_set:
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            found += unknown_fields(value, f"{path}.{name}")
    return found


def given(model: BaseModel | None, name: str) -> bool:
    """Whether the client sent this field (null included), as opposed to leaving it out."""
    return model is not None and name in model.model_fields_set
