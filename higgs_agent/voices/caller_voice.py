"""The caller's own voice, for replies in it: their clean speech, gathered at its wire rate across turns.

Two pieces, both pure logic (the session owns the codec and the transcriber):

- `WireAudioTape` keeps the last minutes of the caller's decoded audio at its wire rate (24 kHz PCM, 16 kHz
  PCM, 8 kHz G.711), on the session's audio clock, so a turn's audio can be cut out by the turn's
  `start_ms`/`end_ms` without the 16 kHz round trip the VAD and ASR path takes.
- `CallerVoice` takes each turn's wire-rate audio and transcript, keeps its speech only (webrtcvad, 30 ms
  frames, each run padded by 60 ms; pauses between runs shortened to 200 ms of their own room tone, so with
  the padding and webrtcvad's hangover no pause is longer than about 0.45 s) and gathers turns until there
  are `target_s` (10 s) of speech. Turns are kept whole while the total stays
  within `max_s` (12 s), so the joined transcripts match the audio word for word; the turn that would pass
  `max_s` is cut (in a quiet 30 ms) to fill the reference up to `target_s`, and its words are then unknown
  (`CallerClip.transcript is None`: the session transcribes the clip itself, once).
  Once the reference is full it no longer changes: the voice stays steady and costs no more encoding.

A re-clone is due (`take_due_clip`) at `min_s` (3 s) of speech, and after that each time the speech has
grown by `growth_s` (3 s) or the reference became full. The session then encodes the clip (any rate:
`encode_voice` resamples to 24 kHz) and uses it as the voice. Keep the reference whole: `VoiceReference.clipped`
(agent/speaker.py) keeps only the last 10 s of a reference, which would part it from its transcript.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from higgs_agent.audio import resample
from higgs_agent.voices.clip_check import VAD_FRAME_MS, VAD_MODE, voiced_frames

VAD_RATES = (8_000, 16_000, 32_000, 48_000)
PAD_FRAMES = 2  # 60 ms around each voiced run: webrtcvad's frames clip word onsets and tails otherwise
MAX_PAUSE_MS = 200  # longer pauses inside a turn are shortened to this (half from each end)
MIN_TURN_SPEECH_S = 0.5  # shorter turns ("uh", a cough) add nothing to a voice


class WireAudioTape:
    """The caller's audio at its wire rate, addressable by session milliseconds; audio older than `keep_s`
    is forgotten. Push what the transport decoded (float32 mono at `rate`), in order, from `origin_ms` on."""

    def __init__(self, rate: int, keep_s: float = 120.0, origin_ms: int = 0) -> None:
        self.rate = int(rate)
        self.keep_samples = int(keep_s * self.rate)
        self._chunks: deque[tuple[int, np.ndarray]] = deque()  # (sample number of its first sample, samples)
        self._next = origin_ms * self.rate // 1000  # the sample number after the last one pushed

    @property
    def end_ms(self) -> int:
        return self._next * 1000 // self.rate

    def push(self, samples: np.ndarray) -> None:
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        if not len(samples):
            return
        self._chunks.append((self._next, samples))
        self._next += len(samples)
        while self._chunks[0][0] + len(self._chunks[0][1]) <= self._next - self.keep_samples:
            self._chunks.popleft()

    def slice_ms(self, start_ms: int, end_ms: int) -> np.ndarray:
        """The audio between two session times (what is still kept of it)."""
        first, last = start_ms * self.rate // 1000, end_ms * self.rate // 1000
        parts = [chunk[max(0, first - at):max(0, last - at)] for at, chunk in self._chunks
                 if at < last and at + len(chunk) > first]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)


@dataclass(frozen=True)
class CallerClip:
    audio: np.ndarray  # float32 mono at `rate`: the caller's speech, turn after turn
    rate: int
    transcript: str | None  # the words of `audio`; None when a turn was cut (transcribe the clip)
    turns: int

    @property
    def speech_s(self) -> float:
        return len(self.audio) / self.rate


@dataclass(frozen=True)
class _Turn:
    audio: np.ndarray
    rate: int
    transcript: str | None

    @property
    def seconds(self) -> float:
        return len(self.audio) / self.rate


def speech_only(audio: np.ndarray, rate: int, mode: int = VAD_MODE) -> np.ndarray:
    """The speech of one turn at its own rate: voiced runs (padded), with long pauses shortened."""
    audio = np.asarray(audio, dtype=np.float32).reshape(-1)
    vad_rate = rate if rate in VAD_RATES else 16_000  # webrtcvad has no 24 kHz: decide on a copy
    voiced = voiced_frames(audio if vad_rate == rate else resample(audio, rate, vad_rate), vad_rate, mode)
    if not voiced.any():
        return np.zeros(0, dtype=np.float32)
    padded = voiced.copy()
    for shift in range(1, PAD_FRAMES + 1):
        padded[:-shift] |= voiced[shift:]
        padded[shift:] |= voiced[:-shift]
    frame = rate * VAD_FRAME_MS // 1000
    edges = np.flatnonzero(np.diff(np.concatenate([[0], padded.astype(np.int8), [0]])))
    runs = list(zip(edges[::2] * frame, np.minimum(edges[1::2] * frame, len(audio)), strict=True))
    half_pause = rate * MAX_PAUSE_MS // 2000
    pieces = [audio[runs[0][0]:runs[0][1]]]
    for (_, previous_end), (start, end) in zip(runs, runs[1:]):
        gap = audio[previous_end:start]
        pieces.append(gap if len(gap) <= 2 * half_pause else np.concatenate([gap[:half_pause], gap[-half_pause:]]))
        pieces.append(audio[start:end])
    return np.concatenate(pieces)


class CallerVoice:
    def __init__(self, target_s: float = 10.0, max_s: float = 12.0, min_s: float = 3.0, growth_s: float = 3.0,
                 vad_mode: int = VAD_MODE) -> None:
        if not 0 < min_s <= target_s <= max_s:
            raise ValueError("need 0 < min_s <= target_s <= max_s")
        self.target_s, self.max_s, self.min_s, self.growth_s = target_s, max_s, min_s, growth_s
        self.vad_mode = vad_mode
        self._turns: list[_Turn] = []
        self.full = False
        self._cloned_s = 0.0  # speech in the last clip taken
        self._cloned_full = False

    @property
    def speech_s(self) -> float:
        return sum(turn.seconds for turn in self._turns)

    def add_turn(self, audio: np.ndarray, rate: int, transcript: str | None) -> bool:
        """Add one turn of the caller's audio at its wire rate; True if it was kept."""
        if self.full:
            return False
        speech = speech_only(audio, rate, self.vad_mode)
        if len(speech) < MIN_TURN_SPEECH_S * rate:
            return False
        have = self.speech_s
        cut = have + len(speech) / rate > self.max_s
        if cut:
            room = self.target_s - have
            if room < MIN_TURN_SPEECH_S:
                self.full = True
                return False
            speech, transcript = self._cut(speech, rate, room), None  # its words are no longer known
        self._turns.append(_Turn(speech, rate, " ".join(transcript.split()) if transcript is not None else None))
        self.full = cut or self.speech_s >= self.target_s  # a cut turn filled what room there was
        return True

    def _cut(self, speech: np.ndarray, rate: int, seconds: float) -> np.ndarray:
        """The first `seconds` of a turn's speech, cut in the quietest 30 ms of the 0.6 s before that."""
        end = int(seconds * rate)
        frame = rate * VAD_FRAME_MS // 1000
        start = max(0, end - 20 * frame)
        frames = (end - start) // frame
        if frames < 2:
            return speech[:end]
        energy = (speech[start:start + frames * frame].reshape(frames, frame) ** 2).mean(axis=1)
        return speech[:start + int(np.argmin(energy)) * frame + frame // 2]

    @property
    def reclone_due(self) -> bool:
        speech = self.speech_s
        if speech < self.min_s:
            return False
        return (self._cloned_s == 0.0 or speech - self._cloned_s >= self.growth_s
                or (self.full and not self._cloned_full and speech > self._cloned_s))

    def clip(self) -> CallerClip | None:
        """Everything gathered so far, or None before any speech."""
        if not self._turns:
            return None
        rate = max(turn.rate for turn in self._turns)  # a format change mid-call: lift the rest to the best
        audio = np.concatenate([resample(turn.audio, turn.rate, rate) for turn in self._turns])
        words = [turn.transcript for turn in self._turns]
        transcript = None if any(w is None for w in words) else " ".join(w for w in words if w)
        return CallerClip(audio=audio, rate=rate, transcript=transcript, turns=len(self._turns))

    def take_due_clip(self) -> CallerClip | None:
        """The clip to clone from if a re-clone is due (and note it as cloned), else None."""
        if not self.reclone_due:
            return None
        clip = self.clip()
        self._cloned_s, self._cloned_full = self.speech_s, self.full
        return clip
