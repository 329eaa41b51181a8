"""One response, start to `response.done`: reply text phrase by phrase from the responder, each phrase
spoken as soon as it is complete, audio handed to the output as it is decoded, a pacing record of what the
listener has heard so a barge-in can cut the turn to exactly that."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
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


@dataclass
class Playback:
    """The pacing record: audio handed to the transport, and when the first of it went out. A listener
    plays at real time from the first byte, so by `t` it has heard min(sent, t - first) of it."""

    sent_samples: int = 0
    first_sent_at: float | None = None

    def add(self, samples: int) -> None:
        if self.first_sent_at is None:
            self.first_sent_at = time.perf_counter()
        self.sent_samples += samples

    def heard_ms(self, at: float | None = None) -> float:
        if self.first_sent_at is None:
            return 0.0
        elapsed_ms = ((at or time.perf_counter()) - self.first_sent_at) * 1000.0
        return max(0.0, min(self.sent_samples * 1000.0 / SAMPLE_RATE, elapsed_ms))


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
    playback: Playback = field(default_factory=Playback)
    heard_ms_at_cancel: float | None = None
    _task: asyncio.Task | None = None
    _latency_sent: bool = False

    def start(self, on_done: Callable[[ReplyRun], Awaitable[None]]) -> asyncio.Task:
        async def main() -> None:
            try:
                await self._run()
            finally:
                await on_done(self)

        self._task = asyncio.create_task(main(), name=self.id)
        return self._task

    @property
    def done(self) -> bool:
        return self._task is None or self._task.done()

    async def wait(self) -> None:
        """Until the response is done, without cancelling it if the waiter is cancelled."""
        if self._task is not None:
            await asyncio.shield(self._task)

    async def cancel(self, reason: str) -> None:
        """Stop generating and sending now; the turn keeps what was heard. Waits for the task to settle."""
        if self.done or self.status != "in_progress":
            return
        self.status = "cancelled"
        self.status_details = {"type": "cancelled", "reason": reason}
        dropped = self.output.discard_audio(self.item.id)
        self.playback.sent_samples -= dropped
        self.heard_ms_at_cancel = self.playback.heard_ms()
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    def response_object(self) -> dict[str, Any]:
        return {"object": "realtime.response", "id": self.id, "status": self.status,
                "status_details": self.status_details, "output": [self.item.to_dict()],
                "output_modalities": ["audio"], "usage": None}

    async def _emit(self, kind: str, **fields: Any) -> None:
        await self.output.send_event(server_event(kind, **fields))

    async def _run(self) -> None:
        ids = {"response_id": self.id, "item_id": self.item.id, "output_index": 0, "content_index": 0}
        await self._emit("response.created", response=self.response_object())
        await self._emit("response.output_item.added", response_id=self.id, output_index=0,
                         item=self.item.to_dict())
        await self._emit("conversation.item.added", item=self.item.to_dict())
        await self._emit("response.content_part.added", **ids, part={"type": "output_audio", "transcript": ""})
        try:
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
        except ResponderError as exc:
            await phrases.put(exc)

    async def _speak(self, phrase: str, ids: dict[str, Any]) -> None:
        start_ms = self.item.audio_ms
        await self._emit("response.output_audio_transcript.delta", **ids,
                         delta=phrase if not self.item.phrases else " " + phrase)
        samples = 0
        spoken = SpokenPhrase(phrase, start_ms, start_ms)
        self.item.phrases.append(spoken)  # the timeline grows as audio goes out, for truncation
        async for chunk in self.speaker.speak(phrase, self.voice,
                                              on_first_frame=lambda: self.timing.mark("first_audio_frame")):
            await self.output.send_audio(self.id, self.item.id, chunk)
            self.playback.add(len(chunk))
            samples += len(chunk)
            self.item.phrases[-1] = SpokenPhrase(phrase, start_ms, start_ms + samples * 1000.0 / SAMPLE_RATE)
            if not self._latency_sent:
                self.timing.mark("first_audio_sent")
                await self._send_latency()

    async def _send_latency(self) -> None:
        self._latency_sent = True
        if self.on_latency is not None:
            await self.on_latency(self, self.timing.latency_ms())

    async def _finish(self, ids: dict[str, Any]) -> None:
        if self.status == "cancelled":
            heard = self.heard_ms_at_cancel if self.heard_ms_at_cancel is not None else self.playback.heard_ms()
            self.item.text = heard_text(self.item.phrases, heard)
            self.item.status = "incomplete"
            await self._emit("conversation.item.truncated", item_id=self.item.id, content_index=0,
                             audio_end_ms=int(heard))
        else:
            self.item.text = self.item.spoken_text
            self.item.status = "completed" if self.status == "completed" else "incomplete"
        await self._emit("response.output_audio.done", **ids)
        await self._emit("response.output_audio_transcript.done", **ids, transcript=self.item.text)
        await self._emit("response.content_part.done", **ids,
                         part={"type": "output_audio", "transcript": self.item.text})
        await self._emit("response.output_item.done", response_id=self.id, output_index=0, item=self.item.to_dict())
        if not self._latency_sent:
            await self._send_latency()
        await self._emit("response.done", response=self.response_object())
