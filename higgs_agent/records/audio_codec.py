"""The records' audio on disk and over HTTP: FLAC (lossless, through libsndfile) for each stored chunk, WAV for
reading.

FLAC keeps every sample (a test can compare what was stored with what was sent) at about half the bytes of raw
PCM for speech, and next to nothing for silence, which is much of either side of a call. Each chunk is a whole
FLAC stream of its own, so any chunk decodes without the others (a call cut short by a kill keeps what it had).
libsndfile rather than PyAV: half the time per chunk (no container set up in Python), on the writer thread.
"""

from __future__ import annotations

import io

import numpy as np
import soundfile


def encode_flac(pcm: bytes, rate: int) -> bytes:
    """16-bit mono PCM (little-endian) as one FLAC stream."""
    buffer = io.BytesIO()
    soundfile.write(buffer, np.frombuffer(pcm, dtype="<i2"), rate, format="FLAC", subtype="PCM_16")
    return buffer.getvalue()


def decode_flac(data: bytes) -> np.ndarray:
    """A FLAC stream's samples, int16 mono."""
    samples, _ = soundfile.read(io.BytesIO(data), dtype="int16")
    return samples


def wav_bytes(samples: np.ndarray, rate: int) -> bytes:
    """int16 samples, (n,) mono or (n, channels), as a 16-bit WAV file."""
    buffer = io.BytesIO()
    soundfile.write(buffer, np.asarray(samples, dtype=np.int16), rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()
