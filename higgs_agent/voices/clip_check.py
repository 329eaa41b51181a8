"""Check an uploaded voice clip before it becomes a voice: decode it, then refuse what would clone badly.

Any common format decodes (WAV, FLAC, MP3, OGG/Vorbis/Opus, M4A/AAC, WebM: PyAV, i.e. FFmpeg; soundfile is the
fallback when PyAV cannot open the bytes) to mono float32, resampled to the codec's 24 kHz. Each refusal is a
`ClipError` with its own `code`:

- `file_too_large`: more than `max_bytes` (10 MiB, as OpenAI's voice uploads), checked before decoding;
- `not_audio`: nothing decodable, or no audio stream;
- `too_long`: longer than `hard_cap_s` (120 s; decoding stops there, so a small file that decodes to hours
  cannot fill memory), or longer than `max_s` (30 s) when trimming is not allowed. Trimming is allowed only
  when the caller will transcribe the kept audio itself: a transcript the user typed for the whole clip would
  no longer match a trimmed one. A trimmed clip is cut at the last pause before 30 s and says so in `notes`;
- `silent`: its peak is below -50 dBFS;
- `clipped`: more than 0.5 % of its sounding samples (|x| >= 0.01) sit at full scale (|x| >= 0.99), the flat
  tops of an overdriven recording, which the clone would reproduce as distortion;
- `too_short`: under 3 s of *speech*, as webrtcvad hears it (30 ms frames, mode 2), however long the file.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import av
import numpy as np
import soundfile as sf
import webrtcvad

from higgs_agent import SAMPLE_RATE
from higgs_agent.audio import float_to_pcm16, resample

VAD_RATE = 16_000
VAD_FRAME_MS = 30
VAD_MODE = 2  # the server's turn-detection default


@dataclass(frozen=True)
class ClipLimits:
    max_bytes: int = 10 << 20
    min_speech_s: float = 3.0
    max_s: float = 30.0
    hard_cap_s: float = 120.0
    silence_dbfs: float = -50.0
    full_scale: float = 0.99
    sounding_level: float = 0.01
    max_clipped_share: float = 0.005


class ClipError(ValueError):
    """A clip that cannot become a voice. `code` is stable (it goes into API error bodies); `param` is the
    request field at fault."""

    def __init__(self, code: str, message: str, param: str = "file") -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param


@dataclass(frozen=True)
class CheckedClip:
    audio: np.ndarray  # float32 mono at `sample_rate`
    sample_rate: int
    speech_s: float
    notes: tuple[str, ...] = ()

    @property
    def duration_s(self) -> float:
        return len(self.audio) / self.sample_rate


def voiced_frames(audio: np.ndarray, rate: int, mode: int = VAD_MODE, frame_ms: int = VAD_FRAME_MS) -> np.ndarray:
    """webrtcvad's speech decision for each whole `frame_ms` frame of `audio` (rate 8, 16, 32 or 48 kHz)."""
    vad = webrtcvad.Vad(mode)
    step = rate * frame_ms // 1000
    pcm = float_to_pcm16(audio)
    return np.array([vad.is_speech(pcm[2 * start:2 * (start + step)], rate)
                     for start in range(0, len(audio) - step + 1, step)], dtype=bool)


def decode_clip(data: bytes, limits: ClipLimits = ClipLimits()) -> tuple[np.ndarray, int]:
    """Bytes of any common audio format -> (mono float32 at the file's own rate, that rate); ClipError if
    they are not audio or decode to more than `hard_cap_s`."""
    try:
        return _decode_with_pyav(data, limits)
    except ClipError as error:
        if error.code != "not_audio":
            raise
    try:  # libsndfile reads a few things FFmpeg's probe misses (e.g. headerless quirks of old WAVs)
        audio, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except Exception:  # noqa: BLE001 - soundfile raises several types for undecodable bytes
        raise ClipError("not_audio", "the file is not audio in a format we can read (WAV, FLAC, MP3, OGG, "
                                     "Opus, M4A)") from None
    if len(audio) > limits.hard_cap_s * rate:
        raise _too_long_for_cap(limits)
    if len(audio) == 0:
        raise ClipError("not_audio", "the file holds no audio samples")
    return audio.mean(axis=1), int(rate)


