"""A session's output on a phone call: the `SessionOutput` a `Session` speaks through, over an `AudioPacer`.

Reply audio (the engine's 24 kHz float) goes to the pacer, which codes it for the carrier, in pieces of at
most `mark_interval_ms`: the pacer puts a mark after each piece, and the carrier's echo of a mark is the only
first-hand word of what the caller heard. So on a barge-in `discard_audio` sends `clear` (the carrier drops
what it holds, the pacer what it has not sent) and `heard_ms` is where the last echoed mark stands, which is
exactly where the session cuts the agent's turn in the history. The phone carries no events: each is shown to
the call's record and dropped, except that `response.output_audio.done` sends the reply's last, part-filled
frame.
"""

from __future__ import annotations

import asyncio

import numpy as np

from higgs_agent import SAMPLE_RATE
from higgs_agent.agent.reply import OutputClosed
from higgs_agent.protocol import server_events as se
from higgs_agent.transport.phone.call import CallLog
from higgs_agent.transport.phone.pacer import AudioPacer, PacerStoppedError, Playback


class PhoneOutput:
    def __init__(self, pacer: AudioPacer, call_log: CallLog, mark_interval_ms: int = 250) -> None:
        self.pacer = pacer
        self.call_log = call_log
        self._piece = SAMPLE_RATE * mark_interval_ms // 1000  # 24 kHz samples between marks
        self._all_heard: dict[str, asyncio.Event] = {}  # reply -> set when its final mark came back
        self.closed_reason: str | None = None

    def close(self, reason: str) -> None:
        """The call is over: every later send raises OutputClosed."""
        if self.closed_reason is None:
            self.closed_reason = reason

    # -- SessionOutput ----------------------------------------------------------------------------------------

    async def send_event(self, event: se.ServerEvent) -> None:
        self._check_open()
        self.call_log.on_event(event)
        if isinstance(event, se.OutputAudioDone):
            self._finish(event.item_id)

    async def send_audio(self, response_id: str, item_id: str, samples: np.ndarray) -> None:
        self._check_open()
        self.call_log.reply_audio(response_id, item_id)
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        try:
            for start in range(0, len(samples), self._piece):
                if not self.pacer.push(item_id, samples[start:start + self._piece]):
                    return  # a clear cut this reply: audio the engine made before it saw the cancel
        except PacerStoppedError as exc:
            raise OutputClosed(str(exc)) from exc

    def discard_audio(self, item_id: str) -> int:
        """Barge-in: if any of the reply may still reach the caller (queued here, or sent and not yet confirmed
        played by a mark), `clear` it; returns the 24 kHz samples the caller will not hear."""
        if self.closed_reason is not None or self.pacer.stopped:
            return 0
        playback = self.pacer.playback(item_id)
        if playback is None:
            return 0
        unconfirmed_ms = playback.sent_ms - playback.played_ms
        if unconfirmed_ms <= 0 and not self.pacer.holds(item_id):
            return 0  # the marks say the caller heard all of it
        dropped_ms = self.pacer.clear_nowait()
        return round((dropped_ms + unconfirmed_ms) * SAMPLE_RATE / 1000)

    def heard_ms(self, item_id: str) -> float:
        """What the echoed marks say the caller heard of the reply."""
        playback = self.pacer.playback(item_id)
        return 0.0 if playback is None else float(playback.played_ms)

    # -- from the carrier -------------------------------------------------------------------------------------

    def mark_echoed(self, name: str) -> Playback | None:
        playback = self.pacer.mark_echoed(name)
        if playback is not None and playback.final:
            self._heard_event(playback.reply_id).set()
        return playback

    async def all_heard(self, reply_id: str) -> None:
        """Until the carrier confirms the caller heard the whole reply (its final mark came back)."""
        await self._heard_event(reply_id).wait()

    # -- inside -----------------------------------------------------------------------------------------------

    def _finish(self, item_id: str) -> None:
        try:
            self.pacer.finish(item_id)
        except PacerStoppedError as exc:
            raise OutputClosed(str(exc)) from exc

    def _check_open(self) -> None:
        if self.closed_reason is not None:
            raise OutputClosed(self.closed_reason)
        if self.pacer.stopped:
            raise OutputClosed("sending to the carrier failed")

    def _heard_event(self, reply_id: str) -> asyncio.Event:
        return self._all_heard.setdefault(reply_id, asyncio.Event())
