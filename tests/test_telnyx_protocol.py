"""Telnyx media streaming as the second carrier, unit by unit, on the messages Telnyx documents
(developers.telnyx.com/docs/voice/programmable-voice/media-streaming): the serializer both ways, Ed25519 webhook
signatures, the TeXML answer. The same end-to-end calls as Twilio's run in test_phone_call.py."""

import base64
import json
import time
from xml.etree import ElementTree

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from speech import synthesize
from test_phone_protocol import assert_within_g711

from higgs_agent.audio import resample
from higgs_agent.audio_formats import PCMU, encode_audio
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
from higgs_agent.transport.phone.telnyx import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    CarrierError,
    TelnyxSerializer,
    TelnyxSettings,
    TelnyxSignatures,
)
from higgs_agent.transport.phone.twiml import connect_stream_twiml

STREAM_ID = "32DE0DEA-53CB-4B21-89A4-9E1819C043BC"
CALL_CONTROL_ID = "v2:T02llQxIyaRkhfRKxgAP8nY511EhFLizdvdUKJiSw8d6A9BborherQ"
USER_ID = "3E6F995F-85F7-4705-9741-53B116D28237"
PUBLIC_URL = "https://agent.example.com"
KEY = Ed25519PrivateKey.generate()
PUBLIC_KEY = base64.b64encode(KEY.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()

# -- Telnyx's documented messages ------------------------------------------------------------------------------

CONNECTED = {"event": "connected", "version": "1.0.0"}
START = {
    "event": "start",
    "sequence_number": "1",
    "start": {
        "user_id": USER_ID,
        "call_control_id": CALL_CONTROL_ID,
        "call_session_id": "ff55a038-6f5d-11ef-9692-02420aeffb1f",
        "from": "+13122010094",
        "to": "+13122123456",
        "tags": ["TAG1", "TAG2"],
        "client_state": "aGF2ZSBhIG5pY2UgZGF5ID1d",
        "custom_parameters": {"customer_id": "customer_123"},
        "media_format": {"encoding": "PCMU", "sample_rate": 8000, "channels": 1},
    },
    "stream_id": STREAM_ID,
}
DTMF = {"event": "dtmf", "stream_id": STREAM_ID, "occurred_at": "2025-06-05T08:54:19.698408Z",
        "sequence_number": "5", "dtmf": {"digit": "1"}}
MARK = {"event": "mark", "stream_id": STREAM_ID, "sequence_number": "5", "mark": {"name": "some_mark_name"}}
ERROR = {"event": "error", "stream_id": STREAM_ID,
         "payload": {"code": 100003, "title": "malformed_frame", "detail": "Received frame was not formed correctly"}}
STOP = {"event": "stop", "sequence_number": "5", "stream_id": STREAM_ID,
        "stop": {"user_id": USER_ID, "call_control_id": CALL_CONTROL_ID}}


def media_message(codes: bytes, chunk: int, track: str = "inbound") -> dict:
    return {"event": "media", "sequence_number": str(chunk + 2), "stream_id": STREAM_ID,
            "media": {"track": track, "chunk": str(chunk), "timestamp": str(20 * (chunk - 1)),
                      "payload": base64.b64encode(codes).decode()}}


def started() -> TelnyxSerializer:
    serializer = TelnyxSerializer()
    serializer.parse(json.dumps(CONNECTED))
    serializer.parse(json.dumps(START))
    return serializer


def test_the_serializer_implements_the_carrier_neutral_interface():
    assert isinstance(TelnyxSerializer(), MediaStreamSerializer)
    assert TelnyxSerializer.wire_format == PCMU


def test_parses_the_documented_telnyx_messages():
    serializer = TelnyxSerializer()
    assert serializer.parse(json.dumps(CONNECTED)) == []
    (start,) = serializer.parse(json.dumps(START))
    assert start == CallStarted(stream_id=STREAM_ID, call_id=CALL_CONTROL_ID, media_format=PCMU, account_id=USER_ID,
                                custom_parameters={"customer_id": "customer_123"})
    assert serializer.started == start
    assert serializer.parse(json.dumps(DTMF)) == [DtmfDigit("1")]
    assert serializer.parse(json.dumps(MARK)) == [MarkEchoed("some_mark_name")]
    assert serializer.parse(json.dumps(STOP)) == [CallStopped()]
    with pytest.raises(CarrierError, match="100003 malformed_frame"):  # logged by the call, which goes on
        serializer.parse(json.dumps(ERROR))


def test_caller_audio_is_real_speech_decoded_within_g711_error():
    speech, _ = synthesize("thank you for calling", sample_rate=8_000)
    codes = encode_audio(speech, PCMU)
    serializer = started()
    decoded = []
    for chunk, start in enumerate(range(0, len(codes) - 159, 160), start=1):
        (audio,) = serializer.parse(json.dumps(media_message(codes[start:start + 160], chunk)))
        assert isinstance(audio, CallerAudio) and audio.sample_rate == 8000
        assert (audio.chunk, audio.timestamp_ms) == (chunk, 20 * (chunk - 1))  # Telnyx's strings, as numbers
        decoded.append(audio.samples)
    whole = np.concatenate(decoded)
    assert_within_g711(encode_audio(whole, PCMU), speech[:len(whole)])


def test_the_agents_own_track_is_not_caller_audio():
    assert started().parse(json.dumps(media_message(b"\xff" * 160, 1, track="outbound"))) == []


@pytest.mark.parametrize(("message", "error"), [
    ("{not json", MalformedMessageError),
    (json.dumps([1, 2]), MalformedMessageError),
    (json.dumps({"event": "telepathy"}), UnknownEventError),
    (json.dumps({**MARK, "mark": {}}), MalformedMessageError),
    (json.dumps({**media_message(b"\xff" * 160, 1), "media": {"payload": "***"}}), MalformedMessageError),
    (json.dumps({**DTMF, "dtmf": {"digit": "Z"}}), MalformedMessageError),
    (json.dumps({**MARK, "stream_id": "someone-else"}), WrongStreamError),
    (json.dumps(START), MalformedMessageError),  # a second start
])
def test_bad_messages_raise_typed_errors_and_the_stream_goes_on(message, error):
    serializer = started()
    with pytest.raises(error):
        serializer.parse(message)
    assert serializer.parse(json.dumps(MARK)) == [MarkEchoed("some_mark_name")]


def test_messages_before_start_and_other_codings_are_refused():
    with pytest.raises(MediaStreamError, match="before `start`"):
        TelnyxSerializer().parse(json.dumps(MARK))
    l16 = {**START, "start": {**START["start"], "media_format": {"encoding": "L16", "sample_rate": 16000,
                                                                 "channels": 1}}}
    with pytest.raises(UnsupportedMediaFormatError, match="PCMU"):
        TelnyxSerializer().parse(json.dumps(l16))


def test_outgoing_messages_have_exactly_telnyxs_fields():
    serializer = started()
    tone = (0.5 * np.sin(np.arange(160) * 2 * np.pi * 440 / 8000)).astype(np.float32)
    media = json.loads(encode(serializer, OutgoingAudio(tone, "item")))
    assert set(media) == {"event", "media"} and set(media["media"]) == {"payload"} and media["event"] == "media"
    assert base64.b64decode(media["media"]["payload"]) == encode_audio(tone, PCMU)
    assert json.loads(encode(serializer, OutgoingMark("item.1"))) == {"event": "mark", "mark": {"name": "item.1"}}
    assert json.loads(encode(serializer, ClearAudio())) == {"event": "clear"}


# -- signatures and the TeXML answer --------------------------------------------------------------------------

def signed(body: bytes, timestamp: int | None = None, key: Ed25519PrivateKey = KEY) -> dict[str, str]:
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    return {SIGNATURE_HEADER: base64.b64encode(key.sign(stamp.encode() + b"|" + body)).decode(),
            TIMESTAMP_HEADER: stamp}


def test_webhook_signatures_are_ed25519_over_the_timestamp_and_the_raw_body():
    signatures = TelnyxSignatures(PUBLIC_KEY)
    body = b"CallSid=v3%3Aabc&From=%2B13122010094"
    url = f"{PUBLIC_URL}/telnyx/voice"
    assert signatures.webhook_valid(url, {}, signed(body), body)
    assert not signatures.webhook_valid(url, {}, signed(body), body + b"&To=1")  # another body
    assert not signatures.webhook_valid(url, {}, signed(body, key=Ed25519PrivateKey.generate()), body)
    assert not signatures.webhook_valid(url, {}, signed(body, timestamp=int(time.time()) - 3600), body)  # a replay
    headers = signed(body)
    assert not signatures.webhook_valid(url, {}, {**headers, TIMESTAMP_HEADER: str(int(time.time()) + 1)}, body)
    assert not signatures.webhook_valid(url, {}, {SIGNATURE_HEADER: headers[SIGNATURE_HEADER]}, body)
    assert not signatures.webhook_valid(url, {}, {**headers, SIGNATURE_HEADER: "not base64!"}, body)


def test_settings_require_the_public_key_and_ask_for_a_two_way_pcmu_stream():
    with pytest.raises(ValueError, match="Telnyx's signing secret"):
        TelnyxSettings(public_url=PUBLIC_URL)
    with pytest.raises(ValueError, match="base64 Ed25519"):
        TelnyxSettings(public_url=PUBLIC_URL, public_key="not a key")
    settings = TelnyxSettings(public_url=PUBLIC_URL, public_key=PUBLIC_KEY)
    assert settings.webhook_url == f"{PUBLIC_URL}/telnyx/voice"
    assert settings.media_url("tok") == "wss://agent.example.com/telnyx/media/tok"
    answer = connect_stream_twiml(settings.media_url("tok"), {"From": "+1"}, attributes=settings.stream_attributes)
    stream = ElementTree.fromstring(answer).find("./Connect/Stream")
    assert stream.attrib == {"url": "wss://agent.example.com/telnyx/media/tok", "bidirectionalMode": "rtp",
                             "bidirectionalCodec": "PCMU", "codec": "PCMU"}


def test_reply_audio_encodes_to_what_a_pcmu_decoder_reads_back():
    speech, _ = synthesize("one moment please", sample_rate=24_000)
    wire = resample(speech, 24_000, 8_000)
    serializer = started()
    payload = json.loads(serializer.encode_audio(wire))["media"]["payload"]
    assert_within_g711(base64.b64decode(payload), wire)
