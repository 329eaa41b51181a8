"""Noise suppression of the caller's audio (`audio.input.noise_reduction`): what the VAD judges (input_audio.py
keeps the original for Whisper, which transcribes it better: `bench noise`).

RNNoise (Xiph's recurrent suppressor, the open one Pipecat's RNNoiseFilter uses), through pyrnnoise, whose
shared library carries the model's weights: nothing to download. It works on 10 ms frames at 48 kHz; the
16 kHz turn audio is resampled up and back with soxr's quick (cubic) stream, as Pipecat does, because its
high-quality filters hold back ~30 ms each way, which the VAD would then hear late.

`near_field` and `far_field` run the same model (RNNoise has one); `strength` is the knob: the output is
`strength * suppressed + (1 - strength) * original`, so strength s limits the suppression to
20*log10(1/(1-s)) dB (1, the default: no limit; 0.9: 20 dB).

`NoiseSuppressor.push` returns exactly as many samples as it is given, `lag_samples` (31 ms) late, so the
session's audio clock stays a count of input samples; its output does not depend on how the input was chunked.
It runs on the caller of `push` (the event loop): ~1 ms of CPU per 20 ms chunk.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import soxr

NoiseType = Literal["near_field", "far_field"]
NOISE_TYPES: tuple[str, ...] = ("near_field", "far_field")
MODEL_RATE = 48_000
_MODEL_DELAY = 960  # samples at 48 kHz by which RNNoise's output lags its input (its window overlap)
_RESAMPLER_SLACK = 48  # samples at 48 kHz soxr's quick stream may hold back (measured: 5)
_SCALE = 32768.0  # RNNoise takes 16-bit sample values as floats


@dataclass(frozen=True)
class NoiseReduction:
    """A session's noise suppression: `type` as OpenAI names it, and `strength` from 0 (none) to 1 (full)."""

    type: NoiseType = "near_field"
    strength: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "strength": self.strength}

    @staticmethod
    def from_flag(value: str) -> NoiseReduction | None:
        """`serve --noise-reduction off|near_field|far_field`."""
        if value == "off":
            return None
        if value not in NOISE_TYPES:
            raise ValueError(f"noise reduction must be off, {' or '.join(NOISE_TYPES)}, got {value!r}")
        return NoiseReduction(value)  # type: ignore[arg-type]


def load_rnnoise() -> Any:  # noqa: ANN401 - pyrnnoise's ctypes module
    """pyrnnoise's module (its first import takes ~250 ms, through audiolab: serve does it before serving, so
    no session's first suppressed chunk waits for it on the event loop)."""
    from pyrnnoise import rnnoise

    return rnnoise


class NoiseSuppressor:
    """One session's stream: float samples at `rate` in, the same number out, `lag_samples` later."""

    def __init__(self, strength: float = 1.0, rate: int = 16_000) -> None:
        if not 0.0 <= strength <= 1.0:
            raise ValueError(f"strength must be from 0 to 1, got {strength}")
        self.rate = rate
        self.strength = strength
        lib = load_rnnoise()
        self._lib = lib.lib
        self._frame = int(lib.FRAME_SIZE)
        self._state = lib.create()
        self._up = soxr.ResampleStream(rate, MODEL_RATE, 1, dtype="float32", quality="QQ")
        self._down = soxr.ResampleStream(MODEL_RATE, rate, 1, dtype="float32", quality="QQ")
        self._pending = np.zeros(0, dtype=np.float32)  # 48 kHz input short of a whole frame
        self._dry = np.zeros(_MODEL_DELAY, dtype=np.float32)  # the input RNNoise's output lags, for the mix
        # Room for a frame still filling and the quick resampler's few held samples: the output never runs short.
        held = -(-(self._frame + _RESAMPLER_SLACK) * rate // MODEL_RATE)
        per_ms = max(1, rate // 1000)  # the whole lag a whole number of ms, for clocks kept in ms
        self.delay_samples = held + -(held + _MODEL_DELAY * rate // MODEL_RATE) % per_ms
        self.underruns = 0  # times the output ran short anyway (zeros were inserted): 0, or delay_samples is wrong
        self._out = np.zeros(self.delay_samples, dtype=np.float32)

    @property
    def lag_samples(self) -> int:
        """How late a sound comes out, in samples at `rate`: the fixed hold plus RNNoise's own lag."""
        return self.delay_samples + _MODEL_DELAY * self.rate // MODEL_RATE

    @property
    def delay_ms(self) -> float:
        return self.lag_samples * 1000 / self.rate

    def push(self, samples: np.ndarray) -> np.ndarray:
        samples = np.asarray(samples, dtype=np.float32)
        if not len(samples):
            return samples
        self._out = np.concatenate([self._out, self._down.resample_chunk(self._suppress(
            self._up.resample_chunk(samples)))])
        if len(self._out) < len(samples):  # cannot happen with delay_samples as set; never hand back less
            self.underruns += 1
            self._out = np.concatenate([np.zeros(len(samples) - len(self._out), dtype=np.float32), self._out])
        out, self._out = self._out[:len(samples)], self._out[len(samples):]
        return out

    def flush(self) -> np.ndarray:
        """The audio still inside, `lag_samples` of it, pushed out by silence (for a whole recording suppressed at
        once; a session needs none: its turns keep the unsuppressed original). The stream goes on after it, its
        noise estimate kept."""
        return self.push(np.zeros(self.lag_samples, dtype=np.float32))

    def aligned(self) -> DelayLine:
        """A delay line that keeps other audio in step with this suppressor's output."""
        return DelayLine(self.lag_samples)

    def close(self) -> None:
        if getattr(self, "_state", None) is not None:  # (a refused strength never made one)
            self._lib.rnnoise_destroy(self._state)
            self._state = None

    def __del__(self) -> None:
        self.close()

    def _suppress(self, audio: np.ndarray) -> np.ndarray:
        """Whole 48 kHz frames through RNNoise (the rest waits for the next push), mixed by strength."""
        audio = np.concatenate([self._pending, audio]) if len(self._pending) else audio
        whole = len(audio) // self._frame * self._frame
        self._pending = audio[whole:].copy()
        if not whole:
            return np.zeros(0, dtype=np.float32)
        frames = np.ascontiguousarray(audio[:whole] * _SCALE, dtype=np.float32)
        wet = np.empty_like(frames)
        pointer = ctypes.POINTER(ctypes.c_float)
        for start in range(0, whole, self._frame):  # the library releases the GIL for each call
            self._lib.rnnoise_process_frame(self._state, wet[start:].ctypes.data_as(pointer),
                                            frames[start:].ctypes.data_as(pointer))
        wet /= _SCALE
        dry = np.concatenate([self._dry, audio[:whole]])
        self._dry = dry[-_MODEL_DELAY:].copy()  # kept even at full strength: a session may lower it later
        if self.strength >= 1.0:
            return wet
        return self.strength * wet + (1.0 - self.strength) * dry[:whole]


class DelayLine:
    """Samples out as they came in, `samples` later: the original audio kept in step with the suppressed."""

    def __init__(self, samples: int) -> None:
        self._held = np.zeros(samples, dtype=np.float32)

    def push(self, samples: np.ndarray) -> np.ndarray:
        joined = np.concatenate([self._held, np.asarray(samples, dtype=np.float32)])
        out, self._held = joined[:len(samples)], joined[len(samples):]
        return out
