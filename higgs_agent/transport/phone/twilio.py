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
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter
from pydantic.alias_generators import to_camel

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


class _OnStream(_Inbound):
    """What every message on a stream may carry besides its own body."""

    sequence_number: int | None = None
    stream_sid: str | None = None


class _Start(_OnStream):
    event: Literal["start"]
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


class _StopInfo(_Inbound):
    account_sid: str | None = None
    call_sid: str | None = None
    reason: str | None = None


class _Stop(_OnStream):
    event: Literal["stop"]
    stop: _StopInfo | None = None


_TwilioMessage = TypeAdapter(Annotated[_Connected | _Start | _Media | _Dtmf | _Mark | _Stop,
                                       Field(discriminator="event")])
_KNOWN_EVENTS = frozenset({"connected", "start", "media", "dtmf", "mark", "stop"})


class _Outbound(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)

    def wire(self) -> str:
        return self.model_dump_json(by_alias=True)


class _SendMedia(_Outbound):
    event: Literal["media"] = "media"
    stream_sid: str
    media: OutgoingPayload


class _SendMark(_Outbound):
    event: Literal["mark"] = "mark"
    stream_sid: str
    mark: OutgoingName


class _SendClear(_Outbound):
    event: Literal["clear"] = "clear"
    stream_sid: str


class TwilioSerializer(OneStream):
    """Twilio's Media Streams protocol for one WebSocket connection (one stream)."""

    carrier: ClassVar[str] = "twilio"
    wire_format: ClassVar[AudioFormat] = PCMU
    carrier_name: ClassVar[str] = "Twilio"
    messages: ClassVar[TypeAdapter] = _TwilioMessage
    known_events: ClassVar[frozenset[str]] = _KNOWN_EVENTS

    @property
    def stream_sid(self) -> str:
        if self._started is None:
            raise MalformedMessageError("no `start` message yet: the streamSid to send to is unknown")
        return self._started.stream_id

    # -- Twilio -> us -------------------------------------------------------------------------------------------

    def _meaning(self, parsed: Any) -> list[IncomingMessage]:  # noqa: ANN401 - one of the models above
        if isinstance(parsed, _Connected):
            return []
        if isinstance(parsed, _Start):
            return [self._start(parsed)]
        self._check_stream(parsed.stream_sid, parsed.event)
        if isinstance(parsed, _Media):
            return parsed.media.caller_audio()
        if isinstance(parsed, _Dtmf):
            return [parsed.dtmf.key()]
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


    # -- us -> Twilio -------------------------------------------------------------------------------------------

    def encode_audio(self, samples: np.ndarray) -> str:
        payload = base64.b64encode(encode_audio(samples, PCMU)).decode("ascii")
        return _SendMedia(stream_sid=self.stream_sid, media=OutgoingPayload(payload=payload)).wire()

    def encode_mark(self, name: str) -> str:
        return _SendMark(stream_sid=self.stream_sid, mark=OutgoingName(name=name)).wire()

    def encode_clear(self) -> str:
        return _SendClear(stream_sid=self.stream_sid).wire()
