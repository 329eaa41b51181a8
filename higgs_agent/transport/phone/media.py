"""A phone call's media WebSocket (Twilio Media Streams, Telnyx media streaming): moves the call between the
carrier and a `Session`; the line's serializer speaks the carrier's wire.

Carrier -> session: `start` names the call (its callSid becomes the log's session id), `media` is the caller's
audio (8 kHz, decoded by the serializer, handed to `session.push_audio`), `dtmf` a key (`session.dtmf`), `mark`
an echo of ours (what the caller heard, `PhoneOutput.mark_echoed`), `stop` the end of the call. A message the
serializer cannot use is logged and skipped: the call goes on. Session -> carrier: reply audio through
`PhoneOutput` (a paced sink), which alone writes to the socket, a send at a time.

A call that starts while every engine slot is busy gets no session: it hears the busy message (spoken ahead
of need, see busy.py) and the socket is closed once the carrier confirms it played; with nothing after
`<Connect>` in the TwiML, Twilio then ends the call. However a call ends (`stop`, a dropped socket, a peer
that stops reading), the session closes at once, and with it any reply and its engine slot.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from starlette.websockets import WebSocket, WebSocketDisconnect

from higgs_agent import SAMPLE_RATE
from higgs_agent.agent.output import OutputClosed
from higgs_agent.agent.session import Session
from higgs_agent.logs import session_id
from higgs_agent.streaming.engine import AtCapacityError
from higgs_agent.transport.phone.call import CallLog
from higgs_agent.transport.phone.output import PhoneOutput
from higgs_agent.transport.phone.serializer import (
    CallerAudio,
    CallStarted,
    CallStopped,
    DtmfDigit,
    IncomingMessage,
    MarkEchoed,
    MediaStreamError,
    OutgoingAudio,
    OutgoingMessage,
    UnsupportedMediaFormatError,
    encode,
)
from higgs_agent.transport.phone.twiml import AnsweredCall, MediaSocketRefusedError
from higgs_agent.transport.uvicorn_ws import close_gracefully, close_unresponsive, send_text_within

if TYPE_CHECKING:
    from higgs_agent.transport.phone.routes import PhoneLine

log = logging.getLogger(__name__)
BUSY_REPLY = "busy-message"  # the output's item (and response) id for the apology
LOGGED_SKIPS = 20  # bad messages logged one by one; after that only counted (a flood must not flood the log)
CLOSE_POLICY = 1008


class PhoneCall:
    """One call's media stream, from the carrier's `start` to its `stop` (or a dropped socket)."""

    def __init__(self, websocket: WebSocket, line: PhoneLine, answered: AnsweredCall) -> None:
        self.websocket = websocket
        self.line = line
        self.answered = answered
        self.serializer = line.line.serializer()
        # The output sends through this call, weakly: call -> output -> call would keep the session (and its
        # audio) alive after the call ends until the cycle collector ran.
        self.output = PhoneOutput(_weakly(self._send), wire_rate=self.serializer.wire_format.rate,
                                  lead_ms=line.settings.lead_ms, mark_interval_ms=line.settings.mark_interval_ms)
        self.call_log: CallLog | None = None
        self.session: Session | None = None
        self._skipped = 0  # messages the serializer could not use
        self._failures = 0  # messages whose handling failed (a bug)
        self._cutting_off: asyncio.Task[None] | None = None  # dropping a carrier that stopped reading

    async def run(self) -> None:
        """Serve the call until it ends; never raises for anything the carrier does."""
        reason = "dropped"
        try:
            started = await self._wait_for_start()
            if started is None:
                return
            session_id.set(started.call_id)  # every line logged for this call names it
            self.output.start()  # after: its task logs for the call too
            self.call_log = CallLog(started)
            self.line.active[started.call_id] = self
            log.info("call started: stream %s, parameters %s", started.stream_id,
                     ", ".join(sorted(started.custom_parameters)) or "none")
            try:
                await self.line.services.engine.admit(f"call {started.call_id}")
            except AtCapacityError as exc:
                reason = "busy"
                await self._apologise(str(exc))
                return
            reason = await self._converse()
        except OutputClosed as exc:
            log.info("the call's output closed: %s", exc)
            reason = "sending failed"
        except UnsupportedMediaFormatError as exc:
            log.error("hanging up: %s", exc)
            reason = "unsupported media format"
        finally:
            await self._end(reason)

    # -- the call's phases ------------------------------------------------------------------------------------

    async def _wait_for_start(self) -> CallStarted | None:
        """The stream's `start`, checked against the call our webhook answered; None (socket closed) if it
        does not come in time, is for another call, or the socket goes first."""
        try:
            async with asyncio.timeout(self.line.settings.start_timeout_s):
                while (messages := await self._receive()) is not None:
                    for message in messages:
                        if isinstance(message, CallStarted):
                            self.answered.check_started(message)
                            return message
        except TimeoutError:
            log.warning("media socket: no `start` within %g s; closing", self.line.settings.start_timeout_s)
            await self._close(CLOSE_POLICY)
        except MediaSocketRefusedError as exc:
            log.warning("media socket refused after `start`: %s", exc)
            await self._close(CLOSE_POLICY)
        return None

    async def _converse(self) -> str:
        self.session = session = Session(self.line.services, self.output, tenant=self.line.settings.tenant,
                                         transport="phone")
        assert self.call_log is not None
        session.observe(self.call_log.observe)  # what was said and how fast, for the call's record
        await session.open()
        if self.line.settings.greeting:
            await session.say(self.line.settings.greeting)
        while (messages := await self._receive()) is not None:
            for message in messages:
                if isinstance(message, CallStopped):
                    return "stop"
                try:
                    await self._handle(session, message)
                except OutputClosed:
                    raise
                except Exception:  # noqa: BLE001 - a bug in one message must not end the call
                    self._failures += 1
                    if self._failures <= LOGGED_SKIPS:
                        log.exception("handling a %s failed", type(message).__name__)
        return "dropped"

    async def _handle(self, session: Session, message: IncomingMessage) -> None:
        if isinstance(message, CallerAudio):
            await session.push_audio(message.samples, message.sample_rate)
        elif isinstance(message, DtmfDigit):
            await session.dtmf(message.digit)
        elif isinstance(message, MarkEchoed):
            self.output.mark_echoed(message.name)

    async def _apologise(self, why: str) -> None:
        """At capacity: say the busy message, and return once the carrier confirms it played (or the caller
        hung up first)."""
        assert self.call_log is not None
        self.call_log.busy = True
        pcm = self.line.busy_message.pcm
        if pcm is None:
            log.warning("%s; the busy message is not spoken yet: hanging up", why)
            return
        log.warning("%s; saying the busy message and hanging up", why)
        try:
            await self.output.push(BUSY_REPLY, BUSY_REPLY, pcm)
            await self.output.flush(BUSY_REPLY)
        except OutputClosed:
            return
        heard = asyncio.create_task(self.output.all_heard(BUSY_REPLY))
        listening = asyncio.create_task(self._listen_for_marks())
        # Deadline: a carrier that never echoes marks is hung up once the message must have played.
        deadline_s = len(pcm) / SAMPLE_RATE + self.output.lead_s + 5.0
        try:
            await asyncio.wait({heard, listening}, timeout=deadline_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (heard, listening):
                task.cancel()
            await asyncio.gather(heard, listening, return_exceptions=True)

    async def _listen_for_marks(self) -> None:
        while (messages := await self._receive()) is not None:
            for message in messages:
                if isinstance(message, CallStopped):
                    return
                if isinstance(message, MarkEchoed):
                    self.output.mark_echoed(message.name)

    async def _end(self, reason: str) -> None:
        self.output.close(f"the call ended ({reason})")
        if self.session is not None:
            await self.session.close()  # cancels any reply: its engine slot frees now
        await self.output.aclose(f"the call ended ({reason})")
        await self._close(1000)
        if self.call_log is not None:
            self.call_log.skipped_messages = self._skipped
            self.call_log.end(reason)
            self.line.services.metrics.audio_seconds_out.inc(self.output.seconds_sent)
            self.line.call_ended(self)

    # -- the socket -------------------------------------------------------------------------------------------

    async def _receive(self) -> list[IncomingMessage] | None:
        """The next message the serializer understands; None once the socket is gone. A message it cannot
        use is logged and skipped (UnsupportedMediaFormatError, after which nothing can work, is raised)."""
        while True:
            try:
                message = await self.websocket.receive()
            except (WebSocketDisconnect, RuntimeError):
                return None
            if message["type"] == "websocket.disconnect":
                return None
            raw = message.get("text")
            raw = message.get("bytes") if raw is None else raw
            if raw is None:
                continue
            try:
                return self.serializer.parse(raw)
            except UnsupportedMediaFormatError:
                raise
            except MediaStreamError as exc:
                self._skip(exc)

    def _skip(self, exc: MediaStreamError) -> None:
        self._skipped += 1
        if self._skipped <= LOGGED_SKIPS:
            log.warning("skipped a media-stream message: %s", exc)
        elif self._skipped == LOGGED_SKIPS + 1:
            log.warning("skipping more malformed messages; counting them from here on")

    async def _send(self, message: OutgoingMessage) -> None:
        """The output's one way out. A carrier that stops reading is cut off like a slow Realtime client."""
        text = encode(self.serializer, message)
        timeout_s = self.line.services.slow_client_timeout_s
        try:
            await send_text_within(self.websocket, text, timeout_s)
        except TimeoutError:
            reason = f"the carrier read nothing for {timeout_s:g} s"
            log.warning("disconnecting: %s", reason)
            self._cutting_off = asyncio.get_running_loop().create_task(
                close_unresponsive(self.websocket, CLOSE_POLICY, reason))
            raise
        if isinstance(message, OutgoingAudio) and self.call_log is not None:
            self.call_log.frame_sent(message.reply_id)

    async def _close(self, code: int) -> None:
        await close_gracefully(self.websocket, code)


def _weakly(send: Callable[[OutgoingMessage], Awaitable[None]]) -> Callable[[OutgoingMessage], Awaitable[None]]:
    """A bound `send` that does not keep its object alive (once it is gone, sending fails as a closed socket)."""
    method = weakref.WeakMethod(send)  # type: ignore[arg-type]

    async def weak_send(message: OutgoingMessage) -> None:
        bound = method()
        if bound is None:
            raise ConnectionError("the call is gone")
        await bound(message)

    return weak_send
