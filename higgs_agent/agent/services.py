"""What every session of a server shares: the engine, the transcriber, the responders, metrics, defaults."""

from __future__ import annotations

from dataclasses import dataclass, field

from higgs_agent.agent.config import SessionConfig
from higgs_agent.agent.responders.base import Responder
from higgs_agent.metrics import AgentMetrics
from higgs_agent.model.asr import Transcriber
from higgs_agent.model.loader import HiggsBundle
from higgs_agent.model.prompts import VoiceReference
from higgs_agent.model.sampling import SamplingSettings
from higgs_agent.streaming.engine import StreamingEngine

MAX_EVENT_BYTES = 1 << 20  # 1 MiB: ~20 s of 24 kHz PCM16 per append, base64-encoded


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

    def __post_init__(self) -> None:
        if self.default_responder not in self.responders:
            raise ValueError(f"default responder {self.default_responder!r} is not one of {sorted(self.responders)}")

    @property
    def bundle(self) -> HiggsBundle:
        return self.engine.bundle

    def session_config(self) -> SessionConfig:
        return SessionConfig(model=self.bundle.model_source, responder=self.default_responder)

    def responder(self, name: str) -> Responder:
        return self.responders[name]

    async def aclose(self) -> None:
        for responder in self.responders.values():
            await responder.aclose()
