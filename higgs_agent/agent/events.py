"""What happens in a conversation, as facts: the domain's own events, and everything the session says.

The session and its reply speak only these. A transport that carries the OpenAI Realtime protocol turns them
into wire events with the Realtime codec (transport/realtime_codec.py: one domain event may be several wire
events, e.g. a reply's item is both `response.output_item.added` and `conversation.item.added`); a phone line
carries none of them. Anything else that must know what happened on a call (a phone call's record and latency
log, a metric, a recorder) subscribes to the same stream (`Session.observe`), so nobody reads the wire back
into facts.

Events that carry a `ConversationItem` carry the live item: an output encodes the event when it is sent,
before the conversation moves on (an observer that keeps one must copy what it needs).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from higgs_agent.agent.config import SessionConfig
    from higgs_agent.agent.conversation import ConversationItem
    from higgs_agent.agent.tools.spec import ToolConfig
    from higgs_agent.protocol.errors import ProtocolError
    from higgs_agent.understanding.context import TurnContext


# --- the session ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SessionOpened:
    """The session is open, configured so (a transport may have configured it before)."""

    config: SessionConfig
    tools: ToolConfig


@dataclass(frozen=True)
class SessionChanged:
    """The client changed the session's configuration (what it asked for, as far as it was taken)."""

    config: SessionConfig
    tools: ToolConfig


@dataclass(frozen=True)
class ErrorReported:
    """A client's mistake (a bad event, a value out of range), or a failure of the server's that is not one
    reply's, reported to the client; the session goes on."""

    error: ProtocolError


# --- the caller's audio -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UserSpeechStarted:
    item_id: str  # the user turn it becomes
    audio_start_ms: int  # on the input clock


@dataclass(frozen=True)
class UserSpeechEnded:
    """The caller stopped speaking (the turn detector's decision): `item_id` is the user turn it becomes."""

    item_id: str
    audio_end_ms: int = 0


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
class InputCommitted:
    """The audio heard so far is a user turn (`item_id`), placed after `previous_item_id`."""

    item_id: str
    previous_item_id: str | None


@dataclass(frozen=True)
class InputCleared:
    """The client dropped the audio not yet committed."""


@dataclass(frozen=True)
class KeyPressed:
    digit: str
    at: float = 0.0  # wall clock (time.time())


# --- what the caller said ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class UserTranscriptGrew:
    """Words of the turn in progress that later readings will not change (partial transcripts)."""

    item_id: str
    delta: str


@dataclass(frozen=True)
class UserTranscribed:
    item_id: str
    text: str
    language: str | None = None
    audio_s: float = 0.0  # the audio transcribed


@dataclass(frozen=True)
class TranscriptionFailed:
    item_id: str
    message: str


@dataclass(frozen=True)
class CallerUnderstood:
    """Who spoke the turn and how (speaker, emotion, language)."""

    item_id: str
    context: TurnContext


# --- the conversation's items -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ItemAdded:
    item: ConversationItem
    previous_item_id: str | None


@dataclass(frozen=True)
class ItemFinished:
    """An item is complete (a transcribed turn, a finished call, an item the client created)."""

    item: ConversationItem
    previous_item_id: str | None = None


@dataclass(frozen=True)
class ItemDeleted:
    item_id: str


@dataclass(frozen=True)
class ItemShown:
    """The client asked to see an item."""

    item: ConversationItem


@dataclass(frozen=True)
class ToolsListing:
    """An operator's or client's MCP server being listed (its `mcp_list_tools` item)."""

    item_id: str
    state: Literal["in_progress", "completed", "failed"]


# --- a reply ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Usage:
    """Tokens in and out: text tokens (the Higgs model's tokenizer) and audio tokens (codec frames)."""

    text_in: int = 0
    audio_in: int = 0
    text_out: int = 0
    audio_out: int = 0


@dataclass(frozen=True)
class Failure:
    code: str
    message: str


