"""Twilio Media Streams (bidirectional, `<Connect><Stream>`) as typed messages.

Twilio -> us: `connected`, `start` (streamSid, accountSid, callSid, tracks, mediaFormat, customParameters),
`media` (base64 G.711 mu-law, 8 kHz, 20 ms a message), `dtmf`, `mark` (an echo of ours), `stop`. Twilio sends
`sequenceNumber`, `chunk` and `timestamp` as strings; they are parsed as integers. Fields Twilio may add
later are ignored.

us -> Twilio: `media` {event, streamSid, media: {payload}}, `mark` {event, streamSid, mark: {name}} and
`clear` {event, streamSid}: exactly these fields, since Twilio rejects unexpected fields, unknown events and a
wrong streamSid (errors 31950/31951). Reference: twilio.com/docs/voice/media-streams/websocket-messages.
"""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from pydantic.alias_generators import to_camel

from higgs_agent.audio_formats import PCMU, AudioFormat, decode_audio, encode_audio
from higgs_agent.protocol.errors import loads_strict
from higgs_agent.transport.phone.serializer import (
    DTMF_DIGITS,
    CallerAudio,
    CallStarted,
    CallStopped,
    DtmfDigit,
    IncomingMessage,
    MalformedMessageError,
    MarkEchoed,
    UnknownEventError,
    UnsupportedMediaFormatError,
    WireMessage,
    WrongStreamError,
)

TWILIO_ENCODING = "audio/x-mulaw"  # the only coding Twilio's Media Streams carry, at 8000 Hz mono


class _Inbound(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True)


class _Connected(_Inbound):
    event: Literal["connected"]
    protocol: str | None = None
    version: str | None = None


class _MediaFormat(_Inbound):
    encoding: str
    sample_rate: int
    channels: int = 1


class _StartInfo(_Inbound):
    stream_sid: str
    account_sid: str | None = None
    call_sid: str
    tracks: list[str] = ["inbound"]
    custom_parameters: dict[str, str] = {}
    media_format: _MediaFormat


class _Start(_Inbound):
    event: Literal["start"]
    sequence_number: int | None = None
    stream_sid: str | None = None
    start: _StartInfo


class _MediaInfo(_Inbound):
    track: str = "inbound"
    chunk: int | None = None
    timestamp: int | None = None
    payload: str


class _Media(_Inbound):
    event: Literal["media"]
    sequence_number: int | None = None
    stream_sid: str | None = None
    media: _MediaInfo


class _DtmfInfo(_Inbound):
    track: str | None = None
    digit: str


class _Dtmf(_Inbound):
    event: Literal["dtmf"]
    sequence_number: int | None = None
    stream_sid: str | None = None
    dtmf: _DtmfInfo


class _MarkInfo(_Inbound):
    name: str


class _Mark(_Inbound):
    event: Literal["mark"]
    sequence_number: int | None = None
    stream_sid: str | None = None
    mark: _MarkInfo


class _StopInfo(_Inbound):
    account_sid: str | None = None
    call_sid: str | None = None
    reason: str | None = None


class _Stop(_Inbound):
    event: Literal["stop"]
    sequence_number: int | None = None
    stream_sid: str | None = None
    stop: _StopInfo | None = None


_TwilioMessage = TypeAdapter(Annotated[_Connected | _Start | _Media | _Dtmf | _Mark | _Stop,
                                       Field(discriminator="event")])
_KNOWN_EVENTS = frozenset({"connected", "start", "media", "dtmf", "mark", "stop"})


class _Outbound(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)

    def wire(self) -> str:
        return self.model_dump_json(by_alias=True)


class _Payload(_Outbound):
    payload: str


class _Name(_Outbound):
    name: str


class _SendMedia(_Outbound):
    event: Literal["media"] = "media"
    stream_sid: str
    media: _Payload


class _SendMark(_Outbound):
    event: Literal["mark"] = "mark"
    stream_sid: str
    mark: _Name


class _SendClear(_Outbound):
    event: Literal["clear"] = "clear"
    stream_sid: str


