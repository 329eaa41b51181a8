"""Audio helpers shared by the CLI, engine and transports: WAV I/O, PCM16 conversion, resampling (soxr)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from higgs_agent import SAMPLE_RATE


def read_wav(path: str | Path, rate: int = SAMPLE_RATE) -> np.ndarray:
    """Read any soundfile-readable file as mono float32 at `rate` Hz."""
    data, file_rate = sf.read(str(path), dtype="float32", always_2d=True)
    return resample(data.mean(axis=1), file_rate, rate)


def write_wav(path: str | Path, audio: np.ndarray, rate: int = SAMPLE_RATE) -> None:
    sf.write(str(path), np.asarray(audio, dtype=np.float32), rate, subtype="PCM_16")


def resample(audio: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    if from_rate == to_rate:
        return np.asarray(audio, dtype=np.float32)
    return soxr.resample(np.asarray(audio, dtype=np.float32), from_rate, to_rate, quality="HQ")


def float_to_pcm16(audio: np.ndarray) -> bytes:
    clipped = np.clip(np.asarray(audio, dtype=np.float32), -1.0, 1.0)
    return (clipped * 32767.0).round().astype("<i2").tobytes()


def pcm16_to_float(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0
