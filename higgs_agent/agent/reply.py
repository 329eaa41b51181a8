"""One response, start to `response.done`: reply text phrase by phrase from the responder, each phrase
spoken as soon as it is complete, audio handed to the output as it is decoded; on barge-in the turn is cut
to what the listener heard (the client's truncate, else what the output says was played).

Capacity is decided once, when the response starts (an engine lease): every phrase after the first runs
in the capacity the response already holds. Everything the response waits for (the user's codes, the
responder, the engine) happens inside its one task, so a barge-in at any moment cancels all of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from higgs_agent import FRAME_RATE, HOP_LENGTH, SAMPLE_RATE
from higgs_agent.agent.conversation import ConversationItem, SpokenPhrase, heard_text
from higgs_agent.agent.responders.base import ReplyRequest, Responder, ResponderError
from higgs_agent.agent.speaker import PhraseSpeaker
from higgs_agent.agent.turn_timing import TurnTiming
from higgs_agent.model.prompts import VoiceReference
from higgs_agent.protocol import server_events as se
from higgs_agent.protocol.errors import new_id
from higgs_agent.streaming.engine import AtCapacityError, StreamingEngine

log = logging.getLogger(__name__)


class OutputClosed(Exception):
    """The transport can no longer deliver: the client is gone, or stopped reading and was disconnected."""


class SessionOutput(Protocol):
    """What a transport gives a session: events out, reply audio out, a way to drop reply audio it holds but
    has not yet sent (barge-in), and what the listener has heard. Sends raise OutputClosed once the client
    cannot be reached."""

    async def send_event(self, event: se.ServerEvent) -> None: ...

    async def send_audio(self, response_id: str, item_id: str, samples: np.ndarray) -> None:
        """float32 mono 24 kHz; the transport encodes it for its wire."""

    def discard_audio(self, item_id: str) -> int:
        """Drop queued, unsent audio of an item; return the samples (24 kHz) dropped."""

    def heard_ms(self, item_id: str) -> float:
        """How much of the item's audio the listener has heard by now."""


@dataclass
class Preparation:
    """What a response needs that may take a while to get (the user's codec codes): fetched inside the
    response's task, so a barge-in during it cancels it too."""

    request: ReplyRequest
    voice: VoiceReference | None = None
    scene: str | None = None