@dataclass(frozen=True)
class ReplyState:
    """A response as it stands: its status (and why), its output items, its usage once over."""

    response_id: str
    status: str  # in_progress | completed | cancelled | failed | incomplete
    reason: str | None = None  # cancelled: turn_detected | client_cancelled; incomplete: max_output_tokens
    failure: Failure | None = None  # failed: why
    items: tuple[ConversationItem, ...] = ()
    usage: Usage | None = None
    metadata: Mapping[str, str] | None = None
    text_only: bool = False


@dataclass(frozen=True)
class ReplyStarted:
    state: ReplyState

    @property
    def response_id(self) -> str:
        return self.state.response_id


@dataclass(frozen=True)
class ReplyFinished:
    """A response is over: its spoken item and words (as far as they were heard), and how it ended."""

    response_id: str
    status: str  # completed | cancelled | failed | incomplete
    item_id: str | None
    text: str
    state: ReplyState | None = None


@dataclass(frozen=True)
class Place:
    """Where in a response an item is: the (one) content part of its `output_index`-th item."""

    response_id: str
    item_id: str
    output_index: int


@dataclass(frozen=True)
class ReplyItemAdded:
    """A new output item of a response, in the conversation after `previous_item_id`."""

    place: Place
    item: ConversationItem
    previous_item_id: str | None


@dataclass(frozen=True)
class ReplyItemDone:
    place: Place
    item: ConversationItem
    previous_item_id: str | None


@dataclass(frozen=True)
class ReplyMessageOpened:
    place: Place
    spoken: bool  # False: the words go out as text only


@dataclass(frozen=True)
class ReplyWords:
    """Words of the reply: spoken (as their audio goes out) or, for a text-only reply, written."""

    place: Place
    delta: str
    spoken: bool


@dataclass(frozen=True)
class ReplyMessageClosed:
    place: Place
    text: str | None  # the words, as far as they were heard
    spoken: bool


@dataclass(frozen=True)
class CallArgumentsGrew:
    """More of a call's arguments, as the responder writes them (`item`: its function_call / mcp_call)."""

    place: Place
    item: ConversationItem
    delta: str


@dataclass(frozen=True)
class CallArgumentsDone:
    place: Place
    item: ConversationItem


@dataclass(frozen=True)
class McpCallRunning:
    """The server runs an MCP call: started, then completed or failed."""

    place: Place
    state: Literal["in_progress", "completed", "failed"]


@dataclass(frozen=True)
class ReplyCut:
    """The listener talked over the reply (or the client said where it stopped playing): they heard `heard_ms`
    of its audio, and the history says so."""

    item_id: str
    heard_ms: float


@dataclass(frozen=True)
class TurnTimed:
    """A reply's latency by stage, from the end of the user's speech (None: a stage the turn skipped)."""

    response_id: str
    user_item_id: str | None
    reply_item_id: str | None  # the message being spoken (None: a reply with no words yet, e.g. a tool call)
    stages_ms: Mapping[str, float | None] = field(default_factory=dict)
    engine: str = "local"  # the engine that spoke it (a remote engine's URL or name)
    at: float = 0.0  # the end of the user's speech (the stages' zero) on the wall clock, time.time()
    engine_start_ms: float | None = None  # when the engine began the first phrase (traces split its wait there)


@dataclass(frozen=True)
class AgentFailed:
    """Something the agent could not do (a failed reply, a call the model got wrong), as its error code says."""

    code: str
    message: str
    response_id: str | None = None


DomainEvent = (SessionOpened | SessionChanged | ErrorReported | UserSpeechStarted | UserSpeechEnded | PauseJudged
               | InterruptionJudged | InputCommitted | InputCleared | KeyPressed | UserTranscriptGrew
               | UserTranscribed | TranscriptionFailed | CallerUnderstood | ItemAdded | ItemFinished | ItemDeleted
               | ItemShown | ToolsListing | ReplyStarted | ReplyFinished | ReplyItemAdded | ReplyItemDone
               | ReplyMessageOpened | ReplyWords | ReplyMessageClosed | CallArgumentsGrew | CallArgumentsDone
               | McpCallRunning | ReplyCut | TurnTimed | AgentFailed)
Observer = Callable[[DomainEvent], None]
Say = Callable[[DomainEvent], Awaitable[None]]  # how a part of the session speaks (to observers and the client)
