"""Server-side turn detection (`turn_detection: {"type": "server_vad"}`) with WebRTC's voice activity detector.

`TurnDetector.push` takes microphone audio in chunks of any size, classifies it in fixed webrtcvad frames
(10, 20 or 30 ms) and reports where a turn starts and stops:

- a turn starts when at least 80 % of `min_speech_ms` is voiced, on top of the VAD's own hangover (a click reads
  as ~100 ms of speech: see BLIP_MS), so a click or a short blip does not start one; the onset is the first
  voiced frame of that run;
- it stops after `silence_duration_ms` of consecutive unvoiced frames; the end of speech is where that silence
  began;
- with `pause_ms` set, it reports each pause inside a turn once `pause_ms` of silence has passed (`SpeechPaused`,
  with the turn's audio so far), so a judge of the words and the voice can end the turn early (`end_turn`) —
  semantic turn detection — or have the transcript ready before the turn ends.

Times are milliseconds of input audio since the detector started (or since `reset(restart_clock=True)`), as in
OpenAI's `input_audio_buffer.speech_started` / `speech_stopped`. `SpeechStarted.audio_start_ms` is the onset
minus `prefix_padding_ms` (clamped at 0): the start of the audio the turn hands on. `SpeechStopped.audio` is
that audio, prefix included, up to the end of speech. OpenAI documents its `audio_end_ms` as including the
silence duration; ours is the end of speech (`detected_ms` is when the silence confirmed it), so the turn's
audio carries no half second of trailing silence into the ASR.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import webrtcvad

from higgs_agent.audio import float_to_pcm16

VAD_RATES = (8_000, 16_000, 32_000, 48_000)  # what webrtcvad accepts
FRAME_MS = (10, 20, 30)
START_RATIO = 0.8  # share of voiced frames in the last min_speech_ms that starts a turn
# A fresh webrtcvad calls the first ~60-110 ms of any noise floor speech while its noise model adapts (measured on
# white noise from -70 to -30 dBFS, all modes and frame sizes); its decisions over this much audio are ignored.
WARMUP_MS = 150
# webrtcvad holds its decision ("hangover") after any voiced frame: a 5 ms click reads as this many ms of speech
# (measured per mode, by frame size, on silence and on a -60 dBFS noise floor). A turn starts only on voiced
# audio beyond this, so a click cannot start one.
BLIP_MS = {0: {10: 110, 20: 120, 30: 150}, 1: {10: 110, 20: 120, 30: 150},
           2: {10: 90, 20: 100, 30: 120}, 3: {10: 90, 20: 100, 30: 120}}
# OpenAI's knobs that are not VAD parameters (the session acts on them) or that we do not implement yet.
_PASSTHROUGH_KEYS = {"type", "create_response", "interrupt_response", "idle_timeout_ms"}


class VadSettingsError(ValueError):
    """A `turn_detection` value we cannot use; `param` names the field."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


def threshold_to_aggressiveness(threshold: float) -> int:
    """OpenAI's `threshold` (0..1, default 0.5; higher needs louder, clearer speech) -> webrtcvad mode 0..3.

    The range is cut into four equal bands: [0, .25) -> 0, [.25, .5) -> 1, [.5, .75) -> 2, [.75, 1] -> 3, so the
    default 0.5 maps to our default mode 2 and a higher threshold filters out more non-speech.
    """
    return min(3, int(threshold * 4))


