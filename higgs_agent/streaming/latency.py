"""Per-request timing: prefill, every step, first frame, first PCM, real-time factor."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field

from higgs_agent import FRAME_RATE


def now() -> float:
    return time.perf_counter()


@dataclass
class GenerationStats:
    """Filled in by the engine (and the PCM stage); read by the CLI, logs, metrics and benchmarks."""

    started_at: float = field(default_factory=now)
    prefill_ms: float | None = None
    prefill_started_at: float | None = None  # when its prompt began (the end of its wait for the engine)
    step_ms: list[float] = field(default_factory=list)  # one per decode forward after the prefill
    frames: int = 0  # complete frames produced
    first_frame_at: float | None = None
    first_pcm_at: float | None = None
    finished_at: float | None = None
    stop_reason: str | None = None  # "end_of_audio" | "max_frames" | "cancelled"

    def mark_first_frame(self) -> None:
        if self.first_frame_at is None:
            self.first_frame_at = now()

    def mark_first_pcm(self) -> None:
        if self.first_pcm_at is None:
            self.first_pcm_at = now()

    def _since_start_ms(self, t: float | None) -> float | None:
        return None if t is None else (t - self.started_at) * 1000.0

    @property
    def ttff_ms(self) -> float | None:
        """Time to first complete frame (8 codes)."""
        return self._since_start_ms(self.first_frame_at)

    @property
    def ttfa_ms(self) -> float | None:
        """Time to first audio: first PCM chunk ready to send."""
        return self._since_start_ms(self.first_pcm_at)

    @property
    def step_ms_median(self) -> float | None:
        return statistics.median(self.step_ms) if self.step_ms else None

    @property
    def audio_seconds(self) -> float:
        return self.frames / FRAME_RATE

    @property
    def wall_seconds(self) -> float:
        return ((self.finished_at or now()) - self.started_at)

    @property
    def real_time_factor(self) -> float | None:
        """Wall time per second of audio produced: < 1 is faster than real time."""
        return self.wall_seconds / self.audio_seconds if self.frames else None

    def summary(self) -> dict[str, float | int | str | None]:
        def r(x: float | None) -> float | None:
            return None if x is None else round(x, 2)

        return {
            "prefill_ms": r(self.prefill_ms),
            "step_ms_median": r(self.step_ms_median),
            "steps": len(self.step_ms) + (1 if self.prefill_ms is not None else 0),
            "frames": self.frames,
            "ttff_ms": r(self.ttff_ms),
            "ttfa_ms": r(self.ttfa_ms),
            "audio_s": r(self.audio_seconds),
            "rtf": r(self.real_time_factor),
            "stop_reason": self.stop_reason,
        }
