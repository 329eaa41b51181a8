"""One conversation, independent of the transport that carries it.

A transport (WebSocket, WebRTC, a phone call) hands the session typed client events (`handle`; the Realtime
codec at the edge parses the wire's JSON, transport/realtime_codec.py) and, if it decodes audio itself, raw
audio at its rate (`push_audio`); the session answers through a `SessionOutput`, and tells observers what
happened as domain events (`observe`). Data flows
one way: input audio -> turns (VAD or commits) -> understanding (transcript, codec codes) -> a reply
(responder text -> engine -> codec) -> output. Turns are understood one at a time, in order; a barge-in
cancels the reply from the audio path at once, without waiting for that queue.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from higgs_agent.agent.audio_recording import AudioRecorder, RecordedOutput
from higgs_agent.agent.barge_in import BargeIn
from higgs_agent.agent.caller_cloning import CallerCloning
from higgs_agent.agent.client_items import client_item
from higgs_agent.agent.config import CALLER_VOICE
from higgs_agent.agent.conversation import Conversation, ConversationItem, ToolCall
from higgs_agent.agent.events import (
    DomainEvent,
    ErrorReported,
    InputCleared,
    InputCommitted,
    ItemAdded,
    ItemDeleted,
    ItemFinished,
    ItemShown,
    KeyPressed,
    Observer,
    ReplyCut,
    SessionChanged,
    SessionOpened,
    ToolsListing,
    TurnTimed,
    UserSpeechEnded,
    UserSpeechStarted,
)
from higgs_agent.agent.input_audio import ASR_RATE, InputAudio
from higgs_agent.agent.interpreting import ClauseSpans
from higgs_agent.agent.listening import Listening, ListeningHooks
from higgs_agent.agent.recording import SessionRecorder
from higgs_agent.agent.reply import OutputClosed, ReplyRun, SessionOutput, being_made
from higgs_agent.agent.reply_setup import ReplyInputs, ReplySettings
from higgs_agent.agent.responders.base import Responder, tools_unsupported
from higgs_agent.agent.responders.fixed import FixedReply
from higgs_agent.agent.responders.translator import Translator
from higgs_agent.agent.services import AgentServices
from higgs_agent.agent.session_tools import SessionTools, tool_descriptions
from higgs_agent.agent.speaker import PhraseSpeaker
from higgs_agent.agent.transcription_session import no_responses_error
from higgs_agent.agent.turn_reading import TurnReader, WireAudio
from higgs_agent.agent.turn_timing import TurnTiming
from higgs_agent.agent.vad import SpeechPaused, SpeechStarted, SpeechStopped
from higgs_agent.audio import resample
from higgs_agent.audio_formats import AudioFormatError
from higgs_agent.deadlines import StageTimeout, within
from higgs_agent.defaults import DEFAULT_TENANT
from higgs_agent.model.asr import Transcript
from higgs_agent.protocol import client_events as ce
from higgs_agent.protocol.errors import ProtocolError, new_id

if TYPE_CHECKING:
    from higgs_agent.agent.tracing import TurnTracer

log = logging.getLogger(__name__)
MIN_COMMIT_MS = 100  # as the reference server: shorter buffers are refused
MAX_PENDING_TURNS = 4  # turns waiting to be understood; past this a commit is refused, not queued
DTMF_PAUSE_S = 1.5  # keypad digits this close together make one turn
_CANCEL_WAIT_S = 5.0  # a stalled reply that was stopped gets this long to end before the next turn goes on
# server_vad: a pause this long starts the turn's transcript, in case the turn ends there (when the silence that
# ends a turn is at least this much longer)
SPECULATIVE_PAUSE_MS = 200
_SPECULATION_MARGIN_MS = 100
METADATA_VALUE_CHARS = 512  # OpenAI's bound on a metadata value


@dataclass
class UserTurn:
    item: ConversationItem | None  # None: just a response.create, queued behind the turns before it
    audio: np.ndarray | None  # 16 kHz; None for typed text
    timing: TurnTiming
    create_response: bool
    epoch: int = 0  # speech starts seen when it was queued: a later one means the user spoke on
    response: ce.ResponseParams | None = None  # response.create's per-response settings
    wire: WireAudio | None = None
    early: asyncio.Future[Transcript] | None = None  # its transcript, begun at the pause where it ended
    translate: tuple[str, str] | None = None  # translation mode: (a turn's item id, the words of it to translate)
    wire_words: str | None = None  # what `wire` says, when it is a turn still being spoken (a clause's)


@dataclass(frozen=True)
class _Back:
    """The session, as its parts reach back to it: weakly, so a closed session that nobody holds is freed at
    once, not at the cycle collector's next full pass (the soak's memory creep, #20)."""

    session: weakref.ref[Session]

    async def say(self, event: DomainEvent) -> None:
        if (session := self.session()) is not None:
            await session.send(event)

    def publish(self, event: DomainEvent) -> None:
        if (session := self.session()) is not None:
            session._publish(event)

    def stalled(self, exc: StageTimeout) -> None:
        if (session := self.session()) is not None:
            session._stalled(None, exc)

    def reply(self) -> ReplyRun | None:
        session = self.session()
        return session.reply if session is not None else None