def _decode_with_pyav(data: bytes, limits: ClipLimits) -> tuple[np.ndarray, int]:
    chunks: list[np.ndarray] = []
    decoded = 0
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            stream = next((s for s in container.streams if s.type == "audio"), None)
            if stream is None:
                raise ClipError("not_audio", "the file has no audio stream")
            rate = int(stream.codec_context.sample_rate or 0)
            # Only the sample format and channel layout change here; the rate stays, so clipping is judged
            # on the samples as recorded (a resampler's filter rounds off flat tops).
            converter = av.AudioResampler(format="fltp", layout="mono", rate=rate or None)
            for frame in container.decode(stream):
                rate = rate or frame.sample_rate
                for converted in converter.resample(frame):
                    chunks.append(converted.to_ndarray().reshape(-1))
                    decoded += converted.samples
                if decoded > limits.hard_cap_s * rate:
                    raise _too_long_for_cap(limits)
            for converted in converter.resample(None):
                chunks.append(converted.to_ndarray().reshape(-1))
    except av.FFmpegError:
        raise ClipError("not_audio", "the file is not audio in a format we can read") from None
    if not chunks or rate <= 0:
        raise ClipError("not_audio", "the file holds no audio samples")
    audio = np.concatenate(chunks).astype(np.float32)
    if not len(audio):
        raise ClipError("not_audio", "the file holds no audio samples")
    return audio, rate


def _too_long_for_cap(limits: ClipLimits) -> ClipError:
    return ClipError("too_long", f"the clip is longer than {limits.hard_cap_s:.0f} s; upload at most "
                                 f"{limits.max_s:.0f} s of speech")


def check_clip_bytes(data: bytes, *, allow_trim: bool, limits: ClipLimits = ClipLimits()) -> CheckedClip:
    """An uploaded file -> a clip fit for cloning (24 kHz mono), or ClipError. The size is checked first."""
    if len(data) > limits.max_bytes:
        raise ClipError("file_too_large", f"the file is {len(data)} bytes; the limit is {limits.max_bytes} "
                                          f"bytes ({limits.max_bytes >> 20} MiB)")
    if not data:
        raise ClipError("not_audio", "the file is empty")
    audio, rate = decode_clip(data, limits)
    return check_clip(audio, rate, allow_trim=allow_trim, limits=limits)


def check_clip(audio: np.ndarray, rate: int, *, allow_trim: bool, limits: ClipLimits = ClipLimits()) -> CheckedClip:
    """Decoded mono audio at `rate` -> a clip fit for cloning (24 kHz mono), or ClipError."""
    audio = np.asarray(audio, dtype=np.float32).reshape(-1)
    duration = len(audio) / rate
    if duration > limits.hard_cap_s:
        raise _too_long_for_cap(limits)
    peak = float(np.max(np.abs(audio))) if len(audio) else 0.0
    if peak < 10 ** (limits.silence_dbfs / 20):
        raise ClipError("silent", f"the clip is silent (peak {_dbfs(peak)}); record closer to the microphone")
    sounding = np.abs(audio) >= limits.sounding_level
    clipped = float(np.mean(np.abs(audio[sounding]) >= limits.full_scale))
    if clipped > limits.max_clipped_share:
        raise ClipError("clipped", f"the clip is clipped: {clipped:.1%} of its sound sits at full scale (at most "
                                   f"{limits.max_clipped_share:.1%}); record at a lower input level")
    notes: list[str] = []
    voiced = voiced_frames(resample(audio, rate, VAD_RATE), VAD_RATE)
    if duration > limits.max_s:
        if not allow_trim:
            raise ClipError("too_long", f"the clip is {duration:.1f} s long; the limit is {limits.max_s:.0f} s "
                                        "(or leave out the transcript and it is trimmed for you)")
        cut_s = _last_pause_before(voiced, limits.max_s)
        audio = audio[: int(cut_s * rate)]
        voiced = voiced[: int(cut_s * 1000) // VAD_FRAME_MS]
        notes.append(f"trimmed from {duration:.1f} s to the first {cut_s:.1f} s (cut at a pause)")
    speech_s = float(voiced.sum()) * VAD_FRAME_MS / 1000
    if speech_s < limits.min_speech_s:
        raise ClipError("too_short", f"the clip holds {speech_s:.1f} s of speech; at least "
                                     f"{limits.min_speech_s:.0f} s are needed")
    return CheckedClip(resample(audio, rate, SAMPLE_RATE), SAMPLE_RATE, speech_s, tuple(notes))


PAUSE_SEARCH_S = 5.0  # how far back from the limit a cut may move to land in a pause


def _last_pause_before(voiced: np.ndarray, limit_s: float) -> float:
    """Seconds to cut at: the start of the last unvoiced frame in the `PAUSE_SEARCH_S` before `limit_s`, so no
    word is cut in two; `limit_s` itself when the speech does not pause there."""
    frames = int(limit_s * 1000) // VAD_FRAME_MS
    earliest = max(1, frames - int(PAUSE_SEARCH_S * 1000) // VAD_FRAME_MS)
    pauses = np.flatnonzero(~voiced[earliest:frames])
    return float(earliest + pauses[-1]) * VAD_FRAME_MS / 1000 if len(pauses) else limit_s


def _dbfs(level: float) -> str:
    return "-inf dBFS" if level <= 0 else f"{20 * np.log10(level):.0f} dBFS"
