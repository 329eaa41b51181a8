"""What a session needs of whatever speaks its replies: the local `StreamingEngine` (the model in this process)
or `RemoteEngines` (OpenAI-compatible speech endpoints elsewhere: our own `serve`, vLLM-Omni). The agent is
written against this contract only, so it runs the same on either."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

import numpy as np

from higgs_agent.model.prompts import SpeechPrompt, VoiceReference
from higgs_agent.model.sampling import SamplingSettings


class EngineError(RuntimeError):
    """The engine speaking a reply failed under it (a remote that died, answered an error or cut its stream):
    that reply fails with this message; the next one goes to an engine that works."""


class StreamStats(Protocol):
    @property
    def stop_reason(self) -> str | None: ...

    @property
    def frames(self) -> int: ...

    @property
    def prefill_started_at(self) -> float | None:
        """perf_counter when the engine began the phrase (for traces)."""
        ...


class SpeechStream(Protocol):
    """One phrase being spoken."""

    frames: list[Any]  # its codec frames as they complete (a local engine asked with frames=True; else empty)

    @property
    def stats(self) -> StreamStats: ...

    def pcm(self, on_frame: Callable[[Any], None] | None = None) -> AsyncIterator[np.ndarray]:
        """float32 24 kHz chunks in order; `on_frame` is called as each frame (or, remotely, chunk) arrives."""
        ...


class SpeechEngine(Protocol):
    @property
    def name(self) -> str:
        """"local", or the remote engines' names (for traces, logs and records)."""
        ...

    @property
    def model_name(self) -> str: ...

    @property
    def slots(self) -> int: ...

    @property
    def busy_slots(self) -> int: ...

    def lease(self, name: str = "response") -> AbstractAsyncContextManager[Any]:
        """Capacity for a whole response (AtCapacityError when there is none)."""
        ...

    async def admit(self, name: str) -> None:
        """Returns if a new call would get capacity now; AtCapacityError if not."""
        ...

    def stream(self, prompt: SpeechPrompt, settings: SamplingSettings, lease: Any = None,  # noqa: ANN401
               frames: bool = False) -> AbstractAsyncContextManager[SpeechStream]: ...

    async def voice(self, audio: np.ndarray, sample_rate: int, transcript: str,
                    stage: str = "encode") -> VoiceReference:
        """A voice to clone, from its sound, in the form this engine takes."""
        ...

    async def count_tokens(self, text: str) -> int: ...

    def health(self) -> dict[str, Any]: ...

    def close(self) -> None: ...
