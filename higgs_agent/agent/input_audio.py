"""The caller's audio on its way in: wire format -> 16 kHz float (what VAD and ASR want) -> turns.

With `noise_reduction` set, the VAD judges the noise-suppressed signal (agent/noise.py) while the turn keeps
the original, delayed to stay in step with it sample for sample: Whisper transcribes the original, because
RNNoise's output raised tiny.en's word error rate in every condition measured (`bench noise`), while the
suppressed signal is what ends turns in noise and keeps noise from barging in.

Keeps the input buffer for manual commits and runs the server VAD when it is on. Transcription and the
analyzers start from the 16 kHz turn audio; the caller's voice is cloned from the same audio at its wire rate
(`tape`: 24 kHz PCM keeps the band a 16 kHz round trip would cut), never suppressed: Higgs copies the
reference's sound, and would copy the suppressor's thinned, gated speech with it (the clone keeps the speech
runs only, so little of the room between words goes in). With suppression on, the VAD hears each sound the
suppressor's `delay_ms` (31 ms) late; its clock starts that much earlier, so its times stay the input's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from higgs_agent.agent.noise import DelayLine, NoiseReduction, NoiseSuppressor
from higgs_agent.agent.vad import (
    SpeechStarted,
    SpeechStopped,
    TurnDetector,
    VadEvent,
    VadSettings,
)
from higgs_agent.audio_formats import AudioFormat, StreamResampler, decode_audio
from higgs_agent.voices.caller_voice import WireAudioTape

ASR_RATE = 16000


@dataclass(frozen=True)
class TurnAudio:
    """A committed user turn: its 16 kHz audio and where it sits in the session's input timeline."""

    audio: np.ndarray
    start_ms: int
    end_ms: int


