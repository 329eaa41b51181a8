"""Per-turn latency marks, all measured from the end of the user's speech (or the commit / response.create
that stands for it): transcript -> first reply text -> first audio frame -> first audio byte sent. Before them,
`end_of_turn`: how long after the last word the turn was called (VAD turns only; None for commits)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

STAGES = ("transcript", "first_text", "first_audio_frame", "first_audio_sent")


@dataclass
class TurnTiming:
    speech_end_at: float = field(default_factory=time.perf_counter)
    marks: dict[str, float] = field(default_factory=dict)
    end_of_turn_ms: float | None = None

    def mark(self, stage: str, at: float | None = None) -> None:
        """Record a stage once; later marks of the same stage are ignored."""
        assert stage in STAGES, stage
        self.marks.setdefault(stage, time.perf_counter() if at is None else at)

    def latency_ms(self) -> dict[str, float | None]:
        return {"end_of_turn": self.end_of_turn_ms,
                **{stage: (round((self.marks[stage] - self.speech_end_at) * 1000.0, 1) if stage in self.marks
                           else None) for stage in STAGES}}
