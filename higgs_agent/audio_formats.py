"""Client audio formats of the OpenAI Realtime (GA) schema: parse, decode to float32, encode, resample in a stream.

A session names one format per direction: `{"type": "audio/pcm", "rate": 24000}` (PCM16 little-endian mono),
`{"type": "audio/pcmu"}` (G.711 mu-law, 8 kHz, what a phone call carries) or `{"type": "audio/pcma"}` (G.711
A-law, 8 kHz). Inside the server audio is float32 mono in [-1, 1]; this module is the one place that turns wire
bytes into that and back. G.711 uses the standard library's `audioop` (on Python 3.13+, where the standard
library dropped it, the `audioop-lts` package provides the same module).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import soxr

from higgs_agent.audio import float_to_pcm16, pcm16_to_float

with warnings.catch_warnings():  # 3.11/3.12 warn that audioop leaves the standard library in 3.13
    warnings.simplefilter("ignore", DeprecationWarning)
    try:
        import audioop
    except ImportError as exc:  # Python 3.13+ without the backport
        raise ImportError("G.711 audio needs the audioop module: on Python 3.13+ `pip install audioop-lts`") from exc

FormatType = Literal["audio/pcm", "audio/pcmu", "audio/pcma"]
PCM_RATES = (24_000, 16_000)  # the GA schema documents 24000; 16000 is ours, for clients that capture at 16 kHz
G711_RATE = 8_000
# The beta schema named formats by a plain string; accept those too so older clients keep working.
LEGACY_NAMES: dict[str, tuple[FormatType, int]] = {
    "pcm16": ("audio/pcm", 24_000),
    "g711_ulaw": ("audio/pcmu", G711_RATE),
    "g711_alaw": ("audio/pcma", G711_RATE),
}


class AudioFormatError(ValueError):
    """A format the server cannot use, or bytes that do not fit the format. `param` names the offending field."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class AudioFormat:
    type: FormatType = "audio/pcm"
    rate: int = 0  # 0: the type's own rate (24 kHz for audio/pcm, 8 kHz for G.711)

    def __post_init__(self) -> None:
        if self.rate == 0:
            object.__setattr__(self, "rate", 24_000 if self.type == "audio/pcm" else G711_RATE)
        if self.type == "audio/pcm":
            if self.rate not in PCM_RATES:
                raise AudioFormatError(f"audio/pcm rate must be one of {list(PCM_RATES)}, got {self.rate!r}",
                                       param="rate")
        elif self.type in ("audio/pcmu", "audio/pcma"):
            if self.rate != G711_RATE:
                raise AudioFormatError(f"{self.type} is {G711_RATE} Hz, got rate {self.rate!r}", param="rate")
        else:
            raise AudioFormatError(f"unknown audio format type {self.type!r}; expected one of "
                                   "'audio/pcm', 'audio/pcmu', 'audio/pcma'", param="type")

    @classmethod
    def from_session(cls, obj: dict[str, Any] | str | None, param: str = "format") -> AudioFormat:
        """A session's `format` object (or None for the default PCM16 24 kHz) -> AudioFormat.

        `param` is the path of the object in the client's event (e.g. "session.audio.input.format"); errors
        name `param + ".type"` or `param + ".rate"` so the `error` event points at the field.
        """
        if obj is None:
            return cls()
        if isinstance(obj, str):
            if obj in LEGACY_NAMES:
                return cls(*LEGACY_NAMES[obj])
            raise AudioFormatError(f"unknown audio format {obj!r}; send an object such as "
                                   '{"type": "audio/pcm", "rate": 24000}', param=param)
        if not isinstance(obj, dict):
            raise AudioFormatError(f"the audio format must be an object, got {type(obj).__name__}", param=param)
        kind = obj.get("type")
        if kind not in ("audio/pcm", "audio/pcmu", "audio/pcma"):
            raise AudioFormatError(f"unknown audio format type {kind!r}; expected one of 'audio/pcm', "
                                   "'audio/pcmu', 'audio/pcma'", param=f"{param}.type")
        default_rate = 24_000 if kind == "audio/pcm" else G711_RATE
        rate = obj.get("rate", default_rate)
        if rate is None:
            rate = default_rate
        if isinstance(rate, bool) or not isinstance(rate, int | float) or int(rate) != rate:
            raise AudioFormatError(f"rate must be an integer number of Hz, got {rate!r}", param=f"{param}.rate")
        try:
            return cls(kind, int(rate))
        except AudioFormatError as exc:
            raise AudioFormatError(str(exc), param=f"{param}.{exc.param}") from None

    def to_session(self) -> dict[str, Any]:
        if self.type == "audio/pcm":
            return {"type": self.type, "rate": self.rate}
        return {"type": self.type}

    @property
    def bytes_per_sample(self) -> int:
        return 2 if self.type == "audio/pcm" else 1

    def bytes_for_ms(self, ms: float) -> int:
        """Bytes that hold `ms` milliseconds (e.g. 160 for a 20 ms mu-law frame)."""
        return int(round(ms * self.rate / 1000)) * self.bytes_per_sample

    def duration_ms(self, num_bytes: int) -> float:
        return num_bytes / self.bytes_per_sample * 1000 / self.rate


