"""Telnyx Media Streaming (bidirectional RTP mode) as typed messages, and how a Telnyx number reaches us.

Telnyx -> us (JSON text frames, snake_case; `sequence_number`, `media.chunk` and `media.timestamp` are strings):
`connected`, `start` (top-level `stream_id`; `start.call_control_id`, `from`, `to`, `client_state`,
`custom_parameters`, `media_format` {encoding: "PCMU", sample_rate: 8000, channels: 1}), `media` (track,
chunk, timestamp, base64 RTP payload without headers), `dtmf` {digit}, `mark` (an echo of ours, once the audio
before it played, or at once on a `clear`), `error` {payload: {code, title, detail}}, `stop`.
us -> Telnyx: `{"event": "media", "media": {"payload"}}` (20 ms to 30 s of audio each), `{"event": "mark",
"mark": {"name"}}` and `{"event": "clear"}`; no stream id. References:
developers.telnyx.com/docs/voice/programmable-voice/media-streaming and
developers.telnyx.com/api-reference/websockets/stream-call-media-over-websocket.

A Telnyx TeXML application calls `POST /telnyx/voice` (form-encoded, Twilio-style fields; `CallSid` is the
call_control_id) and gets `<Connect><Stream url=... bidirectionalMode="rtp" bidirectionalCodec="PCMU"
codec="PCMU">`, the TwiML Twilio gets plus the attributes that make the stream two-way. Telnyx signs its webhooks
with Ed25519 over `timestamp|body` (`telnyx-signature-ed25519`, `telnyx-timestamp`), checked here with the
account's public key by `cryptography`; the media socket is unsigned, so the one-use token in its path is what
admits it.
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from higgs_agent.audio_formats import PCMU, AudioFormat, encode_audio
from higgs_agent.transport.phone.serializer import (
    CallStarted,
    CallStopped,
    DtmfInfo,
    IncomingMessage,
    MalformedMessageError,
    MarkEchoed,
    MarkInfo,
    MediaInfo,
    OneStream,
    OutgoingName,
    OutgoingPayload,
    UnsupportedMediaFormatError,
)
from higgs_agent.transport.phone.twiml import LineSettings

TELNYX_ENCODING = "PCMU"  # asked for both ways in the TeXML answer
SIGNATURE_HEADER = "telnyx-signature-ed25519"
TIMESTAMP_HEADER = "telnyx-timestamp"
SIGNATURE_TOLERANCE_S = 300  # a signed webhook older (or newer) than this is a replay


class _Inbound(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class _Connected(_Inbound):
    event: Literal["connected"]
    version: str | None = None


class _MediaFormat(_Inbound):
    encoding: str
    sample_rate: int
    channels: int = 1


class _StartInfo(_Inbound):
    call_control_id: str
    user_id: str | None = None
    call_session_id: str | None = None
    client_state: str | None = None
    custom_parameters: dict[str, str] = {}
    media_format: _MediaFormat


class _OnStream(_Inbound):
    """What every message on a stream may carry besides its own body."""

    sequence_number: int | None = None
    stream_id: str | None = None


class _Start(_OnStream):
    event: Literal["start"]
    stream_id: str
    start: _StartInfo


class _Media(_OnStream):
    event: Literal["media"]
    media: MediaInfo


class _Dtmf(_OnStream):
    event: Literal["dtmf"]
    dtmf: DtmfInfo


class _Mark(_OnStream):
    event: Literal["mark"]
    mark: MarkInfo


class _ErrorInfo(_Inbound):
    code: int | None = None
    title: str | None = None
    detail: str | None = None


class _Error(_OnStream):
    event: Literal["error"]
    payload: _ErrorInfo


class _Stop(_OnStream):
    event: Literal["stop"]


_TelnyxMessage = TypeAdapter(Annotated[_Connected | _Start | _Media | _Dtmf | _Mark | _Error | _Stop,
                                       Field(discriminator="event")])
_KNOWN_EVENTS = frozenset({"connected", "start", "media", "dtmf", "mark", "error", "stop"})


class _Outbound(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def wire(self) -> str:
        return self.model_dump_json()


class _SendMedia(_Outbound):
    event: Literal["media"] = "media"
    media: OutgoingPayload


class _SendMark(_Outbound):
    event: Literal["mark"] = "mark"
    mark: OutgoingName


class _SendClear(_Outbound):
    event: Literal["clear"] = "clear"


class CarrierError(MalformedMessageError):
    """The carrier reported an error on the stream (e.g. 100003 malformed_frame): logged, the call goes on."""


class TelnyxSerializer(OneStream):
    """Telnyx's media-streaming protocol for one WebSocket connection (one stream)."""

    carrier: ClassVar[str] = "telnyx"
    wire_format: ClassVar[AudioFormat] = PCMU
    carrier_name: ClassVar[str] = "Telnyx"
    messages: ClassVar[TypeAdapter] = _TelnyxMessage
    known_events: ClassVar[frozenset[str]] = _KNOWN_EVENTS

    def _meaning(self, parsed: Any) -> list[IncomingMessage]:  # noqa: ANN401 - one of the models above
        if isinstance(parsed, _Connected):
            return []
        if isinstance(parsed, _Start):
            return [self._start(parsed)]
        if isinstance(parsed, _Error):
            info = parsed.payload
            raise CarrierError(f"Telnyx reported error {info.code} {info.title}: {info.detail}")
        self._check_stream(parsed.stream_id, parsed.event)
        if isinstance(parsed, _Media):
            return parsed.media.caller_audio()
        if isinstance(parsed, _Dtmf):
            return [parsed.dtmf.key()]
        if isinstance(parsed, _Mark):
            return [MarkEchoed(parsed.mark.name)]
        return [CallStopped()]

    def _start(self, message: _Start) -> CallStarted:
        if self._started is not None:
            raise MalformedMessageError("a second `start` on one stream")
        info = message.start
        fmt = info.media_format
        if fmt.encoding.upper() != TELNYX_ENCODING or fmt.sample_rate != PCMU.rate or fmt.channels != 1:
            raise UnsupportedMediaFormatError(
                f"media format {fmt.encoding} {fmt.sample_rate} Hz x{fmt.channels}: only {TELNYX_ENCODING} "
                f"{PCMU.rate} Hz mono is supported (the TeXML answer asks for it: codec=\"PCMU\")")
        self._started = CallStarted(stream_id=message.stream_id, call_id=info.call_control_id, media_format=PCMU,
                                    account_id=info.user_id, custom_parameters=dict(info.custom_parameters))
        return self._started


    def encode_audio(self, samples: np.ndarray) -> str:
        if self._started is None:
            raise MalformedMessageError("no `start` message yet: nothing to send audio to")
        payload = base64.b64encode(encode_audio(samples, PCMU)).decode("ascii")
        return _SendMedia(media=OutgoingPayload(payload=payload)).wire()

    def encode_mark(self, name: str) -> str:
        return _SendMark(mark=OutgoingName(name=name)).wire()

    def encode_clear(self) -> str:
        return _SendClear().wire()


