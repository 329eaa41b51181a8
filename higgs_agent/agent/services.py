"""What every session of a server shares: the engine, the transcriber, the responders, metrics, defaults."""

from __future__ import annotations

from dataclasses import dataclass, field

from higgs_agent.agent.config import OPENAI_VOICES, ServerOffer, SessionConfig, Transcription
from higgs_agent.agent.responders.base import Responder
from higgs_agent.agent.tools.spec import McpServerSpec
from higgs_agent.metrics import AgentMetrics
from higgs_agent.model.asr import Transcriber
from higgs_agent.model.loader import HiggsBundle
from higgs_agent.model.prompts import VoiceReference
from higgs_agent.model.sampling import SamplingSettings
from higgs_agent.streaming.engine import StreamingEngine
from higgs_agent.understanding.analyzer import TurnAnalyzer

MAX_EVENT_BYTES = 1 << 20  # 1 MiB: ~20 s of 24 kHz PCM16 per append, base64-encoded
DEFAULT_VOICE = "default"  # the server's --voice, else the model's own voice (pinned per session)


class UnknownVoiceError(ValueError):
    """A voice name the server does not know; the message names it and what is available."""


@dataclass
class AgentServices:
    engine: StreamingEngine
    transcriber: Transcriber
    responders: dict[str, Responder]  # the responders this server offers, by name (shared by sessions)
    default_responder: str
    sampling: SamplingSettings = field(default_factory=SamplingSettings)
    voice: VoiceReference | None = None  # the server's voice; None = the model's own, pinned per session
    metrics: AgentMetrics = field(default_factory=AgentMetrics)
    slow_client_timeout_s: float = 10.0  # a client that reads nothing this long is disconnected
    max_event_bytes: int = MAX_EVENT_BYTES
    extension_events: bool = False  # send higgs.* events to every session (else each session opts in)
    mcp_servers: tuple[McpServerSpec, ...] = ()  # the operator's MCP servers, offered to every session
    allow_client_mcp: bool = False  # may clients name MCP servers for this server to connect to?
    mcp_call_timeout_s: float = 20.0
    analyzer: TurnAnalyzer | None = None  # who speaks and how, per user turn (None: not analyzed)

    def __post_init__(self) -> None:
        if self.default_responder not in self.responders:
            raise ValueError(f"default responder {self.default_responder!r} is not one of {sorted(self.responders)}")

    @property
    def bundle(self) -> HiggsBundle:
        return self.engine.bundle

    def session_config(self) -> SessionConfig:
        return SessionConfig(model=self.bundle.model_source, responder=self.default_responder,
                             extension_events=self.extension_events,
                             transcription=Transcription(self.transcriber.name))

    def responder(self, name: str) -> Responder:
        return self.responders[name]

    def offer(self) -> ServerOffer:
        """What a session may ask of this server (checked by `SessionConfig.updated`)."""
        return ServerOffer(responders=tuple(self.responders), is_voice=lambda name: name in self.voice_names(),
                           voice_names=self.voice_names, asr_model=self.transcriber.name,
                           asr_multilingual=not self.transcriber.english_only)

    def voice_names(self) -> list[str]:
        return [DEFAULT_VOICE]

    def resolve_voice(self, name: str | None) -> VoiceReference | None:
        """A voice name -> its reference (None: the model's own voice). UnknownVoiceError for other names."""
        if name in (None, "", DEFAULT_VOICE) or name in OPENAI_VOICES:
            return self.voice
        raise UnknownVoiceError(f"unknown voice {name!r}; this server has: {', '.join(self.voice_names())}")

    async def aclose(self) -> None:
        """Server shutdown: stop the engine (its streams end) and release the responders' connections."""
        self.engine.close()
        self.transcriber.close()
        if self.analyzer is not None:
            self.analyzer.close()
        for responder in self.responders.values():
            await responder.aclose()