PCM16_24K = AudioFormat("audio/pcm", 24_000)
PCMU = AudioFormat("audio/pcmu", G711_RATE)
PCMA = AudioFormat("audio/pcma", G711_RATE)


def decode_audio(data: bytes, fmt: AudioFormat) -> np.ndarray:
    """Wire bytes -> float32 mono in [-1, 1] at `fmt.rate`."""
    if fmt.type == "audio/pcm":
        if len(data) % 2:
            raise AudioFormatError(f"audio/pcm data must be a whole number of 16-bit samples; got {len(data)} "
                                   "bytes (an odd count)", param="audio")
        return pcm16_to_float(data)
    if fmt.type == "audio/pcmu":
        return pcm16_to_float(audioop.ulaw2lin(data, 2))
    return pcm16_to_float(audioop.alaw2lin(data, 2))


def encode_audio(samples: np.ndarray, fmt: AudioFormat, from_rate: int | None = None) -> bytes:
    """float32 mono at `fmt.rate` (or at `from_rate`, resampled here in one shot) -> wire bytes.

    For a stream of chunks resample with a `StreamResampler` first; one-shot resampling of each chunk on its
    own leaves edges at every chunk boundary.
    """
    samples = np.asarray(samples, dtype=np.float32)
    if from_rate is not None and from_rate != fmt.rate:
        samples = soxr.resample(samples, from_rate, fmt.rate, quality="HQ")
    pcm = float_to_pcm16(samples)
    if fmt.type == "audio/pcm":
        return pcm
    if fmt.type == "audio/pcmu":
        return audioop.lin2ulaw(pcm, 2)
    return audioop.lin2alaw(pcm, 2)


class StreamResampler:
    """Resample a stream chunk by chunk (soxr keeps the filter state between chunks); `flush()` at the end.

    The concatenated output matches one-shot resampling of the whole signal, time-aligned (soxr compensates its
    own filter delay), so sample positions in the output are `position * out_rate / in_rate`.
    """

    def __init__(self, in_rate: int, out_rate: int) -> None:
        self.in_rate = int(in_rate)
        self.out_rate = int(out_rate)
        self._stream = None if self.in_rate == self.out_rate else self._new_stream()

    def _new_stream(self) -> soxr.ResampleStream:
        return soxr.ResampleStream(self.in_rate, self.out_rate, 1, dtype="float32", quality="HQ")

    @property
    def passthrough(self) -> bool:
        return self._stream is None

    def push(self, chunk: np.ndarray) -> np.ndarray:
        chunk = np.asarray(chunk, dtype=np.float32)
        if self._stream is None:
            return chunk
        return self._stream.resample_chunk(chunk)

    __call__ = push

    def flush(self) -> np.ndarray:
        """The samples still inside the filter; the resampler then starts afresh for a new stream."""
        if self._stream is None:
            return np.zeros(0, dtype=np.float32)
        tail = self._stream.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
        self._stream = self._new_stream()
        return tail

    def reset(self) -> None:
        """Drop buffered input (e.g. on input_audio_buffer.clear)."""
        if self._stream is not None:
            self._stream = self._new_stream()
