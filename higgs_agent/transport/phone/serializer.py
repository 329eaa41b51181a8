"""The carrier-neutral side of a phone call's media stream: typed messages in both directions and the
`MediaStreamSerializer` interface one class per carrier implements (Twilio today; Telnyx, Vonage or Plivo
would each be one more serializer, as Pipecat keeps its serializers apart from its transports).

A serializer knows the carrier's wire format (JSON shapes, audio coding, identifiers) and nothing of
sockets or sessions; the transport moves its strings or bytes; the call's output (`output.py`) decides when audio
goes out. Audio inside is float32 mono in [-1, 1] at the carrier's own rate (`wire_format.rate`).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np
from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

from higgs_agent.audio_formats import PCMU, AudioFormat, decode_audio
from higgs_agent.protocol.errors import loads_strict

WireMessage = str | bytes  # JSON text for Twilio; some carriers (Vonage) also send binary audio frames


class MediaStreamError(ValueError):
    """A message the serializer cannot use. The transport logs it and carries on with the call."""


class MalformedMessageError(MediaStreamError):
    """Not JSON, missing or mistyped fields, undecodable audio, or a message out of order."""


class UnknownEventError(MediaStreamError):
    """Well-formed, but an event this serializer does not know (a carrier may add new ones)."""

    def __init__(self, event: str) -> None:
        super().__init__(f"unknown media-stream event {event!r}")
        self.event = event


class UnsupportedMediaFormatError(MediaStreamError):
    """The call's audio coding is one we cannot decode (the transport should hang up: nothing will work)."""


class WrongStreamError(MediaStreamError):
    """A message for another stream than the one this connection started."""


# -- carrier -> us ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CallStarted:
    """The stream is open: who the call is and how its audio is coded."""

    stream_id: str
    call_id: str
    media_format: AudioFormat
    account_id: str | None = None
    tracks: tuple[str, ...] = ("inbound",)
    custom_parameters: Mapping[str, str] = field(default_factory=dict)  # e.g. TwiML <Parameter>s


@dataclass(frozen=True, eq=False)
class CallerAudio:
    """One chunk of the caller's audio, decoded. `timestamp_ms` (from the stream's start) and `chunk` (a
    running count) are the carrier's, when it sends them: a gap in them is audio the carrier dropped."""

    samples: np.ndarray  # float32 mono at sample_rate
    sample_rate: int
    timestamp_ms: int | None = None
    chunk: int | None = None


@dataclass(frozen=True)
class DtmfDigit:
    digit: str  # one of 0-9 * # A-D


@dataclass(frozen=True)
class MarkEchoed:
    """The carrier played everything sent before the mark of this name (or dropped it on a clear)."""

    name: str


@dataclass(frozen=True)
class CallStopped:
    reason: str | None = None


IncomingMessage = CallStarted | CallerAudio | DtmfDigit | MarkEchoed | CallStopped

# -- us -> carrier ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class OutgoingAudio:
    samples: np.ndarray  # float32 mono at the carrier's rate; the output sends one 20 ms frame each
    reply_id: str | None = None  # the reply it belongs to (for the transport's timing; not on the wire)


@dataclass(frozen=True)
class OutgoingMark:
    name: str


@dataclass(frozen=True)
class ClearAudio:
    """Drop every bit of audio the carrier holds but has not played yet (barge-in)."""


OutgoingMessage = OutgoingAudio | OutgoingMark | ClearAudio

DTMF_DIGITS = frozenset("0123456789*#ABCD")


@runtime_checkable
class MediaStreamSerializer(Protocol):
    """One carrier's media-stream wire format, for one connection (it remembers the stream it started)."""

    carrier: ClassVar[str]
    wire_format: ClassVar[AudioFormat]  # the audio coding and rate on the wire

    @property
    def started(self) -> CallStarted | None:
        """The call's start message, once it came."""

    def parse(self, message: WireMessage) -> list[IncomingMessage]:
        """One message from the carrier -> what it means (empty for messages with nothing for us, such as
        Twilio's `connected`). Raises a `MediaStreamError` subclass for anything malformed or unknown."""

    def encode_audio(self, samples: np.ndarray) -> WireMessage:
        """float32 samples at `wire_format.rate` -> the carrier's audio message (coded for the wire)."""

    def encode_mark(self, name: str) -> WireMessage: ...

    def encode_clear(self) -> WireMessage: ...


