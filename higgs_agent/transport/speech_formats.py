"""The audio formats of OpenAI's `/v1/audio/speech`, encoded while the speech is still being generated.

Each format is an FFmpeg muxer + encoder through PyAV, writing into a sink that hands out whatever bytes
the muxer has produced so far, so the HTTP body streams as the engine speaks. PyAV re-frames the engine's
chunks to each encoder's frame size (1152 samples for MP3, 1024 for AAC, 20 ms for Opus).
Streaming-friendly containers only: MP3 frames, Opus in Ogg with 20 ms pages (the default 1 s pages
would hold audio back), AAC in ADTS, FLAC, and WAV whose header sizes are left at 0xFFFFFFFF, as streamed
WAV must be (the total length is unknown when the header goes out).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import av
import numpy as np

from higgs_agent import SAMPLE_RATE
from higgs_agent.audio import float_to_pcm16


@dataclass(frozen=True)
class SpeechFormat:
    name: str
    media_type: str
    container: str | None  # None: raw PCM16, no encoder at all
    codec: str | None
    container_options: dict[str, str] = field(default_factory=dict)


FORMATS: dict[str, SpeechFormat] = {f.name: f for f in (
    SpeechFormat("mp3", "audio/mpeg", "mp3", "libmp3lame"),
    SpeechFormat("opus", "audio/ogg; codecs=opus", "ogg", "libopus", {"page_duration": "20000"}),
    SpeechFormat("aac", "audio/aac", "adts", "aac"),
    SpeechFormat("flac", "audio/flac", "flac", "flac"),
    SpeechFormat("wav", "audio/wav", "wav", "pcm_s16le"),
    SpeechFormat("pcm", f"audio/pcm;rate={SAMPLE_RATE};channels=1;encoding=s16le", None, None),
)}
DEFAULT_FORMAT = "mp3"  # OpenAI's default


class _Sink(io.RawIOBase):
    """A write-only, unseekable file: the muxer's output, collected until taken."""

    def __init__(self) -> None:
        super().__init__()
        self._chunks: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self._chunks.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        out = b"".join(self._chunks)
        self._chunks.clear()
        return out


class StreamingEncoder:
    """float32 mono 24 kHz chunks in, encoded bytes out as soon as the muxer writes them."""

    def __init__(self, fmt: SpeechFormat) -> None:
        self.format = fmt
        self._sink = _Sink()
        self._container = None
        self._stream = None
        if fmt.container is not None:
            self._container = av.open(self._sink, mode="w", format=fmt.container, options=fmt.container_options)
            self._stream = self._container.add_stream(fmt.codec, rate=SAMPLE_RATE, layout="mono")

    def encode(self, samples: np.ndarray) -> bytes:
        if self._container is None:
            return float_to_pcm16(samples)
        frame = av.AudioFrame.from_ndarray(np.asarray(samples, dtype=np.float32)[None], format="flt", layout="mono")
        frame.sample_rate = SAMPLE_RATE
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        return self._sink.take()

    def finish(self) -> bytes:
        """Flush the encoder and close the container (trailers, last frames)."""
        if self._container is None:
            return b""
        for packet in self._stream.encode(None):
            self._container.mux(packet)
        self._container.close()
        self._container = None
        return self._sink.take()

    def close(self) -> None:
        """Release the encoder without finishing (the client went away)."""
        if self._container is not None:
            self._container.close()
            self._container = None
