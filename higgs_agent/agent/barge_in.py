"""What the caller's speech does to the agent's reply: nothing when none is audible; a cut at once (server_vad,
or a transport that cannot hold audio back: the reply being made is stopped, else the one still playing after
its `response.done` is cut to what was heard); or, under semantic_vad where the transport paces the audio out,
a hold until the words decide (interruptions.py: "wait" cuts, "uh-huh" plays on)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from higgs_agent.agent.conversation import Conversation, ConversationItem
from higgs_agent.agent.events import DomainEvent, InterruptionJudged, ReplyCut, Say
from higgs_agent.agent.interruptions import MAX_BACKCHANNEL_MS, is_backchannel
from higgs_agent.agent.listening import Listening
from higgs_agent.agent.output import SessionOutput
from higgs_agent.agent.reply import being_made

if TYPE_CHECKING:
    from higgs_agent.agent.config import TurnDetection
    from higgs_agent.agent.reply import ReplyRun


class BargeIn:
    def __init__(self, output: SessionOutput, conversation: Conversation, listening: Listening, say: Say,
                 publish: Callable[[DomainEvent], None], reply: Callable[[], ReplyRun | None]) -> None:
        self._output = output
        self._conversation = conversation
        self._listening = listening
        self._say = say
        self._publish = publish
        self._reply = reply  # the session's reply, maybe past its response.done
        self.held_by: str | None = None  # the user turn whose speech holds the reply: interruption or not?
        self.last_reply_item: ConversationItem | None = None  # the latest assistant audio, maybe still playing

    async def speech_started(self, item_id: str, detection: TurnDetection | None) -> ReplyCut | None:
        """The caller started speaking (turn `item_id`): hold or cut the reply as the turn detection says; a
        cut to tell the client after it is told of the speech."""
        if detection is None or not detection.interrupt_response:
            return None
        if self.held_by is not None:  # a held reply, and new speech: the last check was not settled
            await self.settle(backchannel=False)
            return None
        if detection.end_of_turn is not None and self._audible() and self._output.hold_audio():
            self.held_by = item_id  # its words decide
            self._listening.watch(item_id)
            return None
        return self.cut()

    async def heard(self, span: tuple[int, int] | None) -> None:
        """More of the caller's speech: too long to be an "uh-huh" interrupts."""
        if self.held_by is not None and span is not None and span[1] - span[0] >= MAX_BACKCHANNEL_MS:
            await self.settle(backchannel=False)

    async def words(self, item_id: str, words: str) -> None:
        """A reading of the speech that holds the reply: a word that is not a backchannel interrupts."""
        if item_id == self.held_by and not is_backchannel(words):
            await self.settle(backchannel=False)

    async def turn_ended(self, item: ConversationItem) -> bool:
        """The turn that held the reply ended before its words decided: True if it was only a backchannel (the
        reply plays on, and the turn gets no answer of its own)."""
        if item.id != self.held_by:
            return False
        backchannel = is_backchannel(item.text or "")
        await self.settle(backchannel)
        return backchannel

    async def settle(self, backchannel: bool) -> None:
        """The held reply plays on (a backchannel), or is cut as a barge-in always cut it."""
        item_id, self.held_by = self.held_by, None
        self._listening.watch(None)
        cut = None if backchannel else self.cut()
        self._output.release_audio()
        if item_id is not None:
            self._publish(InterruptionJudged(item_id, not backchannel))
        if cut is not None:
            await self._say(cut)

    def cut(self) -> ReplyCut | None:
        """Cut the reply being made, or the one still playing after its response.done (then: the cut to tell,
        after what the client is told first)."""
        if (reply := being_made(self._reply())) is not None:
            reply.stop("turn_detected")
            return None
        return self.cut_playing_reply()

    def cut_playing_reply(self) -> ReplyCut | None:
        """A barge-in after `response.done` while the reply still plays (transports that pace audio out at
        real time, WebRTC and phones, hold it after the response is over): drop what was not played and
        cut the turn to what was heard."""
        reply = self._reply()  # one whose response.done is sent may still be playing, its task not yet ended
        item = reply.item if reply is not None and reply.finishing and reply.item is not None else self.last_reply_item
        if item is None or not self._output.discard_audio(item.id):
            return None
        heard = min(self._output.heard_ms(item.id), item.audio_ms)
        self._conversation.truncate(item.id, 0, heard)
        return ReplyCut(item.id, heard)

    def _audible(self) -> bool:
        """A reply is being made, or its audio has not all been heard yet."""
        item = self.last_reply_item
        return being_made(self._reply()) is not None or (
            item is not None and self._output.heard_ms(item.id) < item.audio_ms)
