"""Per-turn latency marks, all measured from the end of the user's speech (or the commit / response.create
that stands for it): transcript -> first reply text -> first audio frame -> first audio byte sent. Before them,
`end_of_turn`: how long after the last word the turn was called (VAD turns only; None for commits).
Traces (agent/tracing.py) also show `engine_start`, when the engine began the first phrase (its prompt's prefill),
which splits the wait for the first frame into the engine's queue and its own work; it is not a reported stage."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

STAGES = ("transcript", "first_text", "first_audio_frame", "first_audio_sent")
TRACED = ("engine_start",)  # moments traces show beside the stages (not in the latency event nor the metric)


@dataclass
class TurnTiming:
    speech_end_at: float = field(default_factory=time.perf_counter)
    marks: dict[str, float] = field(default_factory=dict)
    end_of_turn_ms: float | None = None
    wall_at: float = field(default_factory=time.time)  # `speech_end_at` on the wall clock, for traces

    def mark(self, stage: str, at: float | None = None) -> None:
        """Record a stage once; later marks of the same stage are ignored."""
        assert stage in STAGES or stage in TRACED, stage
        self.marks.setdefault(stage, time.perf_counter() if at is None else at)

    def latency_ms(self) -> dict[str, float | None]:
        return {"end_of_turn": self.end_of_turn_ms,
                **{stage: self.since_ms(stage) for stage in STAGES}}

    def since_ms(self, stage: str) -> float | None:
        """A mark (a stage or a traced moment) in ms from the end of the user's speech; None if not reached."""
        at = self.marks.get(stage)
        return None if at is None else round((at - self.speech_end_at) * 1000.0, 1)
