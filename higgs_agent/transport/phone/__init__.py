"""Phone calls through a carrier's media stream (Twilio Media Streams today).

- `serializer`: carrier-neutral message types and the `MediaStreamSerializer` interface (one per carrier).
- `twilio`: Twilio's serializer (JSON, G.711 mu-law at 8 kHz).
- `twiml`: the voice webhook's TwiML answer, Twilio signature checks, the calls we answered, the media
  socket's admission check.
- `pacer`: reply audio -> whole 20 ms frames sent at real time with a small lead, marks, clear.
"""

from higgs_agent.transport.phone.pacer import AudioPacer, ClearReport, PacerStoppedError, Playback, ReplyPlayback
from higgs_agent.transport.phone.serializer import (
    CallerAudio,
    CallStarted,
    CallStopped,
    ClearAudio,
    DtmfDigit,
    IncomingMessage,
    MalformedMessageError,
    MarkEchoed,
    MediaStreamError,
    MediaStreamSerializer,
    OutgoingAudio,
    OutgoingMark,
    OutgoingMessage,
    UnknownEventError,
    UnsupportedMediaFormatError,
    WrongStreamError,
    encode,
)
from higgs_agent.transport.phone.twilio import TwilioSerializer
from higgs_agent.transport.phone.twiml import (
    AnsweredCall,
    AnsweredCalls,
    MediaSocketGate,
    MediaSocketRefusedError,
    TwilioSettings,
    TwilioSignatures,
    connect_stream_twiml,
    voice_webhook_route,
)

__all__ = [
    "AnsweredCall", "AnsweredCalls", "AudioPacer", "CallStarted", "CallStopped", "CallerAudio", "ClearAudio",
    "ClearReport", "DtmfDigit", "IncomingMessage", "MalformedMessageError", "MarkEchoed", "MediaSocketGate",
    "MediaSocketRefusedError", "MediaStreamError", "MediaStreamSerializer", "OutgoingAudio", "OutgoingMark",
    "OutgoingMessage", "PacerStoppedError", "Playback", "ReplyPlayback", "TwilioSerializer", "TwilioSettings",
    "TwilioSignatures", "UnknownEventError", "UnsupportedMediaFormatError", "WrongStreamError",
    "connect_stream_twiml", "encode", "voice_webhook_route",
]
