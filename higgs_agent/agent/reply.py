"""One response, start to `response.done`: reply text phrase by phrase from the responder, each phrase
spoken as soon as it is complete, audio handed to the output as it is decoded; on barge-in the turn is cut
to what the listener heard (the client's truncate, else the output's playout clock)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from higgs_agent import SAMPLE_RATE
from higgs_agent.agent.conversation import ConversationItem, SpokenPhrase, heard_text
from higgs_agent.agent.events import new_id, server_event
from higgs_agent.agent.responders.base import ReplyRequest, Responder, ResponderError
from higgs_agent.agent.speaker import PhraseSpeaker
from higgs_agent.agent.turn_timing import TurnTiming
from higgs_agent.model.prompts import VoiceReference
from higgs_agent.streaming.generation import AtCapacityError

log = logging.getLogger(__name__)


class SessionOutput(Protocol):
    """What a transport gives a session: JSON events out, reply audio out, and a way to drop reply audio
    it holds but has not yet sent (barge-in)."""

    async def send_event(self, event: dict[str, Any]) -> None: ...

    async def send_audio(self, response_id: str, item_id: str, samples: np.ndarray) -> None:
        """float32 mono 24 kHz; the transport encodes it for its wire."""

    def discard_audio(self, item_id: str) -> int:
        """Drop queued, unsent audio of an item; return the samples (24 kHz) dropped."""

    def heard_ms(self, item_id: str) -> float:
        """How much of the item's audio the listener has heard by now (see `playout.PlayoutClock`)."""