class TelnyxSignatures:
    """Checks Telnyx's Ed25519 webhook signatures with the account's public key (base64, from the portal)."""

    def __init__(self, public_key: str, tolerance_s: float = SIGNATURE_TOLERANCE_S) -> None:
        try:
            self._key = Ed25519PublicKey.from_public_bytes(base64.b64decode(public_key, validate=True))
        except (binascii.Error, ValueError) as exc:
            raise ValueError(f"the Telnyx public key must be the base64 Ed25519 key from the portal: {exc}") \
                from None
        self.tolerance_s = tolerance_s

    def webhook_valid(self, url: str, form: Mapping[str, str], headers: Mapping[str, str], body: bytes) -> bool:
        signature, timestamp = headers.get(SIGNATURE_HEADER), headers.get(TIMESTAMP_HEADER)
        if not signature or not timestamp:
            return False
        try:
            if abs(time.time() - int(timestamp)) > self.tolerance_s:
                return False
            self._key.verify(base64.b64decode(signature, validate=True), timestamp.encode() + b"|" + body)
        except (ValueError, binascii.Error, InvalidSignature):
            return False
        return True

    def media_upgrade_valid(self, stream_url: str, headers: Mapping[str, str]) -> bool:
        return True  # Telnyx does not sign the media socket: the one-use token in its path admits it


@dataclass(frozen=True)
class TelnyxSettings(LineSettings):
    """A Telnyx number (TeXML application) on this server. `public_key` (the account's, base64 Ed25519)
    checks every webhook's signature; without one nothing is checked, which only `allow_unsigned=True`
    permits (local tests, never a public number)."""

    public_key: str | None = field(default=None, repr=False)
    voice_path: str = "/telnyx/voice"
    media_path: str = "/telnyx/media"
    carrier: ClassVar[str] = "Telnyx"
    stream_attributes: ClassVar[Mapping[str, str]] = {"bidirectional_mode": "rtp",
                                                      "bidirectional_codec": TELNYX_ENCODING,
                                                      "codec": TELNYX_ENCODING}

    def __post_init__(self) -> None:
        if self.public_key:
            TelnyxSignatures(self.public_key)  # a malformed key fails now, not at the first call
        super().__post_init__()

    @property
    def secret(self) -> str | None:
        return self.public_key

    def signatures(self) -> TelnyxSignatures | None:
        return TelnyxSignatures(self.public_key) if self.public_key else None

    def serializer(self) -> TelnyxSerializer:
        return TelnyxSerializer()