def encode(serializer: MediaStreamSerializer, message: OutgoingMessage) -> WireMessage:
    """An outgoing message (as the call's output emits them) -> what goes on the socket."""
    if isinstance(message, OutgoingAudio):
        return serializer.encode_audio(message.samples)
    if isinstance(message, OutgoingMark):
        return serializer.encode_mark(message.name)
    return serializer.encode_clear()


def json_object(message: WireMessage) -> dict:
    """A carrier's JSON text (or UTF-8 bytes) -> its object; MalformedMessageError otherwise."""
    try:
        text = message.decode("utf-8") if isinstance(message, bytes) else message
        raw = loads_strict(text)
    except (ValueError, RecursionError) as exc:  # bad UTF-8, not JSON, NaN, nesting past the stack
        raise MalformedMessageError(f"not JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise MalformedMessageError(f"expected a JSON object, got {type(raw).__name__}")
    return raw


def first_error(exc: ValidationError, event: object) -> str:
    """Where pydantic's first complaint is, and what it is (the discriminated union's tag left out)."""
    error = exc.errors()[0]
    loc = error["loc"][1:] if error["loc"][:1] == (event,) else error["loc"]  # drop the union's tag
    where = ".".join(str(part) for part in loc)
    return f"{where}: {error['msg']}" if where else error["msg"]


# -- what the carriers' JSON dialects share (single-word fields: the same in camelCase and snake_case) ----------

class MediaInfo(BaseModel):
    """A `media` message's body: the caller's audio, base64 G.711 mu-law."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    track: str = "inbound"
    chunk: int | None = None  # the carriers send these as strings: parsed as integers
    timestamp: int | None = None
    payload: str

    def caller_audio(self) -> list[IncomingMessage]:
        """The caller's audio; nothing for the agent's own track (streamed back with both tracks on)."""
        if not self.track.startswith("inbound"):
            return []
        try:
            coded = base64.b64decode(self.payload, validate=True)
        except (binascii.Error, ValueError):
            raise MalformedMessageError("media.payload is not valid base64") from None
        return [CallerAudio(samples=decode_audio(coded, PCMU), sample_rate=PCMU.rate, timestamp_ms=self.timestamp,
                            chunk=self.chunk)]


class DtmfInfo(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)
    track: str | None = None
    digit: str

    def key(self) -> DtmfDigit:
        digit = self.digit.upper()
        if digit not in DTMF_DIGITS:
            raise MalformedMessageError(f"dtmf digit {self.digit!r} is not one of 0-9 * # A-D")
        return DtmfDigit(digit)


class MarkInfo(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)
    name: str


class OutgoingPayload(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    payload: str


class OutgoingName(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str


class OneStream:
    """What every serializer of a JSON carrier keeps of its connection: the stream its `start` opened, and
    the check that a later message is for that stream. `parse` validates a message against the carrier's
    `messages` (a discriminated union on `event`) and hands it to `_meaning`."""

    carrier_name: ClassVar[str]
    messages: ClassVar[TypeAdapter]
    known_events: ClassVar[frozenset[str]]

    def __init__(self) -> None:
        self._started: CallStarted | None = None

    def parse(self, message: WireMessage) -> list[IncomingMessage]:
        raw = json_object(message)
        event = raw.get("event")
        if isinstance(event, str) and event not in self.known_events:
            raise UnknownEventError(event)
        try:
            parsed = self.messages.validate_python(raw)
        except ValidationError as exc:
            raise MalformedMessageError(f"malformed {self.carrier_name} {event or 'message'}: "
                                        f"{first_error(exc, event)}") from None
        return self._meaning(parsed)

    def _meaning(self, parsed: Any) -> list[IncomingMessage]:  # noqa: ANN401 - one of the carrier's models
        raise NotImplementedError

    @property
    def started(self) -> CallStarted | None:
        return self._started

    def _check_stream(self, stream_id: str | None, event: str) -> None:
        if self._started is None:
            raise MalformedMessageError(f"`{event}` before `start`")
        if stream_id is not None and stream_id != self._started.stream_id:
            raise WrongStreamError(f"`{event}` for stream {stream_id!r}, not this connection's "
                                   f"{self._started.stream_id!r}")