@dataclass
class ReplyRun:
    """A response in flight. `run()` is one task; `cancel(reason)` stops it at the next engine step."""

    output: SessionOutput
    responder: Responder
    request: ReplyRequest
    speaker: PhraseSpeaker
    timing: TurnTiming
    item: ConversationItem
    voice: VoiceReference | None = None
    user_item_id: str | None = None  # the turn this answers (for the latency event)
    on_latency: Callable[[ReplyRun, dict[str, float | None]], Awaitable[None]] | None = None
    id: str = field(default_factory=lambda: new_id("resp"))
    status: str = "in_progress"
    status_details: dict[str, Any] | None = None
    heard_ms_at_cancel: float | None = None
    client_heard_ms: float | None = None  # from the client's conversation.item.truncate: wins when given
    task: asyncio.Task | None = None
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

    async def cancel(self, reason: str) -> None:
        """Stop generating and sending now; the turn keeps what was heard. Waits for the task to settle."""
        if self.done or self.status != "in_progress":
            return
        self.status = "cancelled"
        self.status_details = {"type": "cancelled", "reason": reason}
        self.output.discard_audio(self.item.id)
        self.heard_ms_at_cancel = self.output.heard_ms(self.item.id)
        assert self.task is not None
        self.task.cancel()
        await self.wait()

    def response_object(self, with_output: bool = True) -> dict[str, Any]:
        return {"object": "realtime.response", "id": self.id, "status": self.status,
                "status_details": self.status_details, "output": [self.item.to_dict()] if with_output else [],
                "output_modalities": ["audio"], "usage": None}

    async def _emit(self, kind: str, **fields: Any) -> None:
        await self.output.send_event(server_event(kind, **fields))

    async def _run(self) -> None:
        ids = {"response_id": self.id, "item_id": self.item.id, "output_index": 0, "content_index": 0}
        try:
            await self._emit("response.created", response=self.response_object(with_output=False))
            await self._emit("response.output_item.added", response_id=self.id, output_index=0,
                             item=self.item.to_dict())
            await self._emit("conversation.item.added", item=self.item.to_dict())
            await self._emit("response.content_part.added", **ids, part={"type": "audio", "transcript": ""})
            await self._speak_phrases(ids)
            self.status = "completed"
        except asyncio.CancelledError:
            self.status = "cancelled"
            self.status_details = self.status_details or {"type": "cancelled", "reason": "client_cancelled"}
        except (ResponderError, AtCapacityError) as exc:
            log.warning("%s failed: %s", self.id, exc)
            self.status = "failed"
            code = "at_capacity" if isinstance(exc, AtCapacityError) else "responder_error"
            self.status_details = {"type": "failed", "error": {"type": "server_error", "code": code,
                                                                "message": str(exc)}}
            await self._emit("error", error={"type": "server_error", "code": code, "message": str(exc),
                                             "param": None, "event_id": None})
        except Exception as exc:  # e.g. the output gave up on a client that stopped reading
            log.warning("%s stopped: %r", self.id, exc)
            self.status = "failed"
            self.status_details = {"type": "failed", "error": {"type": "server_error", "code": "internal_error",
                                                                "message": str(exc)}}
        await self._finish(ids)

    async def _speak_phrases(self, ids: dict[str, Any]) -> None:
        phrases: asyncio.Queue[str | BaseException | None] = asyncio.Queue()
        producer = asyncio.create_task(self._produce(phrases))
        try:
            while (phrase := await phrases.get()) is not None:
                if isinstance(phrase, BaseException):
                    raise phrase
                await self._speak(phrase, ids)
        finally:
            producer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await producer

    async def _produce(self, phrases: asyncio.Queue) -> None:
        """Pull phrases from the responder while earlier ones are being spoken."""
        try:
            async with contextlib.aclosing(self.responder.reply(self.request)) as stream:
                async for phrase in stream:
                    if phrase.strip():
                        self.timing.mark("first_text")
                        await phrases.put(phrase.strip())
            await phrases.put(None)
        except Exception as exc:  # noqa: BLE001 - any responder failure ends the reply as failed, never hangs it
            await phrases.put(exc if isinstance(exc, ResponderError) else ResponderError(f"responder failed: {exc!r}"))

    async def _speak(self, phrase: str, ids: dict[str, Any]) -> None:
        start_ms = self.item.audio_ms
        await self._emit("response.output_audio_transcript.delta", **ids,
                         delta=phrase if not self.item.phrases else " " + phrase)
        samples = 0
        spoken = SpokenPhrase(phrase, start_ms, start_ms)
        self.item.phrases.append(spoken)  # the timeline grows as audio goes out, for truncation
        speech = self.speaker.speak(phrase, self.voice, on_first_frame=lambda: self.timing.mark("first_audio_frame"))
        async with contextlib.aclosing(speech):  # a cancel here closes the generation at once, not at GC
            async for chunk in speech:
                await self.output.send_audio(self.id, self.item.id, chunk)
                samples += len(chunk)
                self.item.phrases[-1] = SpokenPhrase(phrase, start_ms,
                                                     start_ms + samples * 1000.0 / SAMPLE_RATE)
                if not self._latency_sent:
                    self.timing.mark("first_audio_sent")
                    await self._send_latency()

    async def _send_latency(self) -> None:
        self._latency_sent = True
        if self.on_latency is not None:
            await self.on_latency(self, self.timing.latency_ms())

    async def _finish(self, ids: dict[str, Any]) -> None:
        if self.status == "cancelled":
            if self.client_heard_ms is not None:  # the client said where it stopped playing: already truncated
                self.item.text = heard_text(self.item.phrases, self.client_heard_ms)
            else:
                heard = self.heard_ms_at_cancel
                heard = self.output.heard_ms(self.item.id) if heard is None else heard
                self.item.text = heard_text(self.item.phrases, heard)
                await self._emit("conversation.item.truncated", item_id=self.item.id, content_index=0,
                                 audio_end_ms=int(heard))
            self.item.status = "incomplete"
        else:
            self.item.text = self.item.spoken_text
            self.item.status = "completed" if self.status == "completed" else "incomplete"
        await self._emit("response.output_audio.done", **ids)
        await self._emit("response.output_audio_transcript.done", **ids, transcript=self.item.text)
        await self._emit("response.content_part.done", **ids, part={"type": "audio", "transcript": self.item.text})
        await self._emit("response.output_item.done", response_id=self.id, output_index=0, item=self.item.to_dict())
        if not self._latency_sent:
            await self._send_latency()
        await self._emit("response.done", response=self.response_object())
