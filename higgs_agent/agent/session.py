"""One conversation, independent of the transport that carries it.

A transport (WebSocket today; WebRTC and phone next) hands the session client messages (`handle_message`)
and, if it decodes audio itself, raw audio (`push_audio`); the session answers through a `SessionOutput`.
Data flows one way: input audio -> turns (VAD or commits) -> understanding (transcript, codec codes) ->
a reply (responder text -> engine -> codec) -> output. Turns are understood one at a time, in order; a
barge-in cancels the reply from the audio path at once, without waiting for that queue.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from higgs_agent.agent import events as ev
from higgs_agent.agent.config import CALLER_VOICE
from higgs_agent.agent.conversation import Conversation, ConversationItem
from higgs_agent.agent.events import ProtocolError, new_id, server_event
from higgs_agent.agent.input_audio import ASR_RATE, InputAudio
from higgs_agent.agent.reply import ReplyRun, SessionOutput
from higgs_agent.agent.responders.base import ReplyRequest
from higgs_agent.agent.services import AgentServices
from higgs_agent.agent.speaker import PhraseSpeaker
from higgs_agent.agent.turn_timing import TurnTiming
from higgs_agent.agent.vad import SpeechStarted
from higgs_agent.audio import resample
from higgs_agent.audio_formats import AudioFormatError, decode_audio
from higgs_agent.model.prompts import VoiceReference, encode_voice

log = logging.getLogger(__name__)
MIN_COMMIT_MS = 100  # as the reference server: shorter buffers are refused


@dataclass
class UserTurn:
    item: ConversationItem | None  # None: just a response.create, queued behind the turns before it
    audio: np.ndarray | None  # 16 kHz; None for typed text
    timing: TurnTiming
    create_response: bool
    epoch: int = 0  # speech starts seen when it was queued: a later one means the user spoke on
    instructions: str | None = None  # response.create's per-response override


class Session:
    def __init__(self, services: AgentServices, output: SessionOutput) -> None:
        self.services = services
        self.output = output
        self.config = services.session_config()
        self.conversation = Conversation()
        self.input = InputAudio(self.config.input_format, self._vad_settings())
        self.speaker = PhraseSpeaker(services.engine, services.sampling)
        self.reply: ReplyRun | None = None
        self._speech_item_id: str | None = None
        self._turns: asyncio.Queue[UserTurn] = asyncio.Queue()
        self._pending: list[UserTurn] = []  # queued turns that will create a response
        self._epoch = 0  # speech starts so far
        self._last_audio: tuple[str, np.ndarray] | None = None  # the latest user turn's audio, for its codes
        self._worker: asyncio.Task | None = None
        self.closed = False

    # --- lifecycle -------------------------------------------------------------------------------------

    async def open(self) -> None:
        self.services.metrics.sessions_total.inc()
        self.services.metrics.sessions_active.inc()
        self._worker = asyncio.create_task(self._understand_turns(), name=f"{self.config.id}-turns")
        await self._emit("session.created", session=self.config.to_dict())

    async def close(self) -> None:
        """The client is gone: stop the reply (its engine slot frees at once) and all pending work."""
        if self.closed:
            return
        self.closed = True
        self.services.metrics.sessions_active.dec()
        if self._worker is not None:  # first: so it cannot start another reply
            self._worker.cancel()
            await asyncio.wait({self._worker})
        if self.reply is not None:
            await self.reply.cancel("client_disconnected")

    # --- input -----------------------------------------------------------------------------------------

    async def handle_message(self, raw: str | bytes) -> None:
        """One client message off the wire; anything wrong with it becomes an `error` event."""
        try:
            await self.handle(ev.parse_client_event(raw, self.services.max_event_bytes))
        except ProtocolError as exc:
            await self.report(exc)
        except (ValueError, OverflowError, RecursionError) as exc:  # e.g. a rate of 1e400, JSON nested 100k deep
            await self.report(ProtocolError("invalid_value", f"unusable value: {exc}"))
        except Exception as exc:  # noqa: BLE001 - a bug must not end the session
            log.exception("handling a client message failed")
            await self.report(ProtocolError("server_error", f"internal error: {exc!r}", type="server_error"))

    async def report(self, error: ProtocolError) -> None:
        self.services.metrics.errors.labels(code=error.code).inc()
        await self.output.send_event(error.to_event())

    async def handle(self, event: Any) -> None:  # noqa: ANN401 - one of events.ClientEvent
        handler = {
            "session.update": self._session_update,
            "input_audio_buffer.append": self._append,
            "input_audio_buffer.commit": self._commit,
            "input_audio_buffer.clear": self._clear,
            "conversation.item.create": self._item_create,
            "conversation.item.truncate": self._truncate,
            "conversation.item.delete": self._delete,
            "conversation.item.retrieve": self._retrieve,
            "response.create": self._response_create,
            "response.cancel": self._response_cancel,
        }[event.type]
        try:
            await handler(event)
        except ProtocolError as exc:
            exc.event_id = exc.event_id or event.event_id
            raise

    async def push_audio(self, samples: np.ndarray, rate: int) -> None:
        """Decoded caller audio from a transport that does its own decoding (WebRTC, phone)."""
        await self._on_vad_events(self.input.push(samples, rate))

    async def _session_update(self, event: ev.SessionUpdate) -> None:
        self.config = self.config.updated(event.session, tuple(self.services.responders))
        self.input.reconfigure(self.config.input_format, self._vad_settings())
        await self._emit("session.updated", session=self.config.to_dict())

    async def _append(self, event: ev.InputAudioBufferAppend) -> None:
        try:
            data = base64.b64decode(event.audio, validate=True)
        except (binascii.Error, ValueError):
            raise ProtocolError("invalid_base64", "audio is not valid base64", param="audio") from None
        try:
            vad_events = self.input.append(data)
        except AudioFormatError as exc:
            raise ProtocolError("invalid_audio", str(exc), param="audio") from None
        await self._on_vad_events(vad_events)

    async def _on_vad_events(self, vad_events: list) -> None:
        for vad_event in vad_events:
            if isinstance(vad_event, SpeechStarted):
                await self._speech_started(vad_event.audio_start_ms)
            else:
                await self._speech_stopped(vad_event.audio_end_ms, vad_event.audio)

    async def _speech_started(self, audio_start_ms: int) -> None:
        self._speech_item_id = new_id("item")
        self._epoch += 1
        await self._emit("input_audio_buffer.speech_started", audio_start_ms=audio_start_ms,
                         item_id=self._speech_item_id)
        detection = self.config.turn_detection
        if self.reply is not None and detection is not None and detection.interrupt_response:
            await self.reply.cancel("turn_detected")  # barge-in

    async def _speech_stopped(self, audio_end_ms: int, audio: np.ndarray) -> None:
        timing = TurnTiming()
        item_id = self._speech_item_id or new_id("item")
        self._speech_item_id = None
        await self._emit("input_audio_buffer.speech_stopped", audio_end_ms=audio_end_ms, item_id=item_id)
        await self._add_user_audio(item_id, audio, timing, create_response=self._turns_create_responses)

    async def _commit(self, event: ev.InputAudioBufferCommit) -> None:
        if self.input.buffered_ms < MIN_COMMIT_MS:
            raise ProtocolError("input_audio_buffer_commit_empty", f"buffer too small: {self.input.buffered_ms} ms "
                                f"of audio, at least {MIN_COMMIT_MS} ms are needed to commit")
        turn = self.input.commit()
        await self._add_user_audio(new_id("item"), turn.audio, TurnTiming(),
                                   create_response=self._turns_create_responses)

    async def _add_user_audio(self, item_id: str, audio: np.ndarray, timing: TurnTiming,
                              create_response: bool) -> None:
        item = self.conversation.add(ConversationItem(item_id, "user", "input_audio"))
        previous = self.conversation.previous_id(item)
        await self._emit("input_audio_buffer.committed", previous_item_id=previous, item_id=item_id)
        await self._emit("conversation.item.added", previous_item_id=previous, item=item.to_dict())
        self._last_audio = (item_id, audio)
        self._queue(UserTurn(item, audio, timing, create_response, epoch=self._epoch))

    def _queue(self, turn: UserTurn) -> None:
        if turn.create_response:
            self._pending.append(turn)
        self._turns.put_nowait(turn)

    async def _clear(self, event: ev.InputAudioBufferClear) -> None:
        self.input.discard()
        self._speech_item_id = None
        await self._emit("input_audio_buffer.cleared")

    async def _item_create(self, event: ev.ConversationItemCreate) -> None:
        item = event.item
        part = item.content[0] if item.content else None
        if part is None or len(item.content) != 1:
            raise ProtocolError("invalid_value", "an item needs exactly one content part", param="item.content")
        item_id = item.id or new_id("item")
        if part.type in ("input_text", "text", "output_text"):
            if part.text is None:
                raise ProtocolError("invalid_value", "a text part needs 'text'", param="item.content.0.text")
            kind = "output_text" if item.role == "assistant" else "input_text"
            added = self.conversation.add(ConversationItem(item_id, item.role, kind, text=part.text))
            previous = self.conversation.previous_id(added)
            await self._emit("conversation.item.added", previous_item_id=previous, item=added.to_dict())
            await self._emit("conversation.item.done", previous_item_id=previous, item=added.to_dict())
        elif part.type == "input_audio" and item.role == "user":
            try:
                audio = decode_audio(base64.b64decode(part.audio or "", validate=True), self.config.input_format)
            except (binascii.Error, ValueError) as exc:
                raise ProtocolError("invalid_audio", f"input_audio: {exc}", param="item.content.0.audio") from None
            await self._add_user_audio(item_id, resample(audio, self.config.input_format.rate, ASR_RATE),
                                       TurnTiming(), create_response=False)
        else:
            raise ProtocolError("invalid_value", f"unsupported content part type '{part.type}' for role "
                                f"'{item.role}'", param="item.content.0.type")

    async def _truncate(self, event: ev.ConversationItemTruncate) -> None:
        item = self.conversation.truncate(event.item_id, event.audio_end_ms)
        if self.reply is not None and self.reply.item is item:
            self.reply.client_heard_ms = event.audio_end_ms  # the client knows best what it played
        await self._emit("conversation.item.truncated", item_id=item.id, content_index=event.content_index,
                         audio_end_ms=event.audio_end_ms)

    async def _delete(self, event: ev.ConversationItemDelete) -> None:
        self.conversation.delete(event.item_id)
        await self._emit("conversation.item.deleted", item_id=event.item_id)

    async def _retrieve(self, event: ev.ConversationItemRetrieve) -> None:
        await self._emit("conversation.item.retrieved", item=self.conversation.get(event.item_id).to_dict())

    async def _response_create(self, event: ev.ResponseCreate) -> None:
        busy = self.reply.id if self.reply is not None else ("a queued response" if self._pending else None)
        if busy:  # one response at a time writes to the conversation, as the reference server enforces
            raise ProtocolError("conversation_already_has_active_response",
                                f"{busy} is still in progress; cancel it or wait for response.done")
        instructions = (event.response or {}).get("instructions")
        if instructions is not None and not isinstance(instructions, str):
            raise ProtocolError("invalid_value", "response.instructions must be a string",
                                param="response.instructions")
        # Behind the queue: a commit just before this must be transcribed before the reply is written.
        self._queue(UserTurn(None, None, TurnTiming(), create_response=True, instructions=instructions))

    async def _response_cancel(self, event: ev.ResponseCancel) -> None:
        if self.reply is None and self._pending and not event.response_id:
            for turn in self._pending:  # not started yet: it never will
                turn.create_response = False
            self._pending.clear()
            return
        if self.reply is None or (event.response_id and event.response_id != self.reply.id):
            raise ProtocolError("response_cancel_not_active", "there is no active response to cancel",
                                param="response_id")
        await self.reply.cancel("client_cancelled")

    # --- understanding and replying --------------------------------------------------------------------

    async def _understand_turns(self) -> None:
        while True:
            turn = await self._turns.get()
            try:
                await self._take_turn(turn)
            except Exception as exc:  # noqa: BLE001 - one failed turn must not stop the session listening
                log.exception("a turn failed")
                await self.report(ProtocolError("server_error", f"the turn failed: {exc!r}", type="server_error"))

    async def _take_turn(self, turn: UserTurn) -> None:
        if turn.item is not None and turn.audio is not None:
            await self._transcribe(turn)
        if turn in self._pending:
            self._pending.remove(turn)
        if not turn.create_response or self.closed:
            return
        detection = self.config.turn_detection
        if turn.item is not None and turn.epoch != self._epoch and detection and detection.interrupt_response:
            return  # the user spoke on after this turn: the next turn answers both
        if self.reply is not None:  # a reply the user did not interrupt: let it finish first
            await self.reply.wait()
        if not self.closed:
            await self._respond(turn.timing, turn.instructions)

    async def _transcribe(self, turn: UserTurn) -> None:
        item = turn.item
        try:
            transcript = await asyncio.to_thread(self.services.transcriber.transcribe, turn.audio)
        except Exception as exc:  # noqa: BLE001 - reported against the item, the session goes on
            log.exception("transcription failed")
            item.text = ""
            await self._emit("conversation.item.input_audio_transcription.failed", item_id=item.id, content_index=0,
                             error={"type": "transcription_error", "code": "transcription_failed",
                                    "message": f"transcription failed: {exc}", "param": None})
        else:
            item.text, item.language = transcript.text.strip(), transcript.language
            turn.timing.mark("transcript")
            await self._emit("conversation.item.input_audio_transcription.completed", item_id=item.id,
                             content_index=0, transcript=item.text, language=item.language,
                             usage={"type": "duration", "seconds": round(transcript.duration_s, 3)})
        await self._emit("conversation.item.done", item=item.to_dict())

    def _encode(self, audio: np.ndarray) -> Any:  # noqa: ANN401 - codes tensor or None
        """The user's audio as codec codes, so the model can hear the turn (native replies, caller voice)."""
        if len(audio) < ASR_RATE // 10:
            return None
        return encode_voice(self.services.bundle.processor, audio, ASR_RATE, "").codes

    async def _user_codes(self, item: ConversationItem | None) -> Any:  # noqa: ANN401
        """The codec codes of the latest user turn, encoded on first use (only some replies need them)."""
        if item is None or item.codes is not None or self._last_audio is None or self._last_audio[0] != item.id:
            return None if item is None else item.codes
        try:
            item.codes = await asyncio.to_thread(self._encode, self._last_audio[1])
        except Exception:  # noqa: BLE001 - the reply goes on without hearing the audio
            log.exception("encoding the user's audio failed")
        self._last_audio = None  # encoded (or not): the audio is not needed any more
        return item.codes

    async def _respond(self, timing: TurnTiming, instructions: str | None = None) -> None:
        responder = self.services.responder(self.config.responder)
        user = self.conversation.last_user_item()
        wants_codes = self.config.voice == CALLER_VOICE or self.config.responder == "native"
        codes = await self._user_codes(user) if wants_codes else None
        request = ReplyRequest(messages=self.conversation.chat_messages(instructions or self.config.instructions),
                               user_audio_codes=codes, on_first_text=lambda: timing.mark("first_text"))
        voice = self.services.voice
        if self.config.voice == CALLER_VOICE and codes is not None and user is not None:
            voice = VoiceReference(codes=codes, transcript=user.text or "")
        item = self.conversation.add(ConversationItem(new_id("item"), "assistant", "output_audio", text="",
                                                      status="in_progress"))
        self.reply = ReplyRun(self.output, responder, request, self.speaker, timing, item, voice=voice,
                              user_item_id=user.id if user is not None else None, on_latency=self._latency)
        self.reply.start(on_done=self._reply_done)

    def _reply_done(self, run: ReplyRun) -> None:
        if run.status == "in_progress":  # cancelled before its task ever ran: nothing was sent
            run.status = "cancelled"
        self.services.metrics.responses.labels(status=run.status).inc()
        if self.reply is run:
            self.reply = None

    async def _latency(self, run: ReplyRun, latency_ms: dict[str, float | None]) -> None:
        self.services.metrics.observe_turn(latency_ms)
        log.info("turn latency %s %s", run.id, latency_ms)
        if self.config.latency_events:
            await self._emit(f"{ev.EXTENSION_PREFIX}turn.latency", response_id=run.id,
                             item_id=run.user_item_id, latency_ms=latency_ms)

    # --- helpers ---------------------------------------------------------------------------------------

    @property
    def _turns_create_responses(self) -> bool:
        """A committed audio turn is answered by itself under turn detection with create_response; in
        manual mode (turn_detection null) only response.create answers."""
        detection = self.config.turn_detection
        return bool(detection and detection.create_response)

    def _vad_settings(self):  # noqa: ANN202 - VadSettings | None
        return None if self.config.turn_detection is None else self.config.turn_detection.vad

    async def _emit(self, kind: str, **fields: Any) -> None:
        await self.output.send_event(server_event(kind, **fields))
