"""What the listener has heard: a playout clock per reply item, stamped when audio actually leaves.

A client plays audio at real time from when it arrives, and stalls when it runs dry. So each chunk, when the
transport sends it, plays from max(now, end of the previous chunk) for its duration; at any moment the
listener has heard everything sent except what is still queued on their side. Counting audio when it is
handed to an outbox (instead of when it is sent), or assuming playback never stalled, would keep words the
listener never heard when a barge-in truncates the turn.
"""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass
class PlayoutClock:
    sent_ms: float = 0.0
    play_end: float | None = None  # when the listener will have played everything sent (perf_counter s)

    def sent(self, duration_ms: float, at: float | None = None) -> None:
        at = time.perf_counter() if at is None else at
        start = at if self.play_end is None else max(self.play_end, at)
        self.play_end = start + duration_ms / 1000.0
        self.sent_ms += duration_ms

    def heard_ms(self, at: float | None = None) -> float:
        if self.play_end is None:
            return 0.0
        at = time.perf_counter() if at is None else at
        queued_ms = max(0.0, (self.play_end - at) * 1000.0)
        return max(0.0, self.sent_ms - queued_ms)