@dataclass
class VadSettings:
    aggressiveness: int = 2  # webrtcvad mode: 0 lets the most through as speech, 3 the least
    prefix_padding_ms: int = 300  # audio kept before the onset and handed on with the turn
    silence_duration_ms: int = 500  # unvoiced audio that ends a turn
    min_speech_ms: int = 100  # voiced audio needed to start a turn; shorter blips are ignored
    pause_ms: int | None = None  # silence that reports a pause (SpeechPaused); None: pauses are not reported

    def __post_init__(self) -> None:
        if self.pause_ms is not None:
            _check_int("pause_ms", self.pause_ms, 10, 10_000)
            self.pause_ms = int(self.pause_ms)
        _check_int("aggressiveness", self.aggressiveness, 0, 3)
        _check_int("prefix_padding_ms", self.prefix_padding_ms, 0, 10_000)
        _check_int("silence_duration_ms", self.silence_duration_ms, 10, 10_000)
        _check_int("min_speech_ms", self.min_speech_ms, 0, 10_000)
        for name in ("aggressiveness", "prefix_padding_ms", "silence_duration_ms", "min_speech_ms"):
            setattr(self, name, int(getattr(self, name)))  # 300.0 from JSON -> 300

    @classmethod
    def from_turn_detection(cls, obj: dict[str, Any], param: str = "turn_detection") -> VadSettings:
        """OpenAI's `turn_detection` object -> settings; missing fields keep their defaults.

        `threshold` maps to `aggressiveness` through `threshold_to_aggressiveness`; our extension key
        `aggressiveness` (0..3) wins over it. `min_speech_ms` is accepted as an extension too. Errors name the
        field as `param + "." + field`.
        """
        if not isinstance(obj, dict):
            raise VadSettingsError(f"turn_detection must be an object or null, got {type(obj).__name__}", param)
        kind = obj.get("type", "server_vad")
        if kind != "server_vad":
            raise VadSettingsError(f"turn_detection.type {kind!r} is not supported; use 'server_vad' "
                                   "(or turn_detection: null for manual commits)", f"{param}.type")
        fields: dict[str, Any] = {}
        threshold = obj.get("threshold")
        if threshold is not None:
            if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not 0 <= threshold <= 1:
                raise VadSettingsError(f"turn_detection.threshold must be a number from 0 to 1, got {threshold!r}",
                                       f"{param}.threshold")
            fields["aggressiveness"] = threshold_to_aggressiveness(float(threshold))
        for key in ("aggressiveness", "prefix_padding_ms", "silence_duration_ms", "min_speech_ms"):
            if obj.get(key) is not None:
                fields[key] = obj[key]
        try:
            return cls(**fields)
        except VadSettingsError as exc:
            raise VadSettingsError(str(exc), f"{param}.{exc.param}") from None

    def to_turn_detection(self) -> dict[str, Any]:
        """The settings as a `turn_detection` object for `session.updated` (threshold: the band's middle)."""
        return {"type": "server_vad", "threshold": (self.aggressiveness + 0.5) / 4,
                "prefix_padding_ms": self.prefix_padding_ms, "silence_duration_ms": self.silence_duration_ms,
                "aggressiveness": self.aggressiveness, "min_speech_ms": self.min_speech_ms}


