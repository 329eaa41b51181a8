"""What happens in a conversation, as facts a transport (or anything else) can watch: the domain's own events.

The session tells its client through the OpenAI Realtime wire events (`protocol/server_events.py`), which are
one protocol's wording. Anything else that must know what happened on a call (a phone call's record and
latency log, a metric, a recorder) subscribes to these instead (`Session.observe`), so nobody reads the wire
back into facts, and nobody has to switch a client's extension events on to learn a turn's latency.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class UserSpeechEnded:
    """The caller stopped speaking (the turn detector's decision): `item_id` is the user turn it becomes."""

    item_id: str


@dataclass(frozen=True)
class PauseJudged:
    """semantic_vad weighed a pause in the caller's speech: done, or (complete False) they will go on."""

    item_id: str
    pause: int  # which pause of the session's turn detector
    audio_end_ms: int  # where the speech paused, on the input clock
    voice: float | None  # smart-turn's P(complete) (None: the model is not installed)
    words: str  # open | closed | unsure
    transcript: str  # the reading of the turn so far the words were judged from
    complete: bool


@dataclass(frozen=True)
class InterruptionJudged:
    """Speech over a reply held it; its words decided: an interruption (the reply was cut) or a backchannel
    (it played on)."""

    item_id: str
    interrupted: bool


@dataclass(frozen=True)
class UserTranscribed:
    item_id: str
    text: str
    language: str | None = None


@dataclass(frozen=True)
class KeyPressed:
    digit: str


@dataclass(frozen=True)
class TurnTimed:
    """A reply's latency by stage, from the end of the user's speech (None: a stage the turn skipped)."""

    response_id: str
    user_item_id: str | None
    reply_item_id: str | None  # the message being spoken (None: a reply with no words yet, e.g. a tool call)
    stages_ms: Mapping[str, float | None] = field(default_factory=dict)


@dataclass(frozen=True)
class ReplyCut:
    """The listener talked over the reply: they heard `heard_ms` of its audio, and the history says so."""

    item_id: str
    heard_ms: float


@dataclass(frozen=True)
class ReplyFinished:
    """A response is over: its spoken item and words (as far as they were heard), and how it ended."""

    response_id: str
    status: str  # completed | cancelled | failed | incomplete
    item_id: str | None
    text: str


@dataclass(frozen=True)
class AgentFailed:
    """Something the agent could not do (a failed reply, a failed transcription), as its error code says."""

    code: str
    message: str


DomainEvent = UserSpeechEnded | PauseJudged | InterruptionJudged | UserTranscribed | KeyPressed | TurnTimed | ReplyCut | ReplyFinished | AgentFailed
Observer = Callable[[DomainEvent], None]
