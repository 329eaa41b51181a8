"""A carrier's side of a phone call (Twilio or Telnyx), simulated over real sockets: for tests, benchmarks, and
trying a phone line without an account.

`SimulatedCall.dial()` POSTs the voice webhook signed as the carrier signs it (Twilio: the `twilio` package's
RequestValidator; Telnyx: Ed25519 over `timestamp|body` with `telnyx_key`), reads the TwiML/TeXML answer, and
opens the media WebSocket at the path of the `<Stream url>` it names (with Twilio's upgrade signature over
that URL; Telnyx signs no upgrade). Then, as the carrier: `connected`, `start` (the `<Parameter>`s as custom
parameters), and one `media` message every 20 ms at real time for the rest of the call (what `say()` queued,
else silence), with increasing sequence / chunk / timestamp strings, in the carrier's own field names
(`_Dialect`). The agent's audio is played by the call's own clock: each frame from when it arrived or when the
one before it ends; each `mark` is echoed once everything received before it has played; a `clear` drops what
has not played and echoes every pending mark at once. Anything the agent sends that the carrier would reject
(other fields, another stream, frames that are not 160 bytes, unknown events, binary frames) goes to
`violations`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import itertools
import json
import secrets
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urlsplit
from xml.etree import ElementTree

import httpx
import numpy as np
import websockets
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from twilio.request_validator import SIGNATURE_HEADER, RequestValidator

from higgs_agent.audio import resample
from higgs_agent.audio_formats import PCMU, decode_audio, encode_audio
from higgs_agent.transport.phone.telnyx import SIGNATURE_HEADER as TELNYX_SIGNATURE
from higgs_agent.transport.phone.telnyx import TIMESTAMP_HEADER, TelnyxSettings
from higgs_agent.transport.phone.twiml import LineSettings, TwilioSettings

FRAME_S = 0.020
FRAME_BYTES = 160  # 20 ms of 8 kHz mu-law
SILENCE = b"\xff" * FRAME_BYTES  # mu-law's code for 0
OUTBOUND_INNER = {"media": {"payload"}, "mark": {"name"}}


class _Dialect:
    """How one carrier words its side of the call."""

    stream_key: str | None  # the outbound messages' stream field (None: they carry none)

    def outbound_fields(self, event: str) -> set[str]:
        """Exactly the fields the carrier accepts in our messages (Twilio rejects more: errors 31950/31951)."""
        base = {"event", self.stream_key} if self.stream_key else {"event"}
        return base | ({event} if event in OUTBOUND_INNER else set())

    def event(self, call: SimulatedCall, event: str, stream: str | None = None, **fields: Any) -> dict:
        raise NotImplementedError

    def start(self, call: SimulatedCall, call_sid: str) -> dict:
        raise NotImplementedError

    def media(self, call: SimulatedCall, index: int, payload: bytes) -> dict:
        return self.event(call, "media", media={"track": "inbound", "chunk": str(index + 1),
                                                "timestamp": str(round(index * FRAME_S * 1000)),
                                                "payload": base64.b64encode(payload).decode("ascii")})

    def webhook_headers(self, call: SimulatedCall, form: dict[str, str], body: bytes) -> dict[str, str]:
        return {}

    def stream_headers(self, call: SimulatedCall, stream_url: str) -> dict[str, str]:
        return {}


class _Twilio(_Dialect):
    stream_key = "streamSid"

    def __init__(self, settings: TwilioSettings) -> None:
        self._validator = RequestValidator(settings.auth_token) if settings.auth_token else None

    def event(self, call: SimulatedCall, event: str, stream: str | None = None, **fields: Any) -> dict:
        return {"event": event, "sequenceNumber": call.next_sequence(), "streamSid": stream or call.stream_sid,
                **fields}

    def start(self, call: SimulatedCall, call_sid: str) -> dict:
        return self.event(call, "start", start={
            "accountSid": call.account_sid, "streamSid": call.stream_sid, "callSid": call_sid, "tracks": ["inbound"],
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
            "customParameters": call.parameters})

    def webhook_headers(self, call: SimulatedCall, form: dict[str, str], body: bytes) -> dict[str, str]:
        if self._validator is None:
            return {}
        return {SIGNATURE_HEADER: self._validator.compute_signature(call.settings.webhook_url, form)}

    def stream_headers(self, call: SimulatedCall, stream_url: str) -> dict[str, str]:
        if self._validator is None:
            return {}
        return {SIGNATURE_HEADER: self._validator.compute_signature(stream_url, {})}


class _Telnyx(_Dialect):
    stream_key = None  # Telnyx's outbound media, mark and clear name no stream

    def __init__(self, key: Ed25519PrivateKey | None) -> None:
        self._key = key

    def event(self, call: SimulatedCall, event: str, stream: str | None = None, **fields: Any) -> dict:
        return {"event": event, "sequence_number": call.next_sequence(), "stream_id": stream or call.stream_sid,
                **fields}

    def start(self, call: SimulatedCall, call_sid: str) -> dict:
        return self.event(call, "start", start={
            "user_id": call.account_sid, "call_control_id": call_sid, "from": call.form["From"],
            "to": call.form["To"], "custom_parameters": call.parameters,
            "media_format": {"encoding": "PCMU", "sample_rate": 8000, "channels": 1}})

    def webhook_headers(self, call: SimulatedCall, form: dict[str, str], body: bytes) -> dict[str, str]:
        if self._key is None:
            return {}
        timestamp = str(int(time.time()))
        signature = self._key.sign(timestamp.encode() + b"|" + body)
        return {TELNYX_SIGNATURE: base64.b64encode(signature).decode("ascii"), TIMESTAMP_HEADER: timestamp}


class CallRefusedError(RuntimeError):
    """The webhook did not answer with a stream to connect to."""


@dataclass
class ReceivedFrame:
    payload: bytes
    arrived: float  # time.monotonic()
    plays_at: float  # when the phone starts playing it
    dropped: bool = False  # a clear came before it played

    @property
    def played_by(self) -> float:
        return self.plays_at + FRAME_S


@dataclass
class ReceivedMark:
    name: str
    arrived: float
    frames_before: int  # frames received before it, over the whole call
    echoed_at: float | None = None
    flushed: bool = False  # echoed because a clear emptied the buffer, not because it played


@dataclass
class _Speech:
    frames: deque[bytes]
    sent: asyncio.Future[float] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class SimulatedCall:
    """`settings`: the server's line (its class says the carrier); `telnyx_key` signs a Telnyx line's webhooks
    (the private half of its `public_key`)."""

    def __init__(self, base_url: str, settings: LineSettings, *, call_sid: str | None = None,
                 account_sid: str | None = None, caller: str = "+14155550100", called: str = "+14155550199",
                 telnyx_key: Ed25519PrivateKey | None = None) -> None:
        self.base_url = base_url.rstrip("/")  # where the server really listens (http://127.0.0.1:PORT)
        self.settings = settings  # the server's: its public URLs are what the carrier signs
        if isinstance(settings, TelnyxSettings):
            self.dialect: _Dialect = _Telnyx(telnyx_key)
            self.call_sid = call_sid or "v3:" + secrets.token_urlsafe(24)
            self.account_sid = account_sid or secrets.token_hex(16)
            self.stream_sid = secrets.token_hex(16)
        else:
            assert isinstance(settings, TwilioSettings), f"no simulator for {type(settings).__name__}"
            self.dialect = _Twilio(settings)
            self.call_sid = call_sid or "CA" + secrets.token_hex(16)
            self.account_sid = account_sid or "AC" + secrets.token_hex(16)
            self.stream_sid = "MZ" + secrets.token_hex(16)
        self.form = {"CallSid": self.call_sid, "AccountSid": self.account_sid, "From": caller, "To": called,
                     "CallStatus": "ringing", "Direction": "inbound"}
        self.stream_url: str | None = None
        self.parameters: dict[str, str] = {}
        self.frames: list[ReceivedFrame] = []
        self.marks: list[ReceivedMark] = []
        self.clears: list[float] = []
        self.violations: list[str] = []
        self.started_at: float | None = None  # when `start` was sent
        self.close_code: int | None = None
        self.closed_at: float | None = None
        self._socket: websockets.ClientConnection | None = None
        self._sequence = itertools.count(1)
        self._speech: deque[_Speech] = deque()
        self._play_end = 0.0
        self._echoes: dict[str, asyncio.Task[None]] = {}  # pending mark echoes, in arrival order
        self._send_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []

    # -- the webhook -------------------------------------------------------------------------------------------

    def webhook_headers(self, form: dict[str, str] | None = None) -> dict[str, str]:
        """The carrier's signature headers over `form` (default: the call's)."""
        form = self.form if form is None else form
        return self.dialect.webhook_headers(self, form, urlencode(form).encode())

    async def post_webhook(self, headers: dict[str, str] | None = None,
                           form: dict[str, str] | None = None) -> httpx.Response:
        """POST the voice webhook (form-encoded), signed over `form` unless `headers` are given."""
        form = self.form if form is None else form
        headers = self.webhook_headers(form) if headers is None else headers
        async with httpx.AsyncClient(base_url=self.base_url, timeout=60) as client:
            return await client.post(self.settings.voice_path, content=urlencode(form).encode(),
                                     headers={"content-type": "application/x-www-form-urlencoded", **headers})

    async def dial(self) -> None:
        """Ring the number (the webhook), then open the stream its TwiML names and start the call."""
        answer = await self.post_webhook()
        if answer.status_code != 200:
            raise CallRefusedError(f"the webhook answered {answer.status_code}: {answer.text[:200]}")
        stream = ElementTree.fromstring(answer.text).find("./Connect/Stream")
        if stream is None:
            raise CallRefusedError(f"no <Connect><Stream> in the TwiML: {answer.text[:200]}")
        self.stream_url = stream.attrib["url"]
        self.parameters = {p.attrib["name"]: p.attrib["value"] for p in stream.findall("Parameter")}
        await self.connect()

    def local_stream_url(self, stream_url: str | None = None) -> str:
        """The stream URL's path on the server's real address (the TwiML names the public one)."""
        path = urlsplit(stream_url or self.stream_url or "").path
        return self.base_url.replace("http://", "ws://").replace("https://", "wss://") + path

    def stream_signature(self, stream_url: str | None = None) -> dict[str, str]:
        return self.dialect.stream_headers(self, stream_url or self.stream_url or "")

    async def connect(self, start: bool = True) -> None:
        """Open the media WebSocket (signed) and, with `start`, send `connected` and `start`."""
        self._socket = await websockets.connect(self.local_stream_url(), additional_headers=self.stream_signature())
        self._tasks.append(asyncio.create_task(self._listen(), name="phone-sim-listen"))
        await self.send({"event": "connected", "protocol": "Call", "version": "1.0.0"})
        if start:
            await self.start()

    async def start(self, call_sid: str | None = None) -> None:
        await self.send(self.dialect.start(self, call_sid or self.call_sid))
        self.started_at = time.monotonic()
        self._tasks.append(asyncio.create_task(self._microphone(), name="phone-sim-microphone"))

    # -- the caller --------------------------------------------------------------------------------------------

    async def say(self, audio: np.ndarray, rate: int) -> float:
        """Speak `audio` (float32 mono at `rate`) into the call at real time; returns when its last frame was
        sent (time.monotonic())."""
        codes = encode_audio(resample(audio, rate, PCMU.rate), PCMU)
        codes += SILENCE[: -len(codes) % FRAME_BYTES]  # a whole last frame
        speech = _Speech(deque(codes[i:i + FRAME_BYTES] for i in range(0, len(codes), FRAME_BYTES)))
        self._speech.append(speech)
        return await speech.sent

    async def press(self, digit: str) -> None:
        await self.send(self.event("dtmf", dtmf={"digit": digit}))

    def event(self, event: str, stream: str | None = None, **fields: Any) -> dict:
        """A message as the carrier words it (its stream field, its sequence numbers), for this call's stream
        unless `stream` names another."""
        return self.dialect.event(self, event, stream, **fields)

    async def send(self, message: dict | str | bytes) -> None:
        """Any message as it is (dicts as JSON text)."""
        assert self._socket is not None, "not connected"
        async with self._send_lock:
            await self._socket.send(json.dumps(message) if isinstance(message, dict) else message)

    async def hang_up(self) -> None:
        """The caller hangs up: `stop`, then Twilio closes the socket."""
        with contextlib.suppress(websockets.ConnectionClosed):
            await self.send(self.event("stop", stop={"accountSid": self.account_sid, "callSid": self.call_sid}))
        await self.close()

    def drop(self) -> None:
        """The connection vanishes without a close handshake."""
        assert self._socket is not None
        self._socket.transport.abort()
        self._stop_tasks()

    async def close(self) -> None:
        if self._socket is not None:
            with contextlib.suppress(Exception):
                await self._socket.close()
        self._stop_tasks()

    # -- what came back ----------------------------------------------------------------------------------------

    def frames_since(self, since: float) -> list[ReceivedFrame]:
        return [frame for frame in self.frames if frame.arrived >= since]

    def played_ms(self, frames: list[ReceivedFrame], by: float) -> int:
        """Milliseconds of `frames` played to the end by time `by`."""
        return sum(round(FRAME_S * 1000) for f in frames if not f.dropped and f.played_by <= by)

    async def wait_frames(self, count: int, since: float = 0.0, timeout: float = 60.0) -> list[ReceivedFrame]:
        await self._until(lambda: len(self.frames_since(since)) >= count, timeout,
                          f"{count} frames after {since:.3f}")
        return self.frames_since(since)

    async def wait_quiet(self, quiet_s: float = 0.4, timeout: float = 60.0) -> None:
        """Until everything received has played and nothing more came for `quiet_s`."""
        def quiet() -> bool:
            now = time.monotonic()
            last = self.frames[-1].arrived if self.frames else 0.0
            return now >= self._play_end and now - last >= quiet_s
        await self._until(quiet, timeout, "the agent to go quiet")

    async def wait_clear(self, since: float = 0.0, timeout: float = 30.0) -> float:
        await self._until(lambda: any(t >= since for t in self.clears), timeout, "a clear")
        return next(t for t in self.clears if t >= since)

    async def wait_closed(self, timeout: float = 30.0) -> int | None:
        await self._until(lambda: self.closed_at is not None, timeout, "the server to close the stream")
        return self.close_code

    @staticmethod
    def decode(frames: list[ReceivedFrame]) -> np.ndarray:
        """The frames' audio, float32 at 8 kHz."""
        return decode_audio(b"".join(f.payload for f in frames), PCMU)

    # -- inside ------------------------------------------------------------------------------------------------

    def next_sequence(self) -> str:
        return str(next(self._sequence))  # the carriers' numbers are strings

    async def _until(self, condition, timeout: float, what: str) -> None:  # noqa: ANN001
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise TimeoutError(f"simulated call {self.call_sid}: waited {timeout:g} s for {what}")
            await asyncio.sleep(0.01)

    async def _microphone(self) -> None:
        """One `media` message every 20 ms, on a fixed schedule: speech when there is some, else silence."""
        begin = time.monotonic()
        with contextlib.suppress(websockets.ConnectionClosed):
            for index in itertools.count():
                await asyncio.sleep(max(0.0, begin + index * FRAME_S - time.monotonic()))
                speech = self._speech[0] if self._speech else None
                payload = speech.frames.popleft() if speech is not None else SILENCE
                await self.send(self.dialect.media(self, index, payload))
                if speech is not None and not speech.frames:
                    self._speech.popleft()
                    speech.sent.set_result(time.monotonic())

    async def _listen(self) -> None:
        assert self._socket is not None
        try:
            async for message in self._socket:
                self._received(message, time.monotonic())
        except websockets.ConnectionClosed:
            pass
        finally:
            self.close_code = self._socket.close_code
            self.closed_at = time.monotonic()

    def _received(self, message: str | bytes, now: float) -> None:
        if isinstance(message, bytes):
            self.violations.append("a binary frame")
            return
        try:
            wire = json.loads(message)
        except json.JSONDecodeError:
            self.violations.append(f"not JSON: {message[:80]!r}")
            return
        event = wire.get("event") if isinstance(wire, dict) else None
        if event not in ("media", "mark", "clear"):
            self.violations.append(f"unknown event {event!r}")
            return
        if set(wire) != self.dialect.outbound_fields(event) or (event in OUTBOUND_INNER and (
                not isinstance(wire[event], dict) or set(wire[event]) != OUTBOUND_INNER[event])):
            self.violations.append(f"unexpected fields in {message[:120]}")
            return
        key = self.dialect.stream_key
        if key is not None and wire[key] != self.stream_sid:
            self.violations.append(f"{event} for stream {wire[key]!r}")
            return
        if event == "media":
            self._play(wire["media"]["payload"], now)
        elif event == "mark":
            self._mark(wire["mark"]["name"], now)
        else:
            self._clear(now)

    def _play(self, payload: str, now: float) -> None:
        try:
            codes = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            self.violations.append("media payload is not base64")
            return
        if len(codes) != FRAME_BYTES:
            self.violations.append(f"a media frame of {len(codes)} bytes, not {FRAME_BYTES}")
        plays_at = max(now, self._play_end)
        self._play_end = plays_at + FRAME_S * len(codes) / FRAME_BYTES
        self.frames.append(ReceivedFrame(codes, now, plays_at))

    def _mark(self, name: str, now: float) -> None:
        mark = ReceivedMark(name, now, len(self.frames))
        self.marks.append(mark)
        self._echoes[name] = asyncio.create_task(self._echo(mark, max(0.0, self._play_end - now)))

    def _clear(self, now: float) -> None:
        self.clears.append(now)
        for frame in reversed(self.frames):
            if frame.plays_at < now:
                break
            frame.dropped = True
        self._play_end = now
        pending = [mark for mark in self.marks if mark.echoed_at is None and mark.name in self._echoes]
        for mark in pending:
            self._echoes.pop(mark.name).cancel()
            mark.flushed = True
        self._tasks.append(asyncio.create_task(self._echo_all(pending)))

    async def _echo(self, mark: ReceivedMark, delay_s: float) -> None:
        await asyncio.sleep(delay_s)
        self._echoes.pop(mark.name, None)
        await self._send_echo(mark)

    async def _echo_all(self, marks: list[ReceivedMark]) -> None:
        for mark in marks:
            await self._send_echo(mark)

    async def _send_echo(self, mark: ReceivedMark) -> None:
        mark.echoed_at = time.monotonic()
        with contextlib.suppress(websockets.ConnectionClosed):
            await self.send(self.event("mark", mark={"name": mark.name}))

    def _stop_tasks(self) -> None:
        for task in [*self._tasks, *self._echoes.values()]:
            task.cancel()
        self._echoes.clear()
