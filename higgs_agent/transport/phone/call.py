"""One phone call's settings and its record: what the caller and the agent said, and how fast the agent answered.

The record observes the session's domain events (agent/events.py: what was said, cut, and how fast) and logs
each line as it happens; the transport sets the `session_id` log field to
the callSid, so every line names its call. A turn's figure is the one a caller feels: from the end of their
speech (the VAD's `speech_stopped`) to the first frame of the reply on the wire, beside the session's own
stages (transcript, first text, first audio frame, first audio handed to the output).
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from higgs_agent.agent.events import (
    AgentFailed,
    DomainEvent,
    KeyPressed,
    ReplyCut,
    ReplyFinished,
    TranscriptionFailed,
    TurnTimed,
    UserSpeechEnded,
    UserTranscribed,
)
from higgs_agent.defaults import DEFAULT_TENANT, PHONE_BUSY_MESSAGE, PHONE_LEAD_MS
from higgs_agent.transport.phone.serializer import CallStarted

log = logging.getLogger(__name__)

DEFAULT_BUSY_MESSAGE = PHONE_BUSY_MESSAGE


@dataclass(frozen=True)
class CallSettings:
    """How the agent behaves on a call. `greeting`: said as soon as the call starts (None: wait for the
    caller). `busy_message`: said, then the call is hung up, when every engine slot is busy as a call starts
    (None or "": hang up at once). `lead_ms`: reply audio sent ahead of playback, the most a barge-in leaves
    for the carrier to drop. `mark_interval_ms`: a mark at least this often, how finely the agent knows what
    the caller heard. `tenant`: whose the calls are (the voices they may use, the key that reads their record)."""

    greeting: str | None = None
    busy_message: str | None = DEFAULT_BUSY_MESSAGE
    lead_ms: int = PHONE_LEAD_MS
    mark_interval_ms: int = 250
    start_timeout_s: float = 10.0  # a media socket that sends no `start` this long is closed
    busy_message_wait_s: float = 10.0  # the first webhook waits this long for the busy message to be spoken
    tenant: str = DEFAULT_TENANT

    def __post_init__(self) -> None:
        if self.lead_ms < 0 or self.mark_interval_ms <= 0:
            raise ValueError(f"need lead_ms >= 0 and mark_interval_ms > 0, got {self.lead_ms} and "
                             f"{self.mark_interval_ms}")


@dataclass
class TranscriptLine:
    speaker: Literal["caller", "agent", "keypad"]
    text: str
    at_s: float  # seconds after the stream's `start`
    item_id: str | None = None
    status: str | None = None  # agent: the response's status (completed, cancelled, incomplete, failed)
    heard_ms: float | None = None  # agent: where a barge-in cut the turn (None: not cut)


@dataclass
class TurnFigures:
    """One reply's latency. `first_frame_ms`: the caller's end of speech -> the reply's first frame on the
    wire (None for replies no speech ended: a greeting, keypad digits). `stages`: the session's own."""

    response_id: str
    first_frame_ms: float | None
    stages: dict[str, float | None]


@dataclass
class _Reply:
    item_id: str
    speech_end: float | None = None  # when the turn it answers ended
    figures: TurnFigures | None = None