@dataclass
class ReplyRun:
    """A response in flight. `start()` runs it as one task; `cancel(reason)` stops it at the next engine step."""

    output: SessionOutput
    engine: StreamingEngine
    responder: Responder
    speaker: PhraseSpeaker
    timing: TurnTiming
    item: ConversationItem
    prepare: Callable[[], Awaitable[Preparation]]
    user_item_id: str | None = None  # the turn this answers (for the latency event)
    user_audio_s: float = 0.0  # the turn's audio, for usage
    metadata: dict[str, str] | None = None  # response.create's, echoed in response.created / response.done
    max_output_tokens: int | str = "inf"  # our audio tokens are codec frames
    on_latency: Callable[[ReplyRun, dict[str, float | None]], Awaitable[None]] | None = None
    count_tokens: Callable[[str], Awaitable[int]] | None = None
    id: str = field(default_factory=lambda: new_id("resp"))
    status: str = "in_progress"
    status_details: se.StatusDetails | None = None
    heard_ms_at_cancel: float | None = None
    client_heard_ms: float | None = None  # from the client's conversation.item.truncate: wins when given
    task: asyncio.Task | None = None
    usage: se.Usage | None = None
    frames_out: int = 0
    _request: ReplyRequest | None = None
    _latency_sent: bool = False

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

    def stop(self, reason: str) -> bool:
        """Stop now, without waiting: drop the reply audio the output still holds, note what the listener
        has heard, and cancel the task (its engine stream is let go of at the next step). False if the
        response was already over."""
        if self.done or self.status != "in_progress":
            return False
        self.status = "cancelled"
        self.status_details = se.StatusDetails(type="cancelled", reason=reason)  # type: ignore[arg-type]
        self.output.discard_audio(self.item.id)
        self.heard_ms_at_cancel = self.output.heard_ms(self.item.id)
        assert self.task is not None
        self.task.cancel()
        return True

    async def cancel(self, reason: str) -> None:
        """`stop`, then wait for the task to settle (its closing events sent)."""
        if self.stop(reason):
            await self.wait()

    def response(self, with_output: bool = True) -> se.Response:
        return se.Response(id=self.id, status=self.status, status_details=self.status_details,  # type: ignore[arg-type]
                           output=[self.item.to_item()] if with_output else [], usage=self.usage,
                           metadata=self.metadata)

    def _ids(self) -> dict[str, Any]:
        return {"response_id": self.id, "item_id": self.item.id, "output_index": 0, "content_index": 0}

    async def _run(self) -> None:
        try:
            await self.output.send_event(se.ResponseCreated(response=self.response(with_output=False)))
            await self.output.send_event(se.OutputItemAdded(response_id=self.id, output_index=0,
                                                            item=self.item.to_item()))
            await self.output.send_event(se.ItemAdded(item=self.item.to_item()))
            await self.output.send_event(se.ContentPartAdded(**self._ids(), part=se.AudioPart(type="audio",
                                                                                               transcript="")))
            async with self.engine.lease(self.id) as lease:
                prepared = await self.prepare()
                self._request = prepared.request
                await self._speak_phrases(lease, prepared)
            if self.status == "in_progress":
                self.status = "completed"
        except asyncio.CancelledError:
            self.status = "cancelled"
            self.status_details = self.status_details or se.StatusDetails(type="cancelled", reason="client_cancelled")
        except (ResponderError, AtCapacityError) as exc:
            log.warning("%s failed: %s", self.id, exc)
            code = "at_capacity" if isinstance(exc, AtCapacityError) else "responder_error"
            await self._fail(code, str(exc))
        except OutputClosed as exc:  # the client is gone: nobody to tell
            log.info("%s stopped: %s", self.id, exc)
            self.status = "failed"
            self.status_details = se.StatusDetails(type="failed", error=se.StatusError(
                type="server_error", code="client_gone", message=str(exc)))
            return
        except Exception as exc:  # noqa: BLE001 - a bug fails this response, never the session
            log.exception("%s failed", self.id)
            await self._fail("internal_error", f"the response failed: {exc!r}")
        with contextlib.suppress(OutputClosed):
            await self._finish()

    async def _fail(self, code: str, message: str) -> None:
        self.status = "failed"
        self.status_details = se.StatusDetails(type="failed", error=se.StatusError(type="server_error", code=code,
                                                                                    message=message))
        with contextlib.suppress(OutputClosed):
            await self.output.send_event(se.Error(error=se.ErrorDetail(type="server_error", code=code,
                                                                        message=message)))

    async def _speak_phrases(self, lease: Any, prepared: Preparation) -> None:  # noqa: ANN401 - a Lease
        phrases: asyncio.Queue[str | BaseException | None] = asyncio.Queue()
        producer = asyncio.create_task(self._produce(prepared.request, phrases))
        try:
            while (phrase := await phrases.get()) is not None:
                if isinstance(phrase, BaseException):
                    raise phrase
                if not await self._speak(phrase, lease, prepared):
                    self.status = "incomplete"
                    self.status_details = se.StatusDetails(type="incomplete", reason="max_output_tokens")
                    return
        finally:
            producer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await producer

    async def _produce(self, request: ReplyRequest, phrases: asyncio.Queue) -> None:
        """Pull phrases from the responder while earlier ones are being spoken."""
        try:
            async with contextlib.aclosing(self.responder.reply(request)) as stream:
                async for phrase in stream:
                    if isinstance(phrase, str) and phrase.strip():
                        self.timing.mark("first_text")
                        await phrases.put(phrase.strip())
            await phrases.put(None)
        except Exception as exc:  # noqa: BLE001 - any responder failure ends the reply as failed, never hangs it
            await phrases.put(exc if isinstance(exc, ResponderError) else ResponderError(f"responder failed: {exc!r}"))

    def _frames_left(self) -> int | None:
        if not isinstance(self.max_output_tokens, int):
            return None
        return self.max_output_tokens - self.frames_out

    async def _speak(self, phrase: str, lease: Any, prepared: Preparation) -> bool:  # noqa: ANN401
        """Speak one phrase; False when the response's token budget ran out."""
        left = self._frames_left()
        if left is not None and left <= 0:
            return False
        start_ms = self.item.audio_ms
        await self.output.send_event(se.OutputTranscriptDelta(**self._ids(), delta=phrase if not self.item.phrases
                                                              else " " + phrase))
        samples = 0
        self.item.phrases.append(SpokenPhrase(phrase, start_ms, start_ms))  # the timeline grows as audio goes out
        speech = self.speaker.speak(phrase, lease, prepared.voice, prepared.scene, max_frames=left,
                                    on_first_frame=lambda: self.timing.mark("first_audio_frame"))
        async with contextlib.aclosing(speech):  # a cancel here ends the stream at once, not at GC
            async for chunk in speech:
                await self.output.send_audio(self.id, self.item.id, chunk)
                samples += len(chunk)
                self.frames_out += len(chunk) // HOP_LENGTH
                self.item.phrases[-1] = SpokenPhrase(phrase, start_ms, start_ms + samples * 1000.0 / SAMPLE_RATE)
                if not self._latency_sent:
                    self.timing.mark("first_audio_sent")
                    await self._send_latency()
        left = self._frames_left()
        return left is None or left > 0

    async def _send_latency(self) -> None:
        self._latency_sent = True
        if self.on_latency is not None:
            await self.on_latency(self, self.timing.latency_ms())

    async def _finish(self) -> None:
        if self.status == "cancelled":
            if self.client_heard_ms is not None:  # the client said where it stopped playing: already truncated
                self.item.text = heard_text(self.item.phrases, self.client_heard_ms)
            else:
                heard = self.heard_ms_at_cancel
                heard = self.output.heard_ms(self.item.id) if heard is None else heard
                self.item.text = heard_text(self.item.phrases, heard)
                await self.output.send_event(se.ItemTruncated(item_id=self.item.id, content_index=0,
                                                              audio_end_ms=int(heard)))
            self.item.status = "incomplete"
        else:
            self.item.text = self.item.spoken_text
            self.item.status = "completed" if self.status == "completed" else "incomplete"
        await self.output.send_event(se.OutputAudioDone(**self._ids()))
        await self.output.send_event(se.OutputTranscriptDone(**self._ids(), transcript=self.item.text))
        await self.output.send_event(se.ContentPartDone(**self._ids(), part=se.AudioPart(type="audio",
                                                                                         transcript=self.item.text)))
        await self.output.send_event(se.OutputItemDone(response_id=self.id, output_index=0, item=self.item.to_item()))
        if not self._latency_sent:
            await self._send_latency()
        self.usage = await self._usage()
        await self.output.send_event(se.ResponseDone(response=self.response()))

    async def _usage(self) -> se.Usage:
        """Tokens in and out as OpenAI counts them: text tokens (the Higgs model's own tokenizer) and audio
        tokens (codec frames: 25 a second, in the user's turn and in the reply)."""
        text_in = text_out = 0
        if self.count_tokens is not None:
            with contextlib.suppress(Exception):  # usage is a report: never fail the response over it
                if self._request is not None:
                    text_in = await self.count_tokens("\n".join(str(m.get("content") or "")
                                                                for m in self._request.messages))
                text_out = await self.count_tokens(self.item.text or "")
        return se.Usage.of(text_in, int(round(self.user_audio_s * FRAME_RATE)), text_out, self.frames_out)