class TwilioSerializer:
    """Twilio's Media Streams protocol for one WebSocket connection (one stream)."""

    carrier: ClassVar[str] = "twilio"
    wire_format: ClassVar[AudioFormat] = PCMU

    def __init__(self) -> None:
        self._started: CallStarted | None = None

    @property
    def started(self) -> CallStarted | None:
        return self._started

    @property
    def stream_sid(self) -> str:
        if self._started is None:
            raise MalformedMessageError("no `start` message yet: the streamSid to send to is unknown")
        return self._started.stream_id

    # -- Twilio -> us -------------------------------------------------------------------------------------------

    def parse(self, message: WireMessage) -> list[IncomingMessage]:
        raw = _json_object(message)
        event = raw.get("event")
        if isinstance(event, str) and event not in _KNOWN_EVENTS:
            raise UnknownEventError(event)
        try:
            parsed = _TwilioMessage.validate_python(raw)
        except ValidationError as exc:
            raise MalformedMessageError(f"malformed Twilio {event or 'message'}: {_first_error(exc, event)}") \
                from None
        if isinstance(parsed, _Connected):
            return []
        if isinstance(parsed, _Start):
            return [self._start(parsed)]
        self._check_stream(parsed.stream_sid, parsed.event)
        if isinstance(parsed, _Media):
            return self._media(parsed.media)
        if isinstance(parsed, _Dtmf):
            digit = parsed.dtmf.digit.upper()
            if digit not in DTMF_DIGITS:
                raise MalformedMessageError(f"dtmf digit {parsed.dtmf.digit!r} is not one of 0-9 * # A-D")
            return [DtmfDigit(digit)]
        if isinstance(parsed, _Mark):
            return [MarkEchoed(parsed.mark.name)]
        return [CallStopped(reason=parsed.stop.reason if parsed.stop else None)]

    def _start(self, message: _Start) -> CallStarted:
        if self._started is not None:
            raise MalformedMessageError("a second `start` on one stream")
        info = message.start
        fmt = info.media_format
        if fmt.encoding != TWILIO_ENCODING or fmt.sample_rate != PCMU.rate or fmt.channels != 1:
            raise UnsupportedMediaFormatError(
                f"media format {fmt.encoding} {fmt.sample_rate} Hz x{fmt.channels}: only {TWILIO_ENCODING} "
                f"{PCMU.rate} Hz mono is supported")
        if message.stream_sid is not None and message.stream_sid != info.stream_sid:
            raise MalformedMessageError("start: the top-level streamSid differs from start.streamSid")
        self._started = CallStarted(stream_id=info.stream_sid, call_id=info.call_sid, media_format=PCMU,
                                    account_id=info.account_sid, tracks=tuple(info.tracks),
                                    custom_parameters=dict(info.custom_parameters))
        return self._started

    def _check_stream(self, stream_sid: str | None, event: str) -> None:
        if self._started is None:
            raise MalformedMessageError(f"`{event}` before `start`")
        if stream_sid is not None and stream_sid != self._started.stream_id:
            raise WrongStreamError(f"`{event}` for stream {stream_sid!r}, not this connection's "
                                   f"{self._started.stream_id!r}")

    def _media(self, media: _MediaInfo) -> list[IncomingMessage]:
        if media.track != "inbound":
            return []  # the bot's own audio, streamed back only with <Start><Stream track="both_tracks">
        try:
            coded = base64.b64decode(media.payload, validate=True)
        except (binascii.Error, ValueError):
            raise MalformedMessageError("media.payload is not valid base64") from None
        return [CallerAudio(samples=decode_audio(coded, PCMU), sample_rate=PCMU.rate,
                            timestamp_ms=media.timestamp, chunk=media.chunk)]

    # -- us -> Twilio -------------------------------------------------------------------------------------------

    def encode_audio(self, samples: np.ndarray) -> str:
        payload = base64.b64encode(encode_audio(samples, PCMU)).decode("ascii")
        return _SendMedia(stream_sid=self.stream_sid, media=_Payload(payload=payload)).wire()

    def encode_mark(self, name: str) -> str:
        return _SendMark(stream_sid=self.stream_sid, mark=_Name(name=name)).wire()

    def encode_clear(self) -> str:
        return _SendClear(stream_sid=self.stream_sid).wire()


def _json_object(message: WireMessage) -> dict:
    try:
        text = message.decode("utf-8") if isinstance(message, bytes) else message
        raw = loads_strict(text)
    except (ValueError, RecursionError) as exc:  # bad UTF-8, not JSON, NaN, nesting past the stack
        raise MalformedMessageError(f"not JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise MalformedMessageError(f"expected a JSON object, got {type(raw).__name__}")
    return raw


def _first_error(exc: ValidationError, event: object) -> str:
    error = exc.errors()[0]
    loc = error["loc"][1:] if error["loc"][:1] == (event,) else error["loc"]  # drop the union's tag
    where = ".".join(str(part) for part in loc)
    return f"{where}: {error['msg']}" if where else error["msg"]