class CallLog:
    """The record of one call, logged line by line."""

    def __init__(self, started: CallStarted, clock: Callable[[], float] = time.perf_counter) -> None:
        self.call_sid = started.call_id
        self.stream_sid = started.stream_id
        self.parameters = dict(started.custom_parameters)
        self._clock = clock
        self.started_at = clock()
        self.lines: list[TranscriptLine] = []
        self.turns: list[TurnFigures] = []
        self.first_frame_ms: float | None = None  # `start` -> the call's first frame (the greeting's)
        self.frames_sent = 0
        self.skipped_messages = 0
        self.busy = False
        self.end_reason: str | None = None
        self._speech_ends: dict[str, float] = {}  # user item -> when the VAD said its speech ended
        self._replies: dict[str, _Reply] = {}  # response id -> its reply
        self._first_frames: dict[str, float] = {}  # assistant item -> when its first frame went out
        self._cuts: dict[str, float] = {}  # assistant item -> heard ms, for a cut before its response.done

    # -- from the session -------------------------------------------------------------------------------------

    def observe(self, event: DomainEvent) -> None:
        """The session's observer (`Session.observe`)."""
        match event:
            case UserSpeechEnded(item_id):
                self._speech_ends[item_id] = self._clock()
            case UserTranscribed(item_id, text):
                self._line(TranscriptLine("caller", text, self._since_start(), item_id))
            case KeyPressed(digit):
                self._line(TranscriptLine("keypad", digit, self._since_start()))
            case TurnTimed():
                self._turn_latency(event)
            case ReplyCut(item_id, heard_ms):
                self._cut(item_id, heard_ms)
            case ReplyFinished(_, status, item_id, text) if item_id is not None:
                self._reply_finished(item_id, status, text)
            case AgentFailed(code, message):
                log.warning("agent error %s: %s", code, message)
            case TranscriptionFailed(item_id, message):
                log.warning("the caller's turn %s was not transcribed: %s", item_id, message)

    # -- from the wire ----------------------------------------------------------------------------------------

    def frame_sent(self, item_id: str | None) -> None:
        self.frames_sent += 1
        now = self._clock()
        if self.first_frame_ms is None:
            self.first_frame_ms = round((now - self.started_at) * 1000.0, 1)
            log.info("first frame on the wire %.0f ms after the call started", self.first_frame_ms)
        if item_id is not None and item_id not in self._first_frames:
            self._first_frames[item_id] = now
            for reply in self._replies.values():
                if reply.item_id == item_id:
                    self._complete(reply)

    def end(self, reason: str) -> None:
        self.end_reason = reason
        felt = [t.first_frame_ms for t in self.turns if t.first_frame_ms is not None]
        cut = sum(line.heard_ms is not None for line in self.lines)
        log.info("call ended (%s) after %.1f s: %d caller turns, %d replies (%d cut by the caller), %d frames "
                 "sent, %d messages skipped; end of speech -> first reply frame: %s", reason,
                 self._since_start(), sum(line.speaker == "caller" for line in self.lines),
                 sum(line.speaker == "agent" for line in self.lines), cut, self.frames_sent,
                 self.skipped_messages,
                 f"median {statistics.median(felt):.0f} ms over {len(felt)}" if felt else "no spoken turns")

    # -- inside -----------------------------------------------------------------------------------------------

    def _since_start(self) -> float:
        return round(self._clock() - self.started_at, 3)

    def _line(self, line: TranscriptLine) -> None:
        self.lines.append(line)
        if line.speaker == "agent":
            log.info("agent (%s): %r", line.status, line.text)
        else:
            log.info("%s: %r", line.speaker, line.text)

    def _turn_latency(self, event: TurnTimed) -> None:
        reply = self._replies.setdefault(event.response_id, _Reply(item_id=event.reply_item_id or ""))
        speech_end = self._speech_ends.pop(event.user_item_id, None) if event.user_item_id else None
        reply.speech_end = speech_end
        reply.figures = TurnFigures(event.response_id, None, dict(event.stages_ms))
        self.turns.append(reply.figures)
        if speech_end is None or reply.item_id in self._first_frames or not reply.item_id:
            self._complete(reply)

    def _complete(self, reply: _Reply) -> None:
        """Log a reply's figures once both its latency stages and (for a spoken turn) its first frame are in."""
        figures = reply.figures
        if figures is None:
            return
        reply.figures = None  # logged once
        first = self._first_frames.get(reply.item_id)
        if reply.speech_end is not None and first is not None:
            figures.first_frame_ms = round((first - reply.speech_end) * 1000.0, 1)
        stages = ", ".join(f"{stage.replace('_', ' ')} {'-' if ms is None else f'{ms:.0f} ms'}"
                           for stage, ms in figures.stages.items())
        if figures.first_frame_ms is not None:
            log.info("turn %s: first reply frame on the wire %.0f ms after the caller stopped speaking (%s)",
                     figures.response_id, figures.first_frame_ms, stages)
        else:
            log.info("turn %s: %s", figures.response_id, stages)

    def _cut(self, item_id: str, heard_ms: float) -> None:
        line = next((line for line in reversed(self.lines) if line.item_id == item_id), None)
        if line is None:
            self._cuts[item_id] = heard_ms  # the response is still closing: applied at its response.done
            return
        line.heard_ms = heard_ms
        log.info("agent turn %s cut by the caller: they heard %.0f ms of it", item_id, heard_ms)

    def _reply_finished(self, item_id: str, status: str, text: str) -> None:
        heard = self._cuts.pop(item_id, None)
        self._line(TranscriptLine("agent", text, self._since_start(), item_id, status, heard))
        if heard is not None:
            log.info("agent turn %s cut by the caller: they heard %.0f ms of it", item_id, heard)
