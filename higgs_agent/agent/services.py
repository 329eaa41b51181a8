"""What every session of a server shares: the engine, the transcriber, the responders, metrics, defaults."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from higgs_agent.agent.config import OPENAI_VOICES, TRANSLATORS, ServerOffer, SessionConfig, Transcription
from higgs_agent.agent.end_of_turn import SmartTurn, TurnModelMissing
from higgs_agent.agent.noise import NoiseReduction
from higgs_agent.agent.reply import ReplyLimits
from higgs_agent.agent.responders.base import Responder
from higgs_agent.agent.tools.spec import McpServerSpec
from higgs_agent.defaults import DEFAULT_TENANT
from higgs_agent.metrics import AgentMetrics
from higgs_agent.model.asr import Transcriber
from higgs_agent.model.loader import HiggsBundle
from higgs_agent.model.prompts import VoiceReference
from higgs_agent.model.sampling import SamplingSettings
from higgs_agent.records.writer import RecordWriter
from higgs_agent.streaming.engine import StreamingEngine
from higgs_agent.streaming.speech_engine import SpeechEngine
from higgs_agent.understanding.analyzer import TurnAnalyzer
from higgs_agent.voices.library import VoiceLibrary, VoiceNotFound

if TYPE_CHECKING:  # the OpenTelemetry SDK loads only when traces are on
    from higgs_agent.otlp import OtlpTraces

log = logging.getLogger(__name__)
MAX_EVENT_BYTES = 1 << 20  # 1 MiB: ~20 s of 24 kHz PCM16 per append, base64-encoded
DEFAULT_VOICE = "default"  # the server's --voice, else the model's own voice (pinned per session)


class UnknownVoiceError(ValueError):
    """A voice name the server does not know; the message names it and what is available."""


@dataclass
class AgentServices:
    engine: SpeechEngine  # the model in this process, or remote engines (serve --engine-url)
    transcriber: Transcriber
    responders: dict[str, Responder]  # the responders this server offers, by name (shared by sessions)
    default_responder: str
    sampling: SamplingSettings = field(default_factory=SamplingSettings)
    voice: VoiceReference | None = None  # the server's voice; None = the model's own, pinned per session
    metrics: AgentMetrics = field(default_factory=AgentMetrics)
    slow_client_timeout_s: float = 10.0  # a client that reads nothing this long is disconnected
    max_event_bytes: int = MAX_EVENT_BYTES
    extension_events: bool = False  # send higgs.* events to every session (else each session opts in)
    noise_reduction: NoiseReduction | None = None  # every session's until it sets its own (serve --noise-reduction)
    mcp_servers: tuple[McpServerSpec, ...] = ()  # the operator's MCP servers, offered to every session
    allow_client_mcp: bool = False  # may clients name MCP servers for this server to connect to?
    mcp_call_timeout_s: float = 20.0
    analyzer: TurnAnalyzer | None = None  # who speaks and how, per user turn (None: not analyzed)
    voices: VoiceLibrary | None = None  # uploaded voices and presets (None: the server voice only)
    reply_limits: ReplyLimits = field(default_factory=ReplyLimits)  # every wait of a reply is bounded
    turn_model: SmartTurn | None = None  # semantic_vad's voice judge: loaded at start by serve, else on first use
    records: RecordWriter | None = None  # every session on record (serve --records-url); None: nothing is kept
    traces: OtlpTraces | None = None  # every answered turn as a trace (serve --otlp-endpoint); None: no tracer
    _turn_model_missing: bool = field(default=False, repr=False)

    def __post_init__(self) -> None:
        if self.default_responder not in self.responders:
            raise ValueError(f"default responder {self.default_responder!r} is not one of {sorted(self.responders)}")

    @property
    def bundle(self) -> HiggsBundle | None:
        """The model in this process (None: replies are spoken by remote engines)."""
        return self.engine.bundle if isinstance(self.engine, StreamingEngine) else None

    def session_config(self) -> SessionConfig:
        return SessionConfig(model=self.engine.model_name, responder=self.default_responder,
                             extension_events=self.extension_events, noise_reduction=self.noise_reduction,
                             transcription=Transcription(self.transcriber.name))

    def end_of_turn_model(self) -> SmartTurn | None:
        """smart-turn for semantic_vad, loaded once; None (the words alone judge, said once in the log) when
        its weights are not installed."""
        if self.turn_model is None and not self._turn_model_missing:
            try:
                self.turn_model = SmartTurn()
            except TurnModelMissing as exc:
                self._turn_model_missing = True
                log.warning("%s; semantic_vad judges pauses by the words alone", exc)
        return self.turn_model

    def responder(self, name: str) -> Responder:
        return self.responders[name]

    def translator(self) -> Responder | None:
        """Who writes translations: the LLM endpoint, else the reply model in this process (None: neither)."""
        return next((self.responders[name] for name in TRANSLATORS if name in self.responders), None)

    def offer(self, tenant: str = DEFAULT_TENANT) -> ServerOffer:
        """What a session of `tenant` may ask of this server (checked by `SessionConfig.updated`)."""
        return ServerOffer(responders=tuple(self.responders), is_voice=lambda name: self.is_voice(name, tenant),
                           voice_names=lambda: self.voice_names(tenant), asr_model=self.transcriber.name,
                           asr_multilingual=not self.transcriber.english_only)

    def voice_names(self, tenant: str = DEFAULT_TENANT) -> list[str]:
        library = [] if self.voices is None else [voice.name for voice in self.voices.voices(tenant)]
        return [DEFAULT_VOICE, *library]

    def is_voice(self, name: str, tenant: str = DEFAULT_TENANT) -> bool:
        if name in (DEFAULT_VOICE, *OPENAI_VOICES):
            return True
        try:
            return self.voices is not None and self.voices.get(tenant, name) is not None
        except VoiceNotFound:
            return False

    def resolve_voice(self, name: str | None = None) -> VoiceReference | None:
        """The server's own voice for the default and OpenAI's stock names (no library lookup)."""
        if name in (None, "", DEFAULT_VOICE) or name in OPENAI_VOICES:
            return self.voice
        raise UnknownVoiceError(f"unknown voice {name!r}")

    async def voice_reference(self, name: str | None, tenant: str = DEFAULT_TENANT) -> VoiceReference | None:
        """A voice name or id -> its reference (None: the model's own voice). A library voice of that name wins
        over OpenAI's stock names; UnknownVoiceError for names nobody knows. A preset is encoded on first use
        (on the model worker: this waits in a thread)."""
        if self.voices is not None and name not in (None, "", DEFAULT_VOICE):
            try:
                return await asyncio.to_thread(self.voices.reference, tenant, name)
            except VoiceNotFound:
                pass
        if name in (None, "", DEFAULT_VOICE) or name in OPENAI_VOICES:
            return self.voice
        raise UnknownVoiceError(f"unknown voice {name!r}; this server has: {', '.join(self.voice_names(tenant))}")

    async def aclose(self) -> None:
        """Server shutdown: stop the engine (its streams end) and release the responders' connections."""
        self.engine.close()
        self.transcriber.close()
        if self.turn_model is not None:
            self.turn_model.close()
        if self.analyzer is not None:
            self.analyzer.close()
        for responder in self.responders.values():
            await responder.aclose()
        if self.records is not None:  # what the sessions said last is committed before the process ends
            await asyncio.to_thread(self.records.close)
        if self.traces is not None:  # and the last turns' traces exported
            await asyncio.to_thread(self.traces.shutdown)