def _check_int(name: str, value: Any, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value:
        raise VadSettingsError(f"turn_detection.{name} must be an integer, got {value!r}", name)
    if not low <= value <= high:
        raise VadSettingsError(f"turn_detection.{name} must be from {low} to {high}, got {value!r}", name)


@dataclass(frozen=True)
class SpeechStarted:
    audio_start_ms: int  # start of the turn's audio: onset minus prefix padding, at least 0
    speech_start_ms: int  # the onset itself (first voiced frame of the run that started the turn)


@dataclass(frozen=True)
class SpeechStopped:
    audio_end_ms: int  # end of speech: where the closing silence began
    audio: np.ndarray = field(repr=False)  # the turn's audio, [audio_start_ms, audio_end_ms), at the detector's rate
    audio_start_ms: int = 0
    speech_start_ms: int = 0
    detected_ms: int = 0  # input audio seen when the stop was decided (end of speech + silence_duration_ms)

    @property
    def start_ms(self) -> int:
        return self.audio_start_ms

    @property
    def end_ms(self) -> int:
        return self.audio_end_ms

    @property
    def duration_ms(self) -> int:
        return self.audio_end_ms - self.audio_start_ms

    def span(self, rate: int) -> tuple[int, int]:
        """[start, end) sample indices of the turn in a copy of the same input at `rate` Hz."""
        return self.audio_start_ms * rate // 1000, self.audio_end_ms * rate // 1000


@dataclass(frozen=True)
class SpeechPaused:
    """`pause_ms` of silence inside a turn: the turn may be over, or the speaker may go on."""

    audio_end_ms: int  # end of speech so far: where this silence began
    audio: np.ndarray = field(repr=False)  # the turn's audio so far, [audio_start_ms, audio_end_ms)
    audio_start_ms: int = 0
    pause: int = 0  # which pause of the detector's life; `end_turn(pause)` ends the turn only in this one


VadEvent = SpeechStarted | SpeechPaused | SpeechStopped


class TurnDetector:
    """Incremental server VAD: `push` chunks of float32 mono at `sample_rate`, get start/stop events back."""

    def __init__(self, settings: VadSettings | None = None, sample_rate: int = 16_000, frame_ms: int = 20,
                 origin_ms: int = 0) -> None:
        """`origin_ms`: where the clock starts, so a detector made mid-session (new settings) reports offsets on
        the session's timeline without remapping every event."""
        if sample_rate not in VAD_RATES:
            raise ValueError(f"webrtcvad needs one of {list(VAD_RATES)} Hz, got {sample_rate}; resample first")
        if frame_ms not in FRAME_MS:
            raise ValueError(f"frame_ms must be one of {list(FRAME_MS)}, got {frame_ms}")
        self.settings = settings or VadSettings()
        self.sample_rate = sample_rate
        self.frame_ms = frame_ms
        self.frame_samples = sample_rate * frame_ms // 1000
        self._samples_per_ms = sample_rate // 1000
        self._warmup_frames = math.ceil(WARMUP_MS / frame_ms)
        speech_frames = max(1, math.ceil(self.settings.min_speech_ms / frame_ms))
        blip_frames = math.ceil(BLIP_MS[self.settings.aggressiveness][frame_ms] / frame_ms)
        self._start_frames = speech_frames + blip_frames  # the window a start is decided on
        self._start_voiced = math.ceil(START_RATIO * speech_frames) + blip_frames  # voiced frames it needs
        self._stop_frames = max(1, math.ceil(self.settings.silence_duration_ms / frame_ms))
        pause_ms = self.settings.pause_ms
        self._pause_frames = math.ceil(pause_ms / frame_ms) if pause_ms is not None else None
        self._pauses = 0  # pauses reported so far
        self._prefix_samples = self.settings.prefix_padding_ms * self._samples_per_ms
        self._clock = int(origin_ms) * self._samples_per_ms  # samples classified or pending, on the clock
        self.reset()

    # -- state ---------------------------------------------------------------------------------------------

    def reset(self, restart_clock: bool = False) -> None:
        """Back to silence with a fresh VAD, dropping buffered audio (e.g. on input_audio_buffer.clear).

        The clock keeps running by default, so later offsets still count from the start of the session's audio;
        `restart_clock=True` starts it again at 0. The fresh VAD ignores its first WARMUP_MS, as at the start.
        """
        if restart_clock:
            self._clock = 0
        self._vad = webrtcvad.Vad(self.settings.aggressiveness)
        self._vad_frames = 0  # frames the current VAD has seen
        self._pending = np.zeros(0, dtype=np.float32)  # the partial frame carried to the next push
        self._pending_heard = self._pending  # the same, as the VAD judges it (see push)
        self._frames_done = self._clock  # samples classified so far (frame-aligned from here on)
        self._history: list[np.ndarray] = []  # classified audio from _history_start to _frames_done, in chunks
        self._history_start = self._frames_done
        self._recent: deque[bool] = deque(maxlen=self._start_frames)  # voiced flags of the last frames
        self._in_speech = False
        self._onset = 0  # sample of the onset of the current turn
        self._turn_start = 0  # onset minus prefix padding
        self._silent_frames = 0  # consecutive unvoiced frames in a turn

    @property
    def in_speech(self) -> bool:
        return self._in_speech

    @property
    def audio_ms(self) -> int:
        """Milliseconds of audio pushed since the clock started."""
        return self._clock // self._samples_per_ms

    def _ms(self, sample: int) -> int:
        return sample // self._samples_per_ms

    # -- processing ----------------------------------------------------------------------------------------

    def push(self, samples: np.ndarray, heard: np.ndarray | None = None) -> list[VadEvent]:
        """`samples` are what a turn keeps; `heard`, if given, the same stretch as the VAD should judge it (the
        noise-suppressed signal, sample for sample)."""
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        heard = samples if heard is None else np.asarray(heard, dtype=np.float32).reshape(-1)
        if len(heard) != len(samples):
            raise ValueError(f"heard has {len(heard)} samples for {len(samples)}")
        self._clock += len(samples)
        data = np.concatenate([self._pending, samples]) if len(self._pending) else samples
        judged = np.concatenate([self._pending_heard, heard]) if len(self._pending_heard) else heard
        whole = len(data) - len(data) % self.frame_samples
        self._pending = data[whole:].copy()
        self._pending_heard = judged[whole:].copy()
        if whole == 0:
            return []
        self._history.append(data[:whole])
        pcm = float_to_pcm16(judged[:whole])
        events: list[VadEvent] = []
        step = self.frame_samples * 2
        for offset in range(0, len(pcm), step):
            voiced = self._vad.is_speech(pcm[offset:offset + step], self.sample_rate)
            self._vad_frames += 1
            if self._vad_frames <= self._warmup_frames:
                voiced = False
            self._frames_done += self.frame_samples
            event = self._step(voiced)
            if event is not None:
                events.append(event)
        if not self._in_speech:  # keep only what a turn starting later could reach back to
            self._trim_history(self._frames_done - self._prefix_samples - self._start_frames * self.frame_samples)
        return events

    def _history_audio(self, start: int, end: int) -> np.ndarray:
        """Classified input from sample `start` to `end` (both counted on the detector's clock)."""
        if len(self._history) > 1:
            self._history = [np.concatenate(self._history)]
        held = self._history[0] if self._history else np.zeros(0, dtype=np.float32)
        return held[start - self._history_start:end - self._history_start].copy()

    def _trim_history(self, keep_from: int) -> None:
        if keep_from > self._history_start:
            self._history = [self._history_audio(keep_from, self._frames_done)]
            self._history_start = keep_from

    def _step(self, voiced: bool) -> VadEvent | None:
        frame_end = self._frames_done
        if not self._in_speech:
            self._recent.append(voiced)
            if sum(self._recent) < self._start_voiced:
                return None
            first_voiced = next(i for i, flag in enumerate(self._recent) if flag)
            self._onset = frame_end - (len(self._recent) - first_voiced) * self.frame_samples
            self._turn_start = max(0, self._onset - self._prefix_samples, self._history_start)
            self._in_speech = True
            self._silent_frames = 0
            return SpeechStarted(self._ms(self._turn_start), self._ms(self._onset))
        if voiced:
            self._silent_frames = 0
            return None
        self._silent_frames += 1
        if self._silent_frames == self._pause_frames and self._pause_frames < self._stop_frames:
            self._pauses += 1
            speech_end = frame_end - self._silent_frames * self.frame_samples
            return SpeechPaused(self._ms(speech_end), self._history_audio(self._turn_start, speech_end),
                                self._ms(self._turn_start), self._pauses)
        if self._silent_frames < self._stop_frames:
            return None
        return self._stop(frame_end - self._silent_frames * self.frame_samples, frame_end)

    def speech_span(self) -> tuple[int, int] | None:
        """While in a turn: its [audio_start_ms, end of its last voiced frame) on the clock (no copy); else None."""
        if not self._in_speech:
            return None
        return self._ms(self._turn_start), self._ms(self._frames_done - self._silent_frames * self.frame_samples)

    def speech_so_far(self) -> np.ndarray | None:
        """While in a turn: its audio over `speech_span` (a copy); else None."""
        if not self._in_speech:
            return None
        end = self._frames_done - self._silent_frames * self.frame_samples
        return self._history_audio(self._turn_start, end)

    def end_turn(self, pause: int) -> SpeechStopped | None:
        """End the turn at pause number `pause` (its judge found the turn complete); None when the speaker has
        gone on since (or the turn ended otherwise): a late verdict never cuts new speech."""
        if not self._in_speech or pause != self._pauses or self._pause_frames is None \
                or self._silent_frames < self._pause_frames:
            return None
        return self.force_stop()

    def _stop(self, speech_end: int, detected: int) -> SpeechStopped:
        audio = self._history_audio(self._turn_start, speech_end)
        event = SpeechStopped(self._ms(speech_end), audio, self._ms(self._turn_start), self._ms(self._onset),
                              self._ms(detected))
        self._in_speech = False
        self._recent.clear()
        self._silent_frames = 0
        # Trim now: the next turn's prefix can reach back into the closing silence but not past the end of speech.
        self._trim_history(max(speech_end, self._frames_done - self._prefix_samples
                               - self._start_frames * self.frame_samples))
        return event

    def force_stop(self) -> SpeechStopped | None:
        """End the current turn now (e.g. a client's input_audio_buffer.commit); None when not in speech.

        The turn ends at the last classified frame, trailing unvoiced frames excluded; a pending partial frame
        is left for the next push.
        """
        if not self._in_speech:
            return None
        return self._stop(self._frames_done - self._silent_frames * self.frame_samples, self._frames_done)
