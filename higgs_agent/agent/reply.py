"""One response, start to `response.done`: what the responder writes, in the order it writes it — phrases,
each spoken as soon as it is complete with its audio handed to the output as it is decoded, and function
calls — and on barge-in the turn cut to what the listener heard (the client's truncate, else what the output
says was played).

Output items come as the responder produces them: an audio message for speech (a new one after a call), a
`function_call` for a function the client runs (the response ends; the client answers with a
`function_call_output` and `response.create`), an `mcp_call` for a tool of an MCP server the server runs
(its result goes back to the responder, which then speaks about it, within the same response), or an
`mcp_approval_request` when such a call needs the client's approval first.

The jobs are split: `ReplyRun` (here) runs the response and says its words (spoken, or as text for
`output_modalities: ["text"]`); `ResponseItems` (response_items.py) sequences its items and their events;
`ToolCalls` (reply_calls.py) runs its calls; `SessionOutput` (output.py) is the transport it speaks through.

Capacity is decided once, when the response starts (an engine lease): every phrase runs in the capacity the
response already holds. Everything the response waits for (the user's codes, the responder, the engine, a
tool) happens inside its one task, so a barge-in at any moment cancels all of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any


from higgs_agent import FRAME_RATE, HOP_LENGTH, SAMPLE_RATE
from higgs_agent.agent.conversation import Conversation, ConversationItem, SpokenPhrase, heard_text
from higgs_agent.agent.events import (
    AgentFailed,
    DomainEvent,
    Failure,
    ReplyCut,
    ReplyFinished,
    ReplyMessageClosed,
    ReplyMessageOpened,
    ReplyStarted,
    ReplyState,
    ReplyWords,
    Say,
    Usage,
)
from higgs_agent.agent.output import OutputClosed, SessionOutput
from higgs_agent.agent.responders.base import ReplyEvent, ReplyRequest, Responder, ResponderError
from higgs_agent.agent.reply_calls import CallOutcome, ToolCalls
from higgs_agent.agent.response_items import ResponseItems
from higgs_agent.agent.session_tools import MAX_TOOL_ROUNDS, SessionTools
from higgs_agent.agent.speaker import PhraseSpeaker, SpeakerTags
from higgs_agent.agent.tools.calls import (
    FunctionCallArgumentsDelta,
    FunctionCallDone,
    FunctionCallInvalid,
    FunctionCallStarted,
)
from higgs_agent.agent.turn_timing import TurnTiming
from higgs_agent.deadlines import StageTimeout, within
from higgs_agent.model.prompts import VoiceReference
from higgs_agent.protocol.errors import new_id
from higgs_agent.streaming.engine import AtCapacityError, Lease
from higgs_agent.streaming.latency import GenerationStats
from higgs_agent.streaming.speech_engine import EngineError, SpeechEngine

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReplyLimits:
    """Bounds on what a reply waits for outside the engine (the engine bounds its own: `EngineLimits`). A reply
    whose stage runs past its bound ends as `failed` with a `reply_stalled` error naming the stage."""

    responder_s: float = 30.0  # the responder's next event (its first words included)
    voice_reference_s: float = 15.0  # a library voice's codes (a preset is encoded on first use)
    tools_listing_s: float = 15.0  # the operator's MCP servers, listed when the session opened
    caller_voice_s: float = 15.0  # the clone of the caller's voice being made
    transcription_s: float = 30.0  # a user turn's words (before its reply; a stall fails the transcription)
    understanding_s: float = 15.0  # who spoke and how (the reply goes on without it)
    previous_reply_s: float = 60.0  # a reply before this turn that shows no progress (no event, no audio)


@dataclass
class Preparation:
    """What a response needs that may take a while to get (the user's codec codes): fetched inside the
    response's task, so a barge-in during it cancels it too. `history` rebuilds the chat from the
    conversation as it is now (after tool calls)."""

    request: ReplyRequest
    history: Callable[[], list[dict[str, Any]]]
    voice: VoiceReference | None = None
    scene: str | None = None
    speaker_voices: tuple[VoiceReference, ...] = ()  # one per [SPEAKERn]: multi-speaker replies


def being_made(reply: ReplyRun | None) -> ReplyRun | None:
    """The reply, if it is still being made. One whose `response.done` is sent no longer counts, though its task
    may not have ended yet: a client that read `response.done` may create, cancel or barge in at once."""
    return reply if reply is not None and not reply.finishing else None


def _stalled_message(stall: StageTimeout) -> str:
    return f"the reply stalled: {stall}; the session goes on, try again"


@dataclass
class ReplyRun:
    """A response in flight. `start()` runs it as one task; `cancel(reason)` stops it at the next engine step."""

    output: SessionOutput
    engine: SpeechEngine
    responder: Responder
    speaker: PhraseSpeaker
    timing: TurnTiming
    conversation: Conversation
    prepare: Callable[[], Awaitable[Preparation]]
    say: Say  # the session's: to its observers and its client
    tools: SessionTools | None = None
    user_item_id: str | None = None  # the turn this answers (for the latency event)
    user_audio_s: float = 0.0  # the turn's audio, for usage
    metadata: dict[str, str] | None = None  # response.create's, echoed in response.created / response.done
    max_output_tokens: int | str = "inf"  # our audio tokens are codec frames
    text_only: bool = False  # output_modalities ["text"]: the words are sent as text, nothing is spoken
    on_latency: Callable[[ReplyRun, dict[str, float | None]], Awaitable[None]] | None = None
    count_tokens: Callable[[str], Awaitable[int]] | None = None
    limits: ReplyLimits = field(default_factory=ReplyLimits)
    on_stall: Callable[[ReplyRun, StageTimeout], None] | None = None  # counted and logged by the session
    id: str = field(default_factory=lambda: new_id("resp"))
    status: str = "in_progress"
    reason: str | None = None  # why it was cancelled, or is incomplete
    failure: Failure | None = None  # why it failed
    item: ConversationItem | None = None  # the message being said now (a barge-in truncates its audio)
    heard_ms_at_cancel: float | None = None
    client_heard_ms: float | None = None  # from the client's conversation.item.truncate: wins when given
    task: asyncio.Task | None = None
    usage: Usage | None = None
    frames_out: int = 0
    _request: ReplyRequest | None = None
    _latency_sent: bool = False
    _message_open: bool = False  # `item` still takes phrases (no call has come after it)
    _tags: SpeakerTags = field(default_factory=SpeakerTags)
    finishing: bool = False  # response.done is on its way
    _stall: StageTimeout | None = None  # why the session abandoned it
    lease: Lease | None = None  # the response's capacity, once it has it (its `engine` names who speaks)
    _failed_by_stall: bool = False

    def __post_init__(self) -> None:
        self.events = ResponseItems(self.id, self.say, self.conversation)
        self.calls = ToolCalls(self.events, self.tools, self.conversation)

    @property
    def items(self) -> list[ConversationItem]:
        """The response's output items, in order."""
        return self.events.items

    @property
    def progress_at(self) -> float:
        """When the response last sent an event or audio."""
        return self.events.progress_at

    def start(self, on_done: Callable[[ReplyRun], None]) -> asyncio.Task:
        """Run the response as a task; `on_done` runs when it ends, even if cancelled before it ran."""
        self.task = asyncio.create_task(self._run(), name=self.id)
        self.task.add_done_callback(lambda _: on_done(self))
        return self.task

    @property
    def done(self) -> bool:
        return self.task is None or self.task.done()

    async def wait(self) -> None:
        """Until the response is done; never raises (a cancelled waiter stays cancelled)."""
        if self.task is not None:
            await asyncio.wait({self.task})

    async def wait_progressing(self) -> None:
        """Until the response is done, as long as it makes progress; StageTimeout("previous_reply") once it has
        sent nothing for `limits.previous_reply_s` (every stage inside is bounded, so this is a last guard)."""
        bound = self.limits.previous_reply_s
        while self.task is not None and not self.task.done():
            idle = time.monotonic() - self.progress_at
            if idle >= bound:
                raise StageTimeout("previous_reply", bound, f"{self.id} sent nothing for {idle:.1f} s")
            await asyncio.wait({self.task}, timeout=bound - idle)

    async def _send(self, event: DomainEvent) -> None:
        await self.events.send(event)

    def stop(self, reason: str) -> bool:
        """Stop now, without waiting: drop the reply audio the output still holds, note what the listener
        has heard, and cancel the task (its engine stream is let go of at the next step). False if the
        response was already over."""
        if self.done or self.status != "in_progress":
            return False
        self.status, self.reason = "cancelled", reason
        if self.item is not None:
            self.output.discard_audio(self.item.id)
            self.heard_ms_at_cancel = self.output.heard_ms(self.item.id)
        assert self.task is not None
        self.task.cancel()
        return True

    def abandon(self, stall: StageTimeout) -> bool:
        """Stop a response that stopped making progress: it ends as `failed` with a `reply_stalled` error
        naming the stage. False if it was already over."""
        if self.done or self.status != "in_progress":
            return False
        self._stall = stall
        if self.item is not None:
            self.output.discard_audio(self.item.id)
        assert self.task is not None
        self.task.cancel()
        return True

    async def cancel(self, reason: str) -> None:
        """`stop`, then wait for the task to settle (its closing events sent)."""
        if self.stop(reason):
            await self.wait()

    def state(self) -> ReplyState:
        return ReplyState(self.id, self.status, self.reason, self.failure, tuple(self.items), self.usage,
                          self.metadata, self.text_only)

    # -- the run ---------------------------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            await self._send(ReplyStarted(self.state()))
            # A text-only reply never reaches the engine: it holds no slot.
            capacity = contextlib.nullcontext(None) if self.text_only else self.engine.lease(self.id)
            async with capacity as lease:
                self.lease = lease
                prepared = await self.prepare()
                self._request = prepared.request
                await self._converse(lease, prepared)
            if self.status == "in_progress":
                self.status = "completed"
        except asyncio.CancelledError:
            if self._stall is not None:  # abandoned by the session: already counted there
                await self._fail("reply_stalled", _stalled_message(self._stall))
            else:
                self.status, self.reason = "cancelled", self.reason or "client_cancelled"
        except StageTimeout as exc:
            self._stalled(exc)
            self._failed_by_stall = True  # the worker may be what stalled: no more work for it (usage)
            await self._fail("reply_stalled", _stalled_message(exc))
        except (ResponderError, AtCapacityError, EngineError) as exc:
            log.warning("%s failed: %s", self.id, exc)
            code = {AtCapacityError: "at_capacity", EngineError: "engine_error"}.get(type(exc), "responder_error")
            await self._fail(code, str(exc))
        except OutputClosed as exc:  # the client is gone: nobody to tell
            log.info("%s stopped: %s", self.id, exc)
            self.status, self.failure = "failed", Failure("client_gone", str(exc))
            return
        except Exception as exc:  # noqa: BLE001 - a bug fails this response, never the session
            log.exception("%s failed", self.id)
            await self._fail("internal_error", f"the response failed: {exc!r}")
        with contextlib.suppress(OutputClosed):
            await self._finish()
            await self.output.flush_audio(self.id)  # after response.done: playback stops after it

    def _stalled(self, exc: StageTimeout) -> None:
        if self.on_stall is not None:
            self.on_stall(self, exc)
        else:
            log.error("%s stalled at %s: %s", self.id, exc.stage, exc)

    async def _fail(self, code: str, message: str) -> None:
        self.status, self.failure = "failed", Failure(code, message)
        with contextlib.suppress(OutputClosed):
            await self._send(AgentFailed(code, message, self.id))

    async def _converse(self, lease: Lease | None, prepared: Preparation) -> None:
        """Responder rounds: after calls the server ran (or calls it could not run), the responder hears
        their results and goes on, until it speaks without calling, or hands calls to the client."""
        request = prepared.request
        if await self.calls.run_approved(request):
            request = replace(request, messages=prepared.history())
        for round_index in range(MAX_TOOL_ROUNDS + 1):
            outcome = await self._round(lease, prepared, request)
            if self.status != "in_progress" or outcome.client_calls or outcome.approvals:
                return
            if not (outcome.server_calls or outcome.retry_messages):
                return
            if round_index == MAX_TOOL_ROUNDS:
                log.warning("%s: still calling tools after %d rounds; stopping", self.id, MAX_TOOL_ROUNDS)
                return
            request = replace(request, messages=[*prepared.history(), *outcome.retry_messages])

    async def _round(self, lease: Lease | None, prepared: Preparation, request: ReplyRequest) -> CallOutcome:
        events: asyncio.Queue[ReplyEvent | BaseException | None] = asyncio.Queue()
        producer = asyncio.create_task(self._produce(request, events))
        outcome = CallOutcome()
        calls: dict[str, ConversationItem | None] = {}  # call_id -> its item (None: awaiting approval)
        try:
            while (event := await within("responder", self.limits.responder_s, events.get())) is not None:
                if isinstance(event, BaseException):
                    raise event
                if isinstance(event, str) and self.text_only:
                    await self._write(event)
                elif isinstance(event, str):
                    assert lease is not None
                    if not await self._speak(event, lease, prepared):
                        self.status, self.reason = "incomplete", "max_output_tokens"
                        return outcome
                elif isinstance(event, FunctionCallStarted):
                    await self._close_message()
                    calls[event.call_id] = await self.calls.started(event, request)
                elif isinstance(event, FunctionCallArgumentsDelta):
                    await self.calls.delta(calls.get(event.call_id), event)
                elif isinstance(event, FunctionCallDone):
                    await self.calls.done(calls.get(event.call_id), event, request, outcome)
                elif isinstance(event, FunctionCallInvalid):
                    await self.calls.invalid(calls.get(event.call_id), event, outcome)
        finally:
            producer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await producer
        return outcome

    async def _produce(self, request: ReplyRequest, events: asyncio.Queue) -> None:
        """Pull from the responder while earlier phrases are being spoken."""
        try:
            async with contextlib.aclosing(self.responder.reply(request)) as stream:
                async for event in stream:
                    if isinstance(event, str):
                        if event.strip():
                            self.timing.mark("first_text")
                            await events.put(event.strip())
                    else:
                        await events.put(event)
            await events.put(None)
        except Exception as exc:  # noqa: BLE001 - any responder failure ends the reply as failed, never hangs it
            await events.put(exc if isinstance(exc, ResponderError) else ResponderError(f"responder failed: {exc!r}"))

    # -- items -----------------------------------------------------------------------------------------

    async def _open_message(self) -> ConversationItem:
        kind = "output_text" if self.text_only else "output_audio"
        item = ConversationItem(new_id("item"), "assistant", kind, text="", status="in_progress")
        await self.events.add(item)
        await self._send(ReplyMessageOpened(self.events.place(item), spoken=not self.text_only))
        self.item, self._message_open = item, True
        return item

    async def _close_message(self, status: str = "completed") -> None:
        """The message's closing events (when a call follows it, or at the end of the response)."""
        item = self.item
        if item is None or not self._message_open:
            return
        self._message_open = False
        if item.status == "in_progress":
            if item.content_type == "output_audio":
                item.text = item.spoken_text
            item.status = status  # type: ignore[assignment]
        await self._send(ReplyMessageClosed(self.events.place(item), item.text,
                                            spoken=item.content_type == "output_audio"))
        await self.events.done(item)

    async def _write(self, phrase: str) -> None:
        """A text-only reply: the phrase goes out as words, at once."""
        item = self.item if self._message_open else await self._open_message()
        assert item is not None
        delta = phrase if not item.text else " " + phrase
        item.text = (item.text or "") + delta
        await self._send(ReplyWords(self.events.place(item), delta, spoken=False))

    # -- speech ----------------------------------------------------------------------------------------

    def _frames_left(self) -> int | None:
        if not isinstance(self.max_output_tokens, int):
            return None
        return self.max_output_tokens - self.frames_out

    async def _speak(self, phrase: str, lease: Lease, prepared: Preparation) -> bool:
        """Speak one phrase; False when the response's token budget ran out."""
        left = self._frames_left()
        if left is not None and left <= 0:
            return False
        item = self.item if self._message_open else await self._open_message()
        assert item is not None
        said = phrase
        if prepared.speaker_voices:
            phrase, said = self._tags.tag(phrase)
        start_ms = item.audio_ms
        await self._send(ReplyWords(self.events.place(item), said if not item.phrases else " " + said,
                                    spoken=True))
        samples = 0
        item.phrases.append(SpokenPhrase(said, start_ms, start_ms))  # the timeline grows as audio goes out
        speech = self.speaker.speak(phrase, lease, prepared.voice, prepared.scene, max_frames=left,
                                    on_first_frame=self._first_frame,
                                    speaker_voices=prepared.speaker_voices)
        async with contextlib.aclosing(speech):  # a cancel here ends the stream at once, not at GC
            async for chunk in speech:
                await self.output.send_audio(self.id, item.id, chunk)
                self.events.progressed()
                samples += len(chunk)
                self.frames_out += len(chunk) // HOP_LENGTH
                item.phrases[-1] = SpokenPhrase(said, start_ms, start_ms + samples * 1000.0 / SAMPLE_RATE)
                if not self._latency_sent:
                    self.timing.mark("first_audio_sent")
                    await self._send_latency()
        left = self._frames_left()
        return left is None or left > 0

    def _first_frame(self, stats: GenerationStats) -> None:
        self.timing.mark("first_audio_frame")
        if stats.prefill_started_at is not None:  # same clock (perf_counter), marked on the model's worker
            self.timing.mark("engine_start", stats.prefill_started_at)

    # -- calls -----------------------------------------------------------------------------------------

    # -- the end ---------------------------------------------------------------------------------------

    async def _send_latency(self) -> None:
        self._latency_sent = True
        if self.on_latency is not None:
            await self.on_latency(self, self.timing.latency_ms())

    async def _finish(self) -> None:
        item = self.item
        if self.status == "cancelled" and item is not None and item.content_type == "output_audio":
            if self.client_heard_ms is not None:  # the client said where it stopped playing: already truncated
                item.text = heard_text(item.phrases, self.client_heard_ms)
            else:
                heard = self.heard_ms_at_cancel
                heard = self.output.heard_ms(item.id) if heard is None else heard
                item.text = heard_text(item.phrases, heard)
                await self._send(ReplyCut(item.id, heard))
            item.status = "incomplete"
        elif self.status == "cancelled" and item is not None:
            item.status = "incomplete"  # a text reply cut short: the words sent so far stand
        await self._close_message(status="completed" if self.status in ("completed", "in_progress") else "incomplete")
        for other in self.items:  # calls cut short by a cancel
            if other.status == "in_progress":
                other.status = "incomplete"
        if not self._latency_sent:
            await self._send_latency()
        self.usage = await self._usage()
        self.finishing = True  # from here a client that read response.done may create the next response
        said = next((item for item in self.items if item.kind == "message"), None)
        await self._send(ReplyFinished(self.id, self.status, said.id if said else None,
                                       (said.text or "") if said else "", self.state()))

    async def _usage(self) -> Usage:
        """Tokens in and out as OpenAI counts them: text tokens (the Higgs model's own tokenizer) and audio
        tokens (codec frames: 25 a second, in the user's turn and in the reply)."""
        text_in = text_out = 0
        if self.count_tokens is not None and self._stall is None and not self._failed_by_stall:
            try:  # usage is a report: never fail the response over it, nor hold up a failed one
                if self._request is not None:
                    text_in = await self.count_tokens("\n".join(str(m.get("content") or "")
                                                                for m in self._request.messages))
                spoken = " ".join(item.text or "" for item in self.items if item.kind == "message")
                text_out = await self.count_tokens(spoken)
            except StageTimeout as exc:
                self._stalled(exc)
            except Exception:  # noqa: BLE001
                log.exception("%s: counting tokens for usage failed", self.id)
        return Usage(text_in, int(round(self.user_audio_s * FRAME_RATE)), text_out, self.frames_out)
