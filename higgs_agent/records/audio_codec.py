"""The records' audio on disk and over HTTP: FLAC (lossless, through PyAV) for each stored chunk, WAV for reading.

FLAC keeps every sample (a test can compare what was stored with what was sent) at about half the bytes of raw
PCM for speech, and next to nothing for silence, which is much of either side of a call. Each chunk is a whole
FLAC stream of its own, so any chunk decodes without the others (a call cut short by a kill keeps what it had).
"""

from __future__ import annotations

import io
import wave

import av
import numpy as np


def encode_flac(pcm: bytes, rate: int) -> bytes:
    """16-bit mono PCM (little-endian) as one FLAC stream."""
    samples = np.frombuffer(pcm, dtype="<i2")
    buffer = io.BytesIO()
    # no 8 KiB padding block after the header (the muxer's default, room for tags to be edited in place)
    with av.open(buffer, "w", format="flac", options={"metadata_header_padding": "0"}) as container:
        stream = container.add_stream("flac", rate=rate, layout="mono")
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = rate
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    return buffer.getvalue()


def decode_flac(data: bytes) -> np.ndarray:
    """A FLAC stream's samples, int16 mono."""
    with av.open(io.BytesIO(data)) as container:
        frames = [frame.to_ndarray().reshape(-1) for frame in container.decode(audio=0)]
    return np.concatenate(frames).astype(np.int16) if frames else np.zeros(0, dtype=np.int16)


def wav_bytes(samples: np.ndarray, rate: int) -> bytes:
    """int16 samples, (n,) mono or (n, channels), as a WAV file."""
    frames = np.ascontiguousarray(samples, dtype="<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1 if frames.ndim == 1 else frames.shape[1])
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(frames.tobytes())
    return buffer.getvalue()
