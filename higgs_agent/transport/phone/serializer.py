"""The carrier-neutral side of a phone call's media stream: typed messages in both directions and the
`MediaStreamSerializer` interface one class per carrier implements (Twilio today; Telnyx, Vonage or Plivo
would each be one more serializer, as Pipecat keeps its serializers apart from its transports).

A serializer knows the carrier's wire format (JSON shapes, audio coding, identifiers) and nothing of
sockets or sessions; the transport moves its strings or bytes; the pacer (`pacer.py`) decides when audio
goes out. Audio inside is float32 mono in [-1, 1] at the carrier's own rate (`wire_format.rate`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar, Protocol, runtime_checkable

import numpy as np

from higgs_agent.audio_formats import AudioFormat

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
    samples: np.ndarray  # float32 mono at the carrier's rate; the pacer sends one 20 ms frame each
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
    """An outgoing message (as the pacer emits them) -> what goes on the socket."""
    if isinstance(message, OutgoingAudio):
        return serializer.encode_audio(message.samples)
    if isinstance(message, OutgoingMark):
        return serializer.encode_mark(message.name)
    return serializer.encode_clear()