class Session:
    def __init__(self, services: AgentServices, output: SessionOutput, tenant: str = DEFAULT_TENANT,
                 transport: str = "websocket") -> None:
        self.services = services
        self.output = output
        self.tenant = tenant  # whose voices the session may use (one tenant per API key), and whose record it is
        self.config = services.session_config()
        self.offer = services.offer(tenant)
        self.conversation = Conversation()
        self.input = InputAudio(self.config.input_format, self._vad_settings(),
                                 noise=self.config.noise_reduction)
        self.speaker = PhraseSpeaker(services.engine, services.sampling)
        self.reply: ReplyRun | None = None
        self._speech_item_id: str | None = None
        self._turns: asyncio.Queue[UserTurn] = asyncio.Queue()
        self._pending: list[UserTurn] = []  # queued turns that will create a response
        self._epoch = 0  # speech starts so far
        self._turn_start_ms = 0  # where the turn in progress starts on the input clock (its prefix included)
        self.cloning = CallerCloning(services.engine, services.transcriber, self._keep, self.config.id)
        self._worker: asyncio.Task | None = None
        self._digits: list[str] = []  # DTMF keys waiting to become a turn
        self._digit_timer: asyncio.TimerHandle | None = None
        self.tools = SessionTools(operator_servers=services.mcp_servers, call_timeout_s=services.mcp_call_timeout_s)
        self._listing: asyncio.Task | None = None  # the operator's MCP servers, listed at the start
        self._background: set[asyncio.Task] = set()
        self.closed = False
        self._observers: list[Observer] = []
        self.recorder: SessionRecorder | None = None  # on record (serve --records-url): written as it happens
        if services.records is not None:
            self.recorder = SessionRecorder(services.records, self.config.id, tenant, transport)
            self.observe(self.recorder.observe)
        self.audio_recorder: AudioRecorder | None = None  # and both sides' audio (serve --records-audio)
        if services.records is not None and services.records.audio:
            self.audio_recorder = AudioRecorder(services.records, self.config.id,
                                                lambda heard=self.input: heard.audio_ms)  # not the session: no cycle
            self.input.on_audio = self.audio_recorder.caller
            self.output = RecordedOutput(output, self.audio_recorder)
            self.observe(self.audio_recorder.observe)
        self.tracer: TurnTracer | None = None  # each answered turn a trace (serve --otlp-endpoint)
        if services.traces is not None:
            from higgs_agent.agent.tracing import TurnTracer  # OpenTelemetry loads only when traces are on

            self.tracer = TurnTracer(services.traces.tracer, self.config.id, tenant, transport)
            self.observe(self.tracer.observe)
        self.listening = Listening(services.transcriber, ListeningHooks(
            send=self.send, end_turn=self._end_turn_at, publish=self._publish,
            on_words=lambda item_id, words: self.barge_in.words(item_id, words),
            language=lambda: (self.config.transcription.language, self.config.transcription.prompt),
            turn_model=services.end_of_turn_model, on_agreed=self._agreed))
        self.clauses = ClauseSpans()  # simultaneous interpreting: the clauses of each turn handed over so far
        self._waiting_clause: UserTurn | None = None  # the clause queued and not yet taken (one at a time)
        back = _Back(weakref.ref(self))  # the parts speak back through it, and never keep the session alive
        self.reader = TurnReader(services, back.say, self.listening, self.cloning, back.stalled)
        self.inputs = ReplyInputs(services, tenant, self.conversation, self.tools, self.cloning, self.reader)
        self.barge_in = BargeIn(output, self.conversation, self.listening, back.say, back.publish, back.reply)

    # --- lifecycle -------------------------------------------------------------------------------------

    async def open(self) -> None:
        self.services.metrics.sessions_total.inc()
        self.services.metrics.sessions_active.inc()
        self._worker = asyncio.create_task(self._understand_turns(), name=f"{self.config.id}-turns")
        await self.send(SessionOpened(self.config, self.tools.config))
        if self.tools.operator_servers:
            self._listing = asyncio.create_task(self._list_tools(), name=f"{self.config.id}-mcp")

    async def close(self) -> None:
        """The client is gone: stop the reply (its engine slot frees at once) and all pending work."""
        if self.closed:
            return
        self.closed = True
        self.services.metrics.sessions_active.dec()
        if self._digit_timer is not None:
            self._digit_timer.cancel()
        self.listening.close()
        if self._worker is not None:  # first: so it cannot start another reply
            self._worker.cancel()
            await asyncio.wait({self._worker})
        if self.reply is not None:
            await self.reply.cancel("client_cancelled")  # nobody hears it: the client is gone
        if self._listing is not None:
            self._listing.cancel()
        for task in list(self._background):
            task.cancel()
        await self.tools.aclose()
        if self.audio_recorder is not None:
            self.audio_recorder.end()
        if self.recorder is not None:  # after the reply's cancel, whose last words are on record first
            self.recorder.end()
        if self.tracer is not None:
            self.tracer.end()
        # A cancelled task keeps its CancelledError, whose traceback holds the task's frames, whose `self` is
        # this session: a reference cycle through every task the session still names. Left alone, the session
        # and its audio (two minutes of input tape, the caller's gathered speech) wait for the cycle collector,
        # whose full passes are rare in a big process: the soak's memory creep (#20). Let go of them here.
        self._worker = self._listing = self._digit_timer = None
        # And whatever still refers to the session (a transport's own cycles: aiortc's event handlers,
        # a carrier's paced output), its audio goes now.
        self.input.release()
        self.cloning.release()
        self.reader.release()

    def _keep(self, task: asyncio.Future) -> None:
        """A background task of the session's, cancelled when it closes."""
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # --- input -----------------------------------------------------------------------------------------

    def observe(self, observer: Observer) -> None:
        """Hear the conversation's facts as domain events (agent/events.py), whatever the client is told."""
        self._observers.append(observer)

    def _publish(self, event: DomainEvent) -> None:
        for observer in list(self._observers):
            try:
                observer(event)
            except Exception:  # noqa: BLE001 - an observer's bug must not break the conversation
                log.exception("an observer failed on %s", type(event).__name__)

    async def report(self, error: ProtocolError) -> None:
        self.services.metrics.errors.labels(code=error.code).inc()
        await self.send(ErrorReported(error))

    async def send(self, event: DomainEvent) -> None:
        """What the session says: to its observers, then to its client (the transport encodes it for its wire)."""
        self._publish(event)
        await self.output.send_event(event)

    async def handle(self, event: Any) -> None:  # noqa: ANN401 - one of client_events.ClientEvent
        """One typed client event (the Realtime codec at the edge parsed it: transport/realtime_codec.py);
        anything wrong with it becomes an `error` event. OutputClosed is for the transport to act on."""
        handler = {
            "session.update": self._session_update,
            "input_audio_buffer.append": self._append,
            "input_audio_buffer.commit": self._commit,
            "input_audio_buffer.clear": self._clear,
            "output_audio_buffer.clear": self._clear_output,
            "conversation.item.create": self._item_create,
            "conversation.item.truncate": self._truncate,
            "conversation.item.delete": self._delete,
            "conversation.item.retrieve": self._retrieve,
            "response.create": self._response_create,
            "response.cancel": self._response_cancel,
        }[event.type]
        try:
            await handler(event)
        except ProtocolError as exc:  # the client's mistake: an `error` event, and the session goes on
            exc.event_id = exc.event_id or event.event_id
            await self.report(exc)
        except OutputClosed:
            raise
        except Exception as exc:  # noqa: BLE001 - a bug must not end the session
            log.exception("handling a %s failed", event.type)
            await self.report(ProtocolError("server_error", f"internal error: {exc!r}", type="server_error",
                                            event_id=event.event_id))

    async def push_audio(self, samples: np.ndarray, rate: int) -> None:
        """Decoded caller audio from a transport that does its own decoding (WebRTC at 48 kHz, a phone at
        8 kHz: any rate)."""
        if self.closed:  # a transport's last frames after the session ended
            return
        await self._on_vad_events(self.input.push(samples, rate))
        await self._heard()

    async def say(self, text: str) -> None:
        """Speak fixed words as a response of their own (a greeting when a call connects, an apology): they
        enter the conversation as the assistant's, so the responder knows they were said."""
        await self._after_reply()
        if not self.closed:
            self._respond(UserTurn(None, None, TurnTiming(), create_response=True), responder=FixedReply(text))

    async def dtmf(self, digit: str) -> None:
        """A key the caller pressed (a phone transport's DTMF): sent to the client as OpenAI's
        `input_audio_buffer.dtmf_event_received`, and collected into a user turn the responder reads ("The
        caller pressed 1, 2 on the keypad.") once no key has followed for `DTMF_PAUSE_S`."""
        await self.send(KeyPressed(digit, time.time()))
        self._digits.append(digit)
        if self._digit_timer is not None:
            self._digit_timer.cancel()
        self._digit_timer = asyncio.get_running_loop().call_later(
            DTMF_PAUSE_S, lambda: asyncio.ensure_future(self._keypad_turn()))

    async def _keypad_turn(self) -> None:
        digits, self._digits = self._digits, []
        if not digits or self.closed:
            return
        item = self.conversation.add(ConversationItem(new_id("item"), "user", "input_text",
                                                      text=f"The caller pressed {', '.join(digits)} on the keypad."))
        previous = self.conversation.previous_id(item)
        await self.send(ItemAdded(item, previous))
        await self.send(ItemFinished(item, previous))
        self._queue(UserTurn(item, None, TurnTiming(), create_response=self._turns_create_responses,
                             epoch=self._epoch))

    def configure(self, raw: Mapping[str, Any]) -> list[ProtocolError]:
        """A session config applied before `open()` (a client secret's, a WebRTC call's form), as
        session.update applies it but without events; returns the notes to report once open. ProtocolError
        (nothing applied) for a bad value."""
        self.config, notes = self.config.updated(dict(raw), self.offer, type_fixed=False)
        self.input.reconfigure(self.config.input_format, self._vad_settings(), self.config.noise_reduction)
        return notes

    async def _session_update(self, event: ce.SessionUpdate) -> None:
        raw = event.session
        tools = self.tools.config.updated(raw, "session") if "tools" in raw or "tool_choice" in raw else None
        config, notes = self.config.updated(raw, self.offer)
        if tools is not None and tools.mcp_servers and not self.services.allow_client_mcp:
            notes.append(ProtocolError("unsupported_value", "this server does not connect to MCP servers named by "
                                       "clients (its operator can allow it: serve --allow-client-mcp); the rest "
                                       "of the update was applied", param="session.tools"))
            tools = None
        responder = self.services.responder(config.responder)
        if (tools or self.tools.config).tools and not getattr(responder, "supports_tools", False):
            if tools is not None:  # the tools are refused, whatever else changes
                notes.append(ProtocolError("invalid_value", tools_unsupported(responder.name), param="session.tools"))
                tools = None
            else:  # the responder is refused: the session's tools stay usable
                notes.append(ProtocolError("invalid_value", tools_unsupported(responder.name,
                                                                              "session.tools first"),
                                           param="session.higgs.responder"))
                config = config.with_responder(self.config.responder)
        self.config = config
        servers_before = self.tools.servers
        if tools is not None:
            self.tools.config = tools
        self.input.reconfigure(self.config.input_format, self._vad_settings(), self.config.noise_reduction)
        for note in notes:
            note.event_id = event.event_id
            await self.report(note)
        try:
            if self.tools.servers != servers_before:
                await self._list_tools()
        finally:  # the config changed, whatever the listing did: the client (and its encoder) must know
            await self.send(SessionChanged(self.config, self.tools.config))

    async def _list_tools(self) -> None:
        """List the MCP servers not listed yet; each listing is an `mcp_list_tools` item, as OpenAI sends."""
        for listing in await self.tools.refresh():
            item = self.conversation.add(ConversationItem.tool(new_id("mcpl"), "mcp_list_tools", ToolCall(
                "", "", server_label=listing.server_label, tools=tool_descriptions(listing.tools))))
            previous = self.conversation.previous_id(item)
            await self.send(ItemAdded(item, previous))
            await self.send(ToolsListing(item.id, "in_progress"))
            if listing.error is None:
                await self.send(ToolsListing(item.id, "completed"))
            else:
                await self.send(ToolsListing(item.id, "failed"))
                await self.report(ProtocolError("mcp_list_tools_failed", f"MCP server {listing.server_label}: "
                                                f"{listing.error.get('message')}", type="server_error"))
            await self.send(ItemFinished(item, previous))

    async def _append(self, event: ce.InputAudioBufferAppend) -> None:
        try:
            vad_events = self.input.append(event.data)
        except AudioFormatError as exc:
            raise ProtocolError("invalid_audio", str(exc), param="audio") from None
        await self._on_vad_events(vad_events)
        await self._heard()

    async def _heard(self) -> None:
        span = self.input.speech_span()
        self.listening.heard(span, self.input.audio_ms, self.input.speech_so_far)
        await self.barge_in.heard(span)

    async def _on_vad_events(self, vad_events: list) -> None:
        for vad_event in vad_events:
            if isinstance(vad_event, SpeechStarted):
                await self._speech_started(vad_event.audio_start_ms)
            elif isinstance(vad_event, SpeechPaused):
                detection = self.config.turn_detection
                self.listening.paused(vad_event, detection.end_of_turn if detection is not None else None)
            else:
                await self._speech_stopped(vad_event)

    async def _end_turn_at(self, pause: int) -> None:
        """The end-of-turn judge found the turn complete at this pause: end it now, unless the caller went on."""
        stopped = self.input.end_turn(pause)
        if stopped is not None and not self.closed:
            await self._speech_stopped(stopped)

    async def _speech_started(self, audio_start_ms: int) -> None:
        self._speech_item_id = new_id("item")
        self._turn_start_ms = audio_start_ms
        self._epoch += 1
        self.listening.started(self._speech_item_id, audio_start_ms)
        # the reply's queued audio is dropped before the client hears of the speech; the cut is told after it
        cut = await self.barge_in.speech_started(self._speech_item_id, self.config.turn_detection)
        await self.send(UserSpeechStarted(self._speech_item_id, audio_start_ms))
        if cut is not None:
            await self.send(cut)

    async def _speech_stopped(self, stopped: SpeechStopped) -> None:
        audio_end_ms = stopped.audio_end_ms
        # how long after the last word the turn was called (audio clock: a client streaming in real time)
        timing = TurnTiming(end_of_turn_ms=float(self.input.audio_ms - audio_end_ms))
        item_id = self._speech_item_id or new_id("item")
        self._speech_item_id = None
        early = self.listening.take(stopped.audio_start_ms, audio_end_ms)
        self.listening.stopped()
        await self.send(UserSpeechEnded(item_id, audio_end_ms))
        wire = WireAudio(self.input.tape.slice_ms(self._turn_start_ms, audio_end_ms), self.input.tape.rate)
        await self._add_user_audio(item_id, stopped.audio, timing, create_response=self._turns_create_responses,
                                   wire=wire, early=early, start_ms=stopped.audio_start_ms)

    async def _commit(self, event: ce.InputAudioBufferCommit) -> None:
        if self.input.buffered_ms < MIN_COMMIT_MS:
            raise ProtocolError("input_audio_buffer_commit_empty", f"buffer too small: {self.input.buffered_ms} ms "
                                f"of audio, at least {MIN_COMMIT_MS} ms are needed to commit")
        self._check_queue()
        turn = self.input.commit()
        wire = WireAudio(self.input.tape.slice_ms(turn.start_ms, turn.end_ms), self.input.tape.rate)
        await self._add_user_audio(new_id("item"), turn.audio, TurnTiming(),
                                   create_response=self._turns_create_responses, wire=wire, start_ms=turn.start_ms)

    @property
    def _turns_waiting(self) -> int:
        """Turns queued to be understood, a clause waiting to be translated not counted (one at most waits)."""
        return self._turns.qsize() - (self._waiting_clause is not None)

    def _check_queue(self) -> None:
        if self._turns_waiting >= MAX_PENDING_TURNS:
            raise ProtocolError("turn_queue_full", f"{MAX_PENDING_TURNS} turns are still waiting to be "
                                "transcribed; commit again once they are (conversation.item.input_audio_"
                                "transcription.completed)")

    async def _add_user_audio(self, item_id: str, audio: np.ndarray, timing: TurnTiming, create_response: bool,
                              after: str | None = None, wire: WireAudio | None = None,
                              early: asyncio.Future[Transcript] | None = None, start_ms: float | None = None) -> None:
        """A user turn of audio (16 kHz): `start_ms` is where it starts on the input clock (None: an item the
        client created)."""
        if self._turns_waiting >= MAX_PENDING_TURNS:  # VAD turns too: a flood of them is dropped, and said so
            await self.report(ProtocolError("turn_queue_full", f"{MAX_PENDING_TURNS} turns are still waiting to "
                                            "be transcribed; this one was dropped"))
            return
        item = self.conversation.add(ConversationItem(item_id, "user", "input_audio",
                                                      audio_seconds=len(audio) / ASR_RATE), after=after)
        previous = self.conversation.previous_id(item)
        await self.send(InputCommitted(item_id, previous))
        await self.send(ItemAdded(item, previous))
        if self.audio_recorder is not None:
            self.audio_recorder.turn(item_id, audio, start_ms)
        wire = wire if wire is not None and len(wire.samples) else WireAudio(audio, ASR_RATE)
        self.reader.heard(item_id, wire)
        self._queue(UserTurn(item, audio, timing, create_response, epoch=self._epoch, wire=wire, early=early))

    def _queue(self, turn: UserTurn) -> None:
        if turn.create_response:
            self._pending.append(turn)
        self._turns.put_nowait(turn)

    async def _clear(self, event: ce.InputAudioBufferClear) -> None:
        self.input.discard()
        self._speech_item_id = None
        self.listening.stopped()
        if self.barge_in.held_by is not None:  # that speech is gone: the reply plays on
            await self.barge_in.settle(backchannel=True)
        await self.send(InputCleared())

    async def _clear_output(self, event: ce.OutputAudioBufferClear) -> None:
        """The client stopped playback: cancel the reply, or cut the one still playing; keep what was heard."""
        if (reply := self._active_reply) is not None:
            await reply.cancel("client_cancelled")
        elif (cut := self.barge_in.cut_playing_reply()) is not None:
            await self.send(cut)

    async def _item_create(self, event: ce.ConversationItemCreate) -> None:
        item = client_item(event, self.conversation, self.config.input_format)
        if isinstance(item, ConversationItem):
            await self._add_done(item, event.previous_item_id)
            return
        self._check_queue()
        await self._add_user_audio(item.item_id, resample(item.audio, item.rate, ASR_RATE), TurnTiming(),
                                   create_response=False, after=event.previous_item_id,
                                   wire=WireAudio(item.audio, item.rate))

    async def _add_done(self, item: ConversationItem, after: str | None) -> None:
        added = self.conversation.add(item, after=after)
        previous = self.conversation.previous_id(added)
        await self.send(ItemAdded(added, previous))
        await self.send(ItemFinished(added, previous))

    async def _truncate(self, event: ce.ConversationItemTruncate) -> None:
        item = self.conversation.truncate(event.item_id, event.content_index, event.audio_end_ms)
        if self.reply is not None and self.reply.item is item:
            self.reply.client_heard_ms = event.audio_end_ms  # the client knows best what it played
        await self.send(ReplyCut(item.id, event.audio_end_ms))

    async def _delete(self, event: ce.ConversationItemDelete) -> None:
        self.conversation.delete(event.item_id)
        await self.send(ItemDeleted(event.item_id))

    async def _retrieve(self, event: ce.ConversationItemRetrieve) -> None:
        await self.send(ItemShown(self.conversation.get(event.item_id)))

    async def _response_create(self, event: ce.ResponseCreate) -> None:
        if self.config.transcribes_only:
            raise no_responses_error(event.type)
        reply = self._active_reply
        busy = reply.id if reply is not None else ("a queued response" if self._pending else None)
        if busy:  # one response at a time writes to the conversation, as the reference server enforces
            raise ProtocolError("conversation_already_has_active_response",
                                f"{busy} is still in progress; cancel it or wait for response.done")
        params = event.response
        if params is not None:  # checked now: a bad value is the client's error, not the reply's failure
            ReplySettings.check(params, self.services.responder(self.config.responder), self.tools)
        # Behind the queue: a commit just before this must be transcribed before the reply is written.
        self._queue(UserTurn(None, None, TurnTiming(), create_response=True, response=params))

    async def _response_cancel(self, event: ce.ResponseCancel) -> None:
        if self.config.transcribes_only:
            raise no_responses_error(event.type)
        reply = self._active_reply
        if reply is None and self._pending and not event.response_id:
            for turn in self._pending:  # not started yet: it never will
                turn.create_response = False
            self._pending.clear()
            return
        if reply is None or (event.response_id and event.response_id != reply.id):
            raise ProtocolError("response_cancel_not_active", "there is no active response to cancel",
                                param="response_id")
        await reply.cancel("client_cancelled")

    # --- understanding and replying --------------------------------------------------------------------

    async def _understand_turns(self) -> None:
        while True:
            turn = await self._turns.get()
            try:
                await self._take_turn(turn)
            except OutputClosed:
                return  # the transport is closing the session
            except Exception as exc:  # noqa: BLE001 - one failed turn must not stop the session listening
                log.exception("a turn failed")
                await self.report(ProtocolError("server_error", f"the turn failed: {exc!r}", type="server_error"))

    async def _take_turn(self, turn: UserTurn) -> None:
        if turn is self._waiting_clause:
            self._waiting_clause = None  # taken: the next clause waits on its own
        if turn.item is not None and turn.audio is not None:
            captions = self.config.transcribes_only  # the words only: not who spoke, nor their voice
            await self.reader.read(turn.item, turn.audio, self.config.transcription, turn.early,
                                   None if captions else turn.wire, in_caller_voice=self.config.voice == CALLER_VOICE,
                                   timing=turn.timing, captions=captions)
        if turn in self._pending:
            self._pending.remove(turn)
        if turn.item is not None and await self.barge_in.turn_ended(turn.item):
            return  # it held the reply and was only an "uh-huh": the reply plays on, and it needs no answer
        if not turn.create_response or self.closed:
            return
        if self._spoke_on(turn):
            return  # the user spoke on after this turn: the next turn answers both
        if turn.item is not None and self.clauses.handed(turn.item.id):  # its first clauses are translated
            turn.translate = (turn.item.id, self.clauses.rest(turn.item.id, turn.item.text or ""))
        await self._after_reply()  # a reply the user did not interrupt: let it finish first
        if not self.closed and not self._spoke_on(turn):
            self._respond(turn)

    def _agreed(self, item_id: str, words: str, reading: tuple[int, int, str]) -> None:
        """Translation mode, with an LLM to translate: a clause the speaker closed in the turn they are still
        speaking is translated while they go on (interpreting.py), after the clauses before it. One clause waits
        at a time: when the interpreter is behind, the next clauses join it (a longer span, not a longer queue).
        A caller with no clone yet (their first turn) is cloned from the reading's audio."""
        translation = self.config.translation
        translator = self._responder() if translation is not None and translation.simultaneous else None
        if not (isinstance(translator, Translator) and translator.simultaneous and self._turns_create_responses
                and item_id == self._speech_item_id and item_id != self.barge_in.held_by):
            return  # a turn already over (its rest says the rest), or speech that may be only an "uh-huh"
        if (span := self.clauses.agreed(item_id, words)) is None:
            return
        waiting = self._waiting_clause
        if waiting is not None and waiting.translate is not None and waiting.translate[0] == item_id:
            waiting.translate = (item_id, f"{waiting.translate[1]} {span}")
            return
        wire, heard = None, None
        if self.config.voice == CALLER_VOICE and self.cloning.reference is None:
            start_ms, end_ms, heard = reading
            wire = WireAudio(self.input.tape.slice_ms(start_ms, end_ms), self.input.tape.rate)
        self._waiting_clause = UserTurn(None, None, TurnTiming(), create_response=True, translate=(item_id, span),
                                        wire=wire, wire_words=heard)
        self._queue(self._waiting_clause)

    async def _after_reply(self) -> None:
        """Wait for the reply in flight to end while it makes progress; one that stalls is stopped, and given
        up on if it does not end soon after, so the next turn is answered whatever became of it."""
        reply = self.reply
        if reply is None:
            return
        try:
            await reply.wait_progressing()
        except StageTimeout as exc:
            self._stalled(reply, exc)
            if reply.abandon(exc):
                try:
                    await within("previous_reply_cancel", _CANCEL_WAIT_S, reply.wait())
                except StageTimeout as late:
                    self._stalled(reply, late)
            if self.reply is reply:
                self.reply = None

    def _stalled(self, reply: ReplyRun | None, exc: StageTimeout) -> None:
        """A stage that ran past its bound: named in the log and counted (higgs_reply_stalls_total{stage})."""
        self.services.metrics.reply_stalls.labels(stage=exc.stage).inc()
        log.error("%s stalled at %s: %s", reply.id if reply is not None else self.config.id, exc.stage, exc)

    def _spoke_on(self, turn: UserTurn) -> bool:
        detection = self.config.turn_detection
        return bool(turn.item is not None and turn.epoch != self._epoch and detection and detection.interrupt_response)

    def _respond(self, turn: UserTurn, responder: Responder | None = None) -> None:
        responder = responder or self._responder()
        # a clause belongs to a turn not yet in the conversation: the turn before is not what it answers
        clause = turn.translate[0] if turn.translate is not None and turn.item is None else None
        user = None if clause else self.conversation.last_user_item()
        settings = ReplySettings.of(turn.response, self.config, self.tools, user)
        if isinstance(responder, Translator):
            responder, settings = self._interpreting(turn, responder, settings)
        voice_sample = (clause, turn.wire, turn.wire_words) if clause and turn.wire is not None and turn.wire_words \
            else None
        prepare = self.inputs.preparation(settings, self.config, responder, user, turn.audio, turn.timing,
                                          self._listing, voice_sample)
        self.reply = ReplyRun(self.output, self.services.engine, responder, self.speaker, turn.timing,
                              self.conversation, prepare, self.send, tools=self.tools,
                              user_item_id=clause or (user.id if user is not None else None),
                              user_audio_s=user.audio_seconds if user is not None else 0.0,
                              metadata=settings.metadata, max_output_tokens=settings.max_output_tokens,
                              on_latency=self._latency, count_tokens=self.inputs.count_tokens,
                              limits=self.services.reply_limits, on_stall=self._stalled,
                              text_only=settings.text_only)
        self.reply.start(on_done=self._reply_done)

    def _interpreting(self, turn: UserTurn, translator: Translator,
                      settings: ReplySettings) -> tuple[Translator, ReplySettings]:
        """A translation names what it translates in its metadata (`source_item_id`, `source_text`, and
        `source_part`): a `clause` of a turn still being spoken, the `rest` of a turn whose clauses went before
        (nothing left: an empty, text-only response, so a client knows the turn is done, holding no engine
        slot), or a whole `turn`."""
        if turn.translate is not None:
            (item_id, words), part = turn.translate, "rest" if turn.item is not None else "clause"
            translator = translator.for_text(words)
        elif turn.item is not None:
            item_id, words, part = turn.item.id, turn.item.text or "", "turn"
        else:
            return translator, settings
        metadata = {**(settings.metadata or {}), "source_item_id": item_id,
                    "source_text": words[:METADATA_VALUE_CHARS], "source_part": part}
        return translator, replace(settings, metadata=metadata, text_only=settings.text_only or not words.strip())

    def _responder(self) -> Responder:
        """The session's responder, or in translation mode an interpreter on top of the LLM."""
        translation = self.config.translation
        if translation is None:
            return self.services.responder(self.config.responder)
        return Translator(translation.to, translation.source, llm=self.services.translator(),
                          transcriber=self.services.transcriber)

    @property
    def _active_reply(self) -> ReplyRun | None:
        return being_made(self.reply)

    def _reply_done(self, run: ReplyRun) -> None:
        if run.status == "in_progress":  # cancelled before its task ever ran: nothing was sent
            run.status = "cancelled"
        self.services.metrics.responses.labels(status=run.status).inc()
        if run.item is not None:
            self.barge_in.last_reply_item = run.item
        if self.reply is run:
            self.reply = None

    async def _latency(self, run: ReplyRun, latency_ms: dict[str, float | None]) -> None:
        if (run.metadata or {}).get("source_part") != "clause":  # a clause is timed from when it was agreed
            self.services.metrics.observe_turn(latency_ms)
        stages = ", ".join(f"{stage.replace('_', ' ')} {'-' if ms is None else f'{ms:.0f} ms'}"
                           for stage, ms in latency_ms.items())
        log.info("turn latency %s: %s (from the end of the user's speech)", run.id, stages)
        engine = run.lease.engine if run.lease is not None else self.services.engine.name
        await self.send(TurnTimed(run.id, run.user_item_id, run.item.id if run.item is not None else None,
                                  dict(latency_ms), engine=engine, at=run.timing.wall_at,
                                  engine_start_ms=run.timing.since_ms("engine_start")))

    # --- helpers ---------------------------------------------------------------------------------------

    @property
    def _turns_create_responses(self) -> bool:
        """A committed audio turn is answered by itself under turn detection with create_response; in
        manual mode (turn_detection null) only response.create answers."""
        detection = self.config.turn_detection
        return bool(detection and detection.create_response and not self.config.transcribes_only)

    def _vad_settings(self):  # noqa: ANN202 - VadSettings | None
        """The detection's VAD; under server_vad, one that reports a pause where the transcript can begin."""
        if self.config.turn_detection is None:
            return None
        vad = self.config.turn_detection.vad
        if vad.pause_ms is None and vad.silence_duration_ms >= SPECULATIVE_PAUSE_MS + _SPECULATION_MARGIN_MS:
            vad = replace(vad, pause_ms=SPECULATIVE_PAUSE_MS)
        return vad
