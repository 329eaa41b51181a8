"""The phone protocol layer: Twilio's Media Streams messages both ways, G.711 audio, the voice webhook and its
signatures, the media socket's admission, and the phone output (a paced sink) that frames and times reply audio.

Message samples follow twilio.com/docs/voice/media-streams/websocket-messages (placeholder SIDs as there;
audio payloads are real espeak-ng speech coded to mu-law by the standard library's G.711 coder). Signatures
are computed by the `twilio` package itself; audio is checked against an independent G.711 decoder written
from the standard's segment/mantissa definition.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import heapq
import itertools
import json
import threading
import time
import warnings
from collections.abc import AsyncIterator, Iterator
from urllib.parse import urlsplit
from xml.etree import ElementTree

import httpx
import numpy as np
import pytest
import uvicorn
import websockets
from hypothesis import given, settings
from hypothesis import strategies as st
from speech import synthesize
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket
from twilio.request_validator import RequestValidator

from higgs_agent.audio import resample
from higgs_agent.agent.output import OutputClosed
from higgs_agent.transport.phone.output import PhoneOutput
from higgs_agent.transport.phone.serializer import (
    CallerAudio,
    CallStarted,
    CallStopped,
    ClearAudio,
    DtmfDigit,
    MalformedMessageError,
    MarkEchoed,
    MediaStreamError,
    MediaStreamSerializer,
    OutgoingAudio,
    OutgoingMark,
    UnknownEventError,
    UnsupportedMediaFormatError,
    WrongStreamError,
    encode,
)
from higgs_agent.transport.phone.twilio import TwilioSerializer
from higgs_agent.transport.phone.twiml import (
    AnsweredCalls,
    MediaSocketGate,
    MediaSocketRefusedError,
    TwilioSettings,
    TwilioSignatures,
    connect_stream_twiml,
    voice_webhook_route,
)

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop  # the standard library's G.711 coder makes the "Twilio side" payloads

STREAM_SID = "MZXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX"
CALL_SID = "CAXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX"
ACCOUNT_SID = "ACXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX"
AUTH_TOKEN = "12345678901234567890123456789012"
PUBLIC_URL = "https://agent.example.com"
FRAME_BYTES = 160  # 20 ms of 8 kHz mu-law


# -- Twilio's documented messages ------------------------------------------------------------------------------

CONNECTED = {"event": "connected", "protocol": "Call", "version": "1.0.0"}
START = {
    "event": "start",
    "sequenceNumber": "1",
    "start": {
        "accountSid": ACCOUNT_SID,
        "streamSid": STREAM_SID,
        "callSid": CALL_SID,
        "tracks": ["inbound"],
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        "customParameters": {"FirstName": "Jane", "LastName": "Doe", "RemoteParty": "Bob"},
    },
    "streamSid": STREAM_SID,
}
DTMF = {"event": "dtmf", "streamSid": STREAM_SID, "sequenceNumber": "5",
        "dtmf": {"track": "inbound_track", "digit": "1"}}
MARK = {"event": "mark", "sequenceNumber": "4", "streamSid": STREAM_SID, "mark": {"name": "my label"}}
STOP = {"event": "stop", "sequenceNumber": "5", "stop": {"accountSid": ACCOUNT_SID, "callSid": CALL_SID},
        "streamSid": STREAM_SID}


def media_message(codes: bytes, chunk: int, track: str = "inbound") -> dict:
    return {"event": "media", "sequenceNumber": str(chunk + 2), "streamSid": STREAM_SID,
            "media": {"track": track, "chunk": str(chunk), "timestamp": str(20 * (chunk - 1)),
                      "payload": base64.b64encode(codes).decode()}}


def started_serializer() -> TwilioSerializer:
    serializer = TwilioSerializer()
    serializer.parse(json.dumps(CONNECTED))
    serializer.parse(json.dumps(START))
    return serializer


# -- G.711 mu-law, decoded from the standard's definition -------------------------------------------------------

def g711_decode(codes: bytes) -> tuple[np.ndarray, np.ndarray]:
    """mu-law bytes -> (float samples, quantization step of each sample's segment, as a float)."""
    u = (~np.frombuffer(codes, dtype=np.uint8)).astype(np.int32) & 0xFF
    exponent = (u >> 4) & 0x07
    magnitude = ((((u & 0x0F) << 3) + 0x84) << exponent) - 0x84
    value = np.where(u & 0x80, -magnitude, magnitude)
    return value.astype(np.float32) / 32768, (8 << exponent).astype(np.float32) / 32768


def assert_within_g711(decoded_codes: bytes, source: np.ndarray) -> None:
    """Each decoded sample is within one quantization step of its segment (+1 LSB of PCM16 rounding) of the
    source, and the whole signal keeps mu-law's SNR."""
    decoded, step = g711_decode(decoded_codes)
    source = np.clip(source, -32124 / 32768, 32124 / 32768)  # mu-law's largest magnitude
    assert decoded.shape == source.shape
    error = np.abs(decoded - source)
    assert np.all(error <= step + 2 / 32768), float(np.max(error - step))
    snr = 10 * np.log10(np.sum(source ** 2) / max(np.sum((decoded - source) ** 2), 1e-20))
    assert snr > 30, snr


@pytest.fixture(scope="module")
def speech_24k() -> np.ndarray:
    audio, _ = synthesize("thank you for calling, how can I help you today", sample_rate=24_000)
    return audio


# -- Twilio -> us ----------------------------------------------------------------------------------------------

def test_serializer_implements_the_carrier_neutral_interface():
    assert isinstance(TwilioSerializer(), MediaStreamSerializer)
    assert TwilioSerializer.wire_format.type == "audio/pcmu" and TwilioSerializer.wire_format.rate == 8000


def test_parses_the_documented_twilio_messages():
    serializer = TwilioSerializer()
    assert serializer.parse(json.dumps(CONNECTED)) == []
    (started,) = serializer.parse(json.dumps(START))
    assert started == CallStarted(stream_id=STREAM_SID, call_id=CALL_SID, media_format=TwilioSerializer.wire_format,
                                  account_id=ACCOUNT_SID, tracks=("inbound",),
                                  custom_parameters={"FirstName": "Jane", "LastName": "Doe", "RemoteParty": "Bob"})
    assert serializer.started == started
    assert serializer.parse(json.dumps(DTMF)) == [DtmfDigit("1")]
    assert serializer.parse(json.dumps(MARK)) == [MarkEchoed("my label")]
    assert serializer.parse(json.dumps(STOP).encode()) == [CallStopped()]


def test_caller_audio_is_real_speech_decoded_within_g711_error():
    speech, _ = synthesize("I would like to check my order", sample_rate=8000)
    codes = audioop.lin2ulaw((np.clip(speech, -1, 1) * 32767).round().astype("<i2").tobytes(), 2)
    serializer = started_serializer()
    chunks: list[CallerAudio] = []
    for number, start in enumerate(range(0, len(codes) - FRAME_BYTES + 1, FRAME_BYTES), start=1):
        (audio,) = serializer.parse(json.dumps(media_message(codes[start:start + FRAME_BYTES], number)))
        chunks.append(audio)
    assert [c.chunk for c in chunks] == list(range(1, len(chunks) + 1))
    assert [c.timestamp_ms for c in chunks] == [20 * i for i in range(len(chunks))]
    assert {c.sample_rate for c in chunks} == {8000}
    decoded = np.concatenate([c.samples for c in chunks])
    used = codes[:len(decoded)]
    np.testing.assert_array_equal(decoded, g711_decode(used)[0])  # the same codes, decoded by the standard
    assert_within_g711(used, speech[:len(decoded)])


def test_outbound_track_audio_is_not_caller_audio():
    serializer = started_serializer()
    assert serializer.parse(json.dumps(media_message(b"\xff" * FRAME_BYTES, 1, track="outbound"))) == []


@pytest.mark.parametrize(("message", "error"), [
    ("{not json", MalformedMessageError),
    ("[1, 2]", MalformedMessageError),
    (json.dumps({"streamSid": STREAM_SID}), MalformedMessageError),  # no event
    (json.dumps({"event": "transcription", "streamSid": STREAM_SID}), UnknownEventError),
    (json.dumps({"event": "media", "streamSid": STREAM_SID, "media": {"chunk": "1"}}), MalformedMessageError),
    (json.dumps({**media_message(b"\xff" * FRAME_BYTES, 1), "media": {"payload": "***"}}), MalformedMessageError),
    (json.dumps({**media_message(b"\xff" * FRAME_BYTES, 1), "media": {"payload": "/w==", "chunk": "one"}}),
     MalformedMessageError),
    (json.dumps({**MARK, "streamSid": "MZ-someone-else"}), WrongStreamError),
    (json.dumps({**DTMF, "dtmf": {"digit": "x"}}), MalformedMessageError),
    (json.dumps(START), MalformedMessageError),  # a second start
])
def test_bad_messages_raise_typed_errors_and_the_stream_goes_on(message, error):
    serializer = started_serializer()
    with pytest.raises(error):
        serializer.parse(message)
    assert issubclass(error, MediaStreamError)
    (audio,) = serializer.parse(json.dumps(media_message(b"\xff" * FRAME_BYTES, 2)))
    assert isinstance(audio, CallerAudio) and len(audio.samples) == FRAME_BYTES


def test_messages_before_start_and_other_codings_are_refused():
    with pytest.raises(MalformedMessageError, match="before `start`"):
        TwilioSerializer().parse(json.dumps(media_message(b"\xff" * FRAME_BYTES, 1)))
    wideband = json.loads(json.dumps(START))
    wideband["start"]["mediaFormat"] = {"encoding": "audio/x-l16", "sampleRate": 16000, "channels": 1}
    with pytest.raises(UnsupportedMediaFormatError):
        TwilioSerializer().parse(json.dumps(wideband))
    with pytest.raises(MalformedMessageError):
        TwilioSerializer().encode_clear()  # no streamSid to address yet


# -- us -> Twilio ----------------------------------------------------------------------------------------------

def test_outgoing_messages_have_exactly_twilios_fields():
    serializer = started_serializer()
    frame = np.zeros(FRAME_BYTES, dtype=np.float32)
    media = json.loads(serializer.encode_audio(frame))
    assert media == {"event": "media", "streamSid": STREAM_SID, "media": {"payload": media["media"]["payload"]}}
    assert base64.b64decode(media["media"]["payload"]) == b"\xff" * FRAME_BYTES  # mu-law silence
    assert json.loads(serializer.encode_mark("reply-1.3")) == {"event": "mark", "streamSid": STREAM_SID,
                                                               "mark": {"name": "reply-1.3"}}
    assert json.loads(serializer.encode_clear()) == {"event": "clear", "streamSid": STREAM_SID}
    assert encode(serializer, ClearAudio()) == serializer.encode_clear()
    assert encode(serializer, OutgoingMark("m")) == serializer.encode_mark("m")
    assert encode(serializer, OutgoingAudio(frame)) == serializer.encode_audio(frame)


# -- signatures, TwiML, the webhook and the media socket ---------------------------------------------------------

def test_webhook_signature_accepts_the_twilio_library_signature_and_refuses_tampering():
    url = f"{PUBLIC_URL}/twilio/voice?lang=en"
    params = {"CallSid": CALL_SID, "AccountSid": ACCOUNT_SID, "From": "+14155550100", "To": "+14155550199"}
    signature = RequestValidator(AUTH_TOKEN).compute_signature(url, params)
    signatures = TwilioSignatures(AUTH_TOKEN)

    def signed(value: str | None) -> dict[str, str]:
        return {} if value is None else {"X-Twilio-Signature": value}

    assert signatures.webhook_valid(url, params, signed(signature), b"")
    assert not signatures.webhook_valid(url, {**params, "From": "+14155550111"}, signed(signature), b"")
    assert not signatures.webhook_valid(url.replace("lang=en", "lang=fr"), params, signed(signature), b"")
    assert not signatures.webhook_valid(url, params, signed(signature[:-2] + "AA"), b"")
    assert not signatures.webhook_valid(url, params, signed(None), b"")
    assert not TwilioSignatures("another-token").webhook_valid(url, params, signed(signature), b"")

    stream_url = "wss://agent.example.com/twilio/media/abc"
    upgrade = RequestValidator(AUTH_TOKEN).compute_signature(stream_url, {})
    assert signatures.media_upgrade_valid(stream_url, signed(upgrade))
    assert not signatures.media_upgrade_valid(stream_url + "d", signed(upgrade))


def test_twiml_is_valid_xml_with_the_stream_url_and_parameters():
    url = "wss://agent.example.com/twilio/media/t0ken"
    root = ElementTree.fromstring(connect_stream_twiml(url, {"From": "+1 <555> & co", "lang": "en"}, name="call"))
    assert root.tag == "Response"
    (connect,) = list(root)
    (stream,) = list(connect)
    assert (connect.tag, stream.tag) == ("Connect", "Stream")
    assert stream.attrib == {"url": url, "name": "call"}
    assert [(p.tag, p.attrib) for p in stream] == [("Parameter", {"name": "From", "value": "+1 <555> & co"}),
                                                   ("Parameter", {"name": "lang", "value": "en"})]
    with pytest.raises(ValueError, match="query string"):
        connect_stream_twiml(url + "?call=1")
    with pytest.raises(ValueError, match="500"):
        connect_stream_twiml(url, {"notes": "x" * 500})
    with pytest.raises(ValueError, match="500"):
        connect_stream_twiml(url, {"a": "x" * 260, "b": "y" * 260})


def test_settings_require_a_token_unless_told_otherwise():
    with pytest.raises(ValueError, match="Twilio's signing secret"):
        TwilioSettings(public_url=PUBLIC_URL)
    settings = TwilioSettings(public_url="https://example.com/agent/", allow_unsigned=True)
    assert settings.webhook_url == "https://example.com/agent/twilio/voice"
    assert settings.media_url("tok") == "wss://example.com/agent/twilio/media/tok"


def test_answered_calls_expire_and_admit_once():
    now = [100.0]
    calls = AnsweredCalls(ttl_s=30, max_pending=2, clock=lambda: now[0], wall=lambda: now[0])
    first = calls.answer(CALL_SID, ACCOUNT_SID)
    assert calls.claim(first.token) == first
    assert calls.claim(first.token) is None  # used
    late = calls.answer("CA-late")
    now[0] += 31
    assert calls.claim(late.token) is None  # expired
    tokens = [calls.answer(f"CA{i}").token for i in range(3)]
    assert len(calls) == 2  # memory stays bounded under a webhook flood; the oldest token still holds its call
    assert calls.claim(tokens[0]).call_sid == "CA0" and calls.claim(tokens[0]) is None
    other = calls.answer("CA-other")
    with pytest.raises(MediaSocketRefusedError):
        other.check_started(CallStarted(STREAM_SID, CALL_SID, TwilioSerializer.wire_format))
    other.check_started(CallStarted(STREAM_SID, "CA-other", TwilioSerializer.wire_format))


def test_a_stream_answered_by_one_agent_is_admitted_once_by_another_with_the_same_key():
    """Behind a load balancer the webhook and its media stream may reach different agents."""
    now = [1000.0]
    answering, streaming = (AnsweredCalls(ttl_s=30, key=b"shared", wall=lambda: now[0]) for _ in range(2))
    stranger = AnsweredCalls(key=b"another")
    call = answering.answer(CALL_SID, ACCOUNT_SID, {"From": "+15550100"})
    admitted = streaming.claim(call.token)
    assert (admitted.call_sid, admitted.account_sid, dict(admitted.parameters)) == (
        CALL_SID, ACCOUNT_SID, {"From": "+15550100"})
    assert streaming.claim(call.token) is None  # once
    assert stranger.claim(call.token) is None  # not our key
    forged = call.token[:-2] + ("AA" if not call.token.endswith("AA") else "BB")
    assert streaming.claim(forged) is None
    late = answering.answer("CA-late")
    now[0] += 31
    assert streaming.claim(late.token) is None  # expired


@contextlib.contextmanager
def serving(app: Starlette) -> Iterator[str]:
    """The app on a real loopback socket, in a thread of this process."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not (server.started and server.servers):
        assert time.monotonic() < deadline and thread.is_alive(), "the test server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def phone_app(settings: TwilioSettings, calls: AnsweredCalls) -> Starlette:
    """The webhook route as shipped, and a media route that does what the phone transport will do first."""
    gate = MediaSocketGate(settings, calls)

    async def media(websocket: WebSocket) -> None:
        try:
            call = gate.admit_websocket(websocket)
        except MediaSocketRefusedError:
            await websocket.close(code=1008)
            return
        await websocket.accept()
        await websocket.send_json({"call_sid": call.call_sid, "parameters": dict(call.parameters)})
        await websocket.close()

    return Starlette(routes=[voice_webhook_route(settings, calls), WebSocketRoute(settings.media_route_path, media)])


async def test_voice_webhook_and_media_socket_over_a_real_socket():
    settings = TwilioSettings(public_url=PUBLIC_URL, auth_token=AUTH_TOKEN, parameters={"line": "support"})
    validator = RequestValidator(AUTH_TOKEN)
    form = {"CallSid": CALL_SID, "AccountSid": ACCOUNT_SID, "From": "+14155550100", "To": "+14155550199",
            "CallStatus": "ringing"}

    async def call_in(client: httpx.AsyncClient) -> httpx.Response:
        signature = validator.compute_signature(settings.webhook_url, form)
        return await client.post("/twilio/voice", data=form, headers={"X-Twilio-Signature": signature})

    with serving(phone_app(settings, AnsweredCalls())) as base:
        async with httpx.AsyncClient(base_url=base) as client:
            answer = await call_in(client)
            assert answer.status_code == 200 and answer.headers["content-type"].startswith("application/xml")
            stream = ElementTree.fromstring(answer.text).find("./Connect/Stream")
            stream_url = stream.attrib["url"]
            assert stream_url.startswith("wss://agent.example.com/twilio/media/") and not urlsplit(stream_url).query
            assert {p.attrib["name"]: p.attrib["value"] for p in stream} == {
                "line": "support", "From": "+14155550100", "To": "+14155550199"}

            forged = await client.post("/twilio/voice", data={**form, "From": "+19995550000"},
                                       headers={"X-Twilio-Signature": validator.compute_signature(
                                           settings.webhook_url, form)})
            assert forged.status_code == 403
            assert (await client.post("/twilio/voice", data=form)).status_code == 403

        local_url = base.replace("http://", "ws://") + urlsplit(stream_url).path
        with pytest.raises(websockets.InvalidStatus) as refused:  # unsigned: refused, token not spent
            await websockets.connect(local_url)
        assert refused.value.response.status_code == 403
        signed = {"X-Twilio-Signature": validator.compute_signature(stream_url, {})}
        async with websockets.connect(local_url, additional_headers=signed) as socket:
            admitted = json.loads(await socket.recv())
        assert admitted == {"call_sid": CALL_SID,
                            "parameters": {"line": "support", "From": "+14155550100", "To": "+14155550199"}}
        with pytest.raises(websockets.InvalidStatus):  # a token admits one stream
            await websockets.connect(local_url, additional_headers=signed)

        stranger = base.replace("http://", "ws://") + "/twilio/media/made-up"
        stranger_signed = {"X-Twilio-Signature": validator.compute_signature(
            settings.media_url("made-up"), {})}
        with pytest.raises(websockets.InvalidStatus):  # signed, but not a call we answered
            await websockets.connect(stranger, additional_headers=stranger_signed)


# -- the phone output ----------------------------------------------------------------------------------------------

class VirtualClock:
    """Virtual time: `sleep` waits until `advance` moves the clock past its deadline."""

    def __init__(self) -> None:
        self.now = 0.0
        self._sleepers: list[tuple[float, int, asyncio.Future]] = []
        self._order = itertools.count()

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        future = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.now + seconds, next(self._order), future))
        await future

    async def advance(self, seconds: float) -> None:
        end = self.now + seconds
        await settle()
        while self._sleepers and self._sleepers[0][0] <= end + 1e-9:
            wake, _, future = heapq.heappop(self._sleepers)
            self.now = max(self.now, wake)
            if not future.done():
                future.set_result(None)
            await settle()
        self.now = end
        await settle()


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


@contextlib.asynccontextmanager
async def phone_output(send, **options) -> AsyncIterator[PhoneOutput]:  # noqa: ANN001
    output = PhoneOutput(send, wire_rate=8000, **options)
    output.start()
    try:
        yield output
    finally:
        await output.aclose()


class TwilioWire:
    """The phone output's send callable: each message encoded by a started Twilio serializer, stamped with a time."""

    def __init__(self, clock) -> None:  # noqa: ANN001
        self.clock = clock
        self.serializer = started_serializer()
        self.sent: list[tuple[float, object, dict]] = []

    async def send(self, message) -> None:  # noqa: ANN001
        self.sent.append((self.clock(), message, json.loads(encode(self.serializer, message))))

    def frames(self) -> list[bytes]:
        return [base64.b64decode(wire["media"]["payload"]) for _, _, wire in self.sent if wire["event"] == "media"]

    def kinds(self) -> list[str]:
        return [wire["event"] for _, _, wire in self.sent]

    def marks(self) -> list[str]:
        return [wire["mark"]["name"] for _, _, wire in self.sent if wire["event"] == "mark"]


def chunks_of(audio: np.ndarray, sizes: list[int]) -> Iterator[np.ndarray]:
    start = 0
    for size in itertools.cycle(sizes):
        if start >= len(audio):
            return
        yield audio[start:start + size]
        start += size


def resampled_length(audio: np.ndarray) -> int:
    return len(resample(audio, 24_000, 8_000))


async def test_reply_audio_goes_out_as_valid_160_byte_mu_law_frames(speech_24k):
    clock = VirtualClock()
    wire = TwilioWire(clock)
    async with phone_output(wire.send, lead_ms=160, clock=clock, sleep=clock.sleep) as output:
        for chunk in chunks_of(speech_24k, [1917, 4800, 333, 7001]):  # odd sizes: part-frames carried over
            await output.push("reply-1", "reply-1", chunk)
        await output.flush("reply-1")
        await clock.advance(len(speech_24k) / 24_000 + 1)
        await output.wait_sent()
    frames = wire.frames()
    assert {len(frame) for frame in frames} == {FRAME_BYTES}
    expected = resample(speech_24k, 24_000, 8_000)
    assert len(frames) == -(-len(expected) // FRAME_BYTES)  # whole frames; only the last one padded
    codes = b"".join(frames)
    assert_within_g711(codes[:len(expected)], expected)  # chunked, carried and coded ~ one-shot resampling
    assert codes[len(expected):] == b"\xff" * (len(codes) - len(expected))  # the pad is mu-law silence


async def test_frames_go_out_at_real_time_a_lead_ahead(speech_24k):
    clock = VirtualClock()
    wire = TwilioWire(clock)
    lead_ms = 160
    async with phone_output(wire.send, lead_ms=lead_ms, clock=clock, sleep=clock.sleep) as output:
        for chunk in chunks_of(speech_24k, [2400]):
            await output.push("reply-1", "reply-1", chunk)
        await output.flush("reply-1")
        await clock.advance(0.5)
        sent_by_half_second = len(wire.frames())
        await clock.advance(len(speech_24k) / 24_000)
        await output.wait_sent()
    times = [t for t, message, _ in wire.sent if isinstance(message, OutgoingAudio)]
    # Frame k plays from k*20 ms; it leaves when less than the lead is left to play: never the whole reply.
    assert times == pytest.approx([max(0.0, 0.020 * k - lead_ms / 1000) for k in range(len(times))], abs=1e-6)
    assert sent_by_half_second == (500 + lead_ms) // 20 + 1


async def test_a_dry_carrier_restarts_with_a_fresh_lead():
    clock = VirtualClock()
    wire = TwilioWire(clock)
    tone = (0.3 * np.sin(np.arange(24_000) * 2 * np.pi * 300 / 24_000)).astype(np.float32)
    async with phone_output(wire.send, lead_ms=100, clock=clock, sleep=clock.sleep) as output:
        await output.push("reply-1", "reply-1", tone[:4800])  # 200 ms, then the engine is late by a second
        await clock.advance(1.2)
        await output.push("reply-1", "reply-1", tone[4800:9600])
        await output.flush("reply-1")
        await clock.advance(1.0)
        await output.wait_sent()
    late = [t for t, message, _ in wire.sent if isinstance(message, OutgoingAudio) and t >= 1.2]
    assert late[:6] == pytest.approx([1.2] * 6, abs=1e-6)  # 100 ms lead + the frame playing now, at once
    assert late[6] == pytest.approx(1.22, abs=1e-6)


async def test_a_mark_follows_each_chunk_and_its_echo_says_what_was_heard(speech_24k):
    clock = VirtualClock()
    wire = TwilioWire(clock)
    total_ms = resampled_length(speech_24k) / 8  # the reply at 8 kHz, in ms
    async with phone_output(wire.send, clock=clock, sleep=clock.sleep) as output:
        chunks = list(chunks_of(speech_24k, [3600]))
        for chunk in chunks:
            await output.push("reply-1", "reply-1", chunk)
        await output.flush("reply-1")
        await clock.advance(len(speech_24k) / 24_000 + 1)
        await output.wait_sent()
        playbacks = []
        frames_before = 0
        for _, message, wire_message in wire.sent:  # Twilio echoes each mark once what precedes it played
            if wire_message["event"] == "media":
                frames_before += 1
                continue
            (echo,) = wire.serializer.parse(json.dumps({**MARK, "mark": wire_message["mark"]}))
            playback = output.mark_echoed(echo.name)
            assert playback.item_id == "reply-1"
            assert playback.position_ms == pytest.approx(min(20 * frames_before, total_ms))  # the pad is not speech
            playbacks.append(playback)
        assert output.mark_echoed("not-ours") is None
    assert len(playbacks) >= len(chunks) - 1  # one per chunk that completed a frame, plus the final one
    assert [p.final for p in playbacks] == [False] * (len(playbacks) - 1) + [True]
    assert playbacks[-1].position_ms == pytest.approx(total_ms)
    assert wire.kinds()[-1] == "mark"
    assert output.heard_ms("reply-1") == playbacks[-1].position_ms


async def test_clear_drops_unsent_audio_and_reports_what_got_out(speech_24k):
    clock = VirtualClock()
    wire = TwilioWire(clock)
    async with phone_output(wire.send, lead_ms=160, clock=clock, sleep=clock.sleep) as output:
        for chunk in chunks_of(speech_24k, [2400]):
            await output.push("reply-1", "reply-1", chunk)
        await output.flush("reply-1")
        queued_ms = output.queued_ms
        await clock.advance(0.3)
        first_mark = wire.marks()[0]
        heard = output.mark_echoed(first_mark)
        unheard = output.discard_audio("reply-1")  # barge-in
        cut = output.playback("reply-1")
        await output.wait_sent()

        sent_frames = len(wire.frames())
        assert sent_frames == (300 + 160) // 20 + 1
        assert wire.kinds()[-1] == "clear"
        assert cut.sent_ms == 20 * sent_frames
        assert cut.confirmed_ms == heard.position_ms == output.heard_ms("reply-1")
        assert cut.estimated_ms == pytest.approx(300)  # sent, less the 180 ms the carrier still held
        assert unheard == round((queued_ms - heard.position_ms) * 24)  # unsent, and sent but not confirmed

        count = len(wire.sent)
        await clock.advance(2.0)
        assert len(wire.sent) == count  # nothing queued before the clear ever goes out
        assert output.mark_echoed(wire.marks()[-1]) is None  # flushed by the clear, not played
        assert output.playback("reply-1").estimated_ms == pytest.approx(300)
        assert not await output.push("reply-1", "reply-1", speech_24k[:2400])  # late audio of the cut reply is refused

        await output.push("reply-2", "reply-2", speech_24k[:4800])
        await output.flush("reply-2")
        await clock.advance(1.0)
        await output.wait_sent()
    after = [t for t, message, _ in wire.sent[count:] if isinstance(message, OutgoingAudio)]
    assert len(after) == 10 and after[0] == pytest.approx(2.3, abs=1e-6)


async def test_a_clear_from_sync_code_overtakes_audio_queued_after_it(speech_24k):
    clock = VirtualClock()
    wire = TwilioWire(clock)
    async with phone_output(wire.send, lead_ms=100, clock=clock, sleep=clock.sleep) as output:
        for chunk in chunks_of(speech_24k, [4800]):
            await output.push("reply-1", "reply-1", chunk)
        await clock.advance(0.1)
        before = len(wire.sent)
        output.discard_audio("reply-1")  # the session's barge-in: synchronous
        await output.push("reply-2", "reply-2", speech_24k[:2400])  # the next reply arrives in the same tick
        await output.flush("reply-2")
        await clock.advance(1.0)
        await output.wait_sent()
    after = wire.sent[before:]
    assert isinstance(after[0][1], ClearAudio)
    assert {message.samples.shape for _, message, _ in after[1:] if isinstance(message, OutgoingAudio)} == {(160,)}
    sent_before = sum(isinstance(m, OutgoingAudio) for _, m, _ in wire.sent[:before])
    assert output.playback("reply-1").sent_ms == 20 * sent_before
    assert all(wire_message.get("mark", {}).get("name", "reply-2").startswith("reply-2")
               for _, _, wire_message in after[1:])


async def test_a_clear_waits_for_the_frame_being_sent_and_counts_it():
    clock = VirtualClock()
    wire = TwilioWire(clock)
    release = asyncio.Event()

    async def slow_fifth_frame(message) -> None:  # noqa: ANN001
        if isinstance(message, OutgoingAudio) and len(wire.frames()) == 5:
            await release.wait()
        await wire.send(message)

    tone = (0.3 * np.sin(np.arange(24_000) * 2 * np.pi * 300 / 24_000)).astype(np.float32)
    async with phone_output(slow_fifth_frame, lead_ms=200, clock=clock, sleep=clock.sleep) as output:
        await output.push("reply-1", "reply-1", tone)
        await output.flush("reply-1")
        await clock.advance(0)
        assert len(wire.frames()) == 5  # the sixth is on its way
        unheard = output.discard_audio("reply-1")
        clearing = asyncio.ensure_future(output.wait_sent())
        await settle()
        assert not clearing.done() and "clear" not in wire.kinds()
        release.set()
        await clearing
        sent_ms = output.playback("reply-1").sent_ms
    assert wire.kinds() == ["media"] * 6 + ["clear"]
    assert sent_ms == 120 and unheard == 24_000  # sent or not, none of it confirmed heard


async def test_the_phone_output_holds_real_time_on_the_real_clock(speech_24k):
    wire = TwilioWire(time.monotonic)
    audio = speech_24k[:12_000]  # 500 ms
    async with phone_output(wire.send, lead_ms=100) as output:
        started = time.monotonic()
        for chunk in chunks_of(audio, [2400]):
            await output.push("reply-1", "reply-1", chunk)
        await output.flush("reply-1")
        await output.wait_sent()
        elapsed = time.monotonic() - started
    assert len(wire.frames()) == 25
    assert elapsed >= 0.500 - 0.100 - 0.020 - 0.005  # paced: the last frame waits for its turn


async def test_a_failed_send_stops_the_phone_output_instead_of_hanging():
    async def closed_socket(message) -> None:  # noqa: ANN001
        raise ConnectionError("socket closed")

    async with phone_output(closed_socket) as output:
        await output.push("reply-1", "reply-1", np.zeros(4800, dtype=np.float32))
        with pytest.raises(OutputClosed, match="socket closed"):
            await asyncio.wait_for(output.wait_sent(), 5)
        with pytest.raises(OutputClosed):
            await output.push("reply-1", "reply-1", np.zeros(4800, dtype=np.float32))


@settings(max_examples=25, deadline=None)
@given(sizes=st.lists(st.integers(min_value=1, max_value=6000), min_size=1, max_size=12),
       seconds=st.floats(min_value=0.01, max_value=0.8))
def test_framing_does_not_depend_on_how_the_reply_is_chunked(sizes, seconds):
    audio = (0.4 * np.sin(np.arange(int(24_000 * seconds)) * 2 * np.pi * 440 / 24_000)).astype(np.float32)

    async def frames() -> list[bytes]:
        clock = VirtualClock()
        wire = TwilioWire(clock)
        async with phone_output(wire.send, clock=clock, sleep=clock.sleep) as output:
            for chunk in chunks_of(audio, sizes):
                await output.push("reply", "reply", chunk)
            await output.flush("reply")
            await clock.advance(seconds + 1)
            await output.wait_sent()
        assert wire.kinds()[-1] == "mark" and "clear" not in wire.kinds()
        return wire.frames()

    sent = asyncio.run(frames())
    assert {len(frame) for frame in sent} == {FRAME_BYTES}
    assert len(sent) == -(-resampled_length(audio) // FRAME_BYTES)