class InputAudio:
    def __init__(self, fmt: AudioFormat, vad: VadSettings | None, max_buffer_s: float = 300.0,
                 max_turn_s: float = 60.0, noise: NoiseReduction | None = None) -> None:
        self.format = fmt
        self.max_buffer_samples = int(max_buffer_s * ASR_RATE)
        self.max_turn_ms = int(max_turn_s * 1000)
        self._turn_start_ms = 0
        self._resampler = StreamResampler(fmt.rate, ASR_RATE)
        self.tape = WireAudioTape(fmt.rate)  # the same audio at the rate it came in, for the caller's voice
        self._detector: TurnDetector | None = None
        self._suppressor: NoiseSuppressor | None = None
        self._aligned: DelayLine | None = None  # the original audio in step with the suppressor's output
        self._chunks: list[np.ndarray] = []
        self._buffered = 0
        self._total = 0  # samples since the session started: the audio clock events report
        self._buffer_start = 0  # where the manual buffer starts on that clock
        self.on_audio: Callable[[np.ndarray], None] | None = None  # told every sample the clock counts (records)
        self._noise: NoiseReduction | None = None
        self._noise_after_turn: tuple[NoiseReduction | None] | None = None  # a toggle asked for mid-turn
        self.reconfigure(fmt, vad, noise)

    def release(self) -> None:
        """Let go of every sample held (the session is over): the buffer, the tape, the VAD's history."""
        self.on_audio = None  # the recorder has ended: audio after the close is not on record
        self._chunks = []
        self._buffered = 0
        self.tape = WireAudioTape(self.tape.rate)
        self._detector = None
        if self._suppressor is not None:
            self._suppressor.close()
            self._suppressor = None

    @property
    def vad_on(self) -> bool:
        return self._detector is not None

    @property
    def audio_ms(self) -> int:
        return self._total * 1000 // ASR_RATE

    @property
    def buffered_ms(self) -> int:
        return self._buffered * 1000 // ASR_RATE

    def reconfigure(self, fmt: AudioFormat, vad: VadSettings | None, noise: NoiseReduction | None = None) -> None:
        toggled = (noise is None) != (self._suppressor is None)
        detector = self._detector
        if toggled and detector is not None and detector.in_speech and detector.settings == vad:
            # a new signal for the VAD mid-turn would restart the turn (and lose its first half): switched when
            # the turn ends
            self._noise_after_turn = (noise,)
            toggled, noise = False, self._noise
        else:
            self._noise_after_turn = None
        self._noise = noise
        self._set_noise(noise)
        if fmt != self.format:
            self.format = fmt
            self._resampler = StreamResampler(fmt.rate, ASR_RATE)
        if vad is None:
            self._detector = None
        elif self._detector is None or self._detector.settings != vad or toggled:
            # On the session clock: the detector hears each sample the suppressor's delay late, so its clock
            # starts that much earlier and its times are those of the audio as it came in.
            lag_ms = self._suppressor.lag_samples * 1000 // ASR_RATE if self._suppressor is not None else 0
            self._detector = TurnDetector(vad, sample_rate=ASR_RATE, origin_ms=self.audio_ms - lag_ms)

    def append(self, data: bytes) -> list[VadEvent]:
        """Add wire bytes (AudioFormatError if malformed); return the VAD's events."""
        return self.push(decode_audio(data, self.format), self.format.rate)

    def push(self, samples: np.ndarray, rate: int) -> list[VadEvent]:
        """Add float samples at `rate` (transports that deliver decoded audio call this directly, at their
        own rate: WebRTC's 48 kHz, a phone's 8 kHz)."""
        if rate != self._resampler.in_rate:
            self._resampler = StreamResampler(rate, ASR_RATE)
        if rate != self.tape.rate:
            self.tape = WireAudioTape(rate, origin_ms=self.audio_ms)
        self.tape.push(samples)
        audio = self._resampler.push(samples)
        if not len(audio):
            return []
        if self.on_audio is not None:
            self.on_audio(audio)
        self._chunks.append(audio)
        self._buffered += len(audio)
        self._total += len(audio)
        self._trim()
        if self._detector is None:
            return []
        events = self._detector.push(*self._for_vad(audio))
        for event in events:
            if isinstance(event, SpeechStarted):
                self._turn_start_ms = event.audio_start_ms
        if self._detector.in_speech and self.audio_ms - self._turn_start_ms > self.max_turn_ms:
            stopped = self._detector.force_stop()  # endless "speech" (noise, music) still makes turns
            events += [stopped] if stopped is not None else []
        if any(isinstance(event, SpeechStopped) for event in events):
            self.clear()  # the turn owns that audio now
            if self._noise_after_turn is not None:  # asked for during the turn
                self.reconfigure(self.format, self._detector.settings, self._noise_after_turn[0])
        return events

    def speech_span(self) -> tuple[int, int] | None:
        """The VAD's turn in progress: [start, end of its last voiced frame) in ms on the input clock."""
        return self._detector.speech_span() if self._detector is not None else None

    def speech_so_far(self) -> np.ndarray | None:
        """The VAD's turn in progress: its 16 kHz audio so far (a copy: ask only when it will be read)."""
        return self._detector.speech_so_far() if self._detector is not None else None

    def end_turn(self, pause: int) -> SpeechStopped | None:
        """End the VAD's turn at pause number `pause` if the speaker has not gone on (see TurnDetector)."""
        stopped = self._detector.end_turn(pause) if self._detector is not None else None
        if stopped is not None:
            self.clear()  # the turn owns that audio now
        return stopped

    def commit(self) -> TurnAudio:
        """Take the buffer as a turn (manual mode, or a commit in VAD mode), resampler tail included."""
        tail = self._resampler.flush()
        if len(tail):
            if self.on_audio is not None:
                self.on_audio(tail)
            self._chunks.append(tail)
            self._total += len(tail)
        audio = np.concatenate(self._chunks) if self._chunks else np.zeros(0, dtype=np.float32)
        turn = TurnAudio(audio, self._buffer_start * 1000 // ASR_RATE, self.audio_ms)
        self.clear()
        if self._detector is not None:
            self._detector.reset()  # that speech is committed; do not end it again later
        return turn

    def _set_noise(self, noise: NoiseReduction | None) -> None:
        """Suppression on, off, or at a new strength (the stream and its noise estimate kept)."""
        if noise is None:
            if self._suppressor is not None:
                self._suppressor.close()
            self._suppressor = None
        elif self._suppressor is None:
            self._suppressor = NoiseSuppressor(noise.strength, ASR_RATE)
            self._aligned = self._suppressor.aligned()
        else:
            self._suppressor.strength = noise.strength

    def _for_vad(self, audio: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(what the turn keeps, what the VAD judges if not that): the original delayed, and the suppressed."""
        if self._suppressor is None or self._aligned is None:
            return audio, None
        return self._aligned.push(audio), self._suppressor.push(audio)

    def clear(self) -> None:
        self._chunks.clear()
        self._buffered = 0
        self._buffer_start = self._total

    def discard(self) -> None:
        """input_audio_buffer.clear: drop the buffer AND any turn in progress (its audio is gone too)."""
        self.clear()
        self._resampler.reset()
        if self._detector is not None:
            self._detector.reset()

    def _trim(self) -> None:
        """Bound the buffer: a client that streams for ever without committing keeps only the newest audio
        (with the VAD on, no more than a turn can hold: the VAD keeps its own copy of the turn)."""
        limit = min(self.max_buffer_samples, self.max_turn_ms * ASR_RATE // 1000) if self.vad_on \
            else self.max_buffer_samples
        while self._buffered > limit and len(self._chunks) > 1:
            dropped = self._chunks.pop(0)
            self._buffered -= len(dropped)
            self._buffer_start += len(dropped)
