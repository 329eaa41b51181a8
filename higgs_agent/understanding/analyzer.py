"""Caller understanding per user turn, off the event loop: speaker id, prosody, emotion state, language.

One `TurnAnalyzer` per server holds the models (speaker encoder, optional emotion classifier) and a small named
executor of its own, so the analysis never waits behind the ASR or the engine and never blocks the event loop.
Each session owns a `CallerState` (its speaker registry and per-speaker baselines) and passes it in. A turn is
analyzed in two steps, so the audio work overlaps the transcription that runs elsewhere:

    analysis = analyzer.start(audio16k, caller)           # embedding, pitch, energy (and classifier): begins now
    transcript = await transcribe(audio16k)                # elsewhere, meanwhile
    ctx = await analysis.finish(transcript.text, transcript.language)   # + rate, speaker id, baseline, state

Torch work on the analyzer thread (the speaker encoder, optional transformers models) runs with the process's
torch thread count (`set_cpu_threads`, `serve --threads`): keep it at 1 on a small VM, where two threads make
the speaker encoder's small LSTM several times slower, not faster.

`finish` touches the session's `CallerState`, so call it from the session's event loop, once per turn, in turn
order (calling it again returns the same context). A turn that is dropped before `finish` leaves no trace.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from higgs_agent.understanding.context import EmotionReading, TurnContext
from higgs_agent.understanding.emotion import (
    EmotionClassifier,
    ModelEmotion,
    Prosody,
    SpeakerBaseline,
    StateRules,
)
from higgs_agent.understanding.prosody import SAMPLE_RATE, ProsodyFeatures, measure_prosody, speaking_rate
from higgs_agent.understanding.speaker_id import SpeakerEncoder, SpeakerRegistry, load_speaker_encoder

log = logging.getLogger(__name__)

THREAD_NAME = "higgs-analyzer"


@dataclass
class CallerState:
    """What one session has learnt about its callers: who spoke, and how each of them usually sounds."""

    registry: SpeakerRegistry
    baselines: dict[str, SpeakerBaseline] = field(default_factory=dict)

    def baseline(self, speaker_id: str) -> SpeakerBaseline:
        return self.baselines.setdefault(speaker_id, SpeakerBaseline())


@dataclass(frozen=True)
class AudioReading:
    """What the audio alone gave, computed on the analyzer's thread."""

    embedding: np.ndarray | None
    features: ProsodyFeatures
    model: ModelEmotion | None
    elapsed_ms: float


class TurnAnalysis:
    """One turn's analysis in flight; `finish` completes it with the words."""

    def __init__(self, future: Future[AudioReading], caller: CallerState, rules: StateRules) -> None:
        self._future = future
        self._caller = caller
        self._rules = rules
        self._context: TurnContext | None = None
        self.audio_ms: float | None = None  # the audio work's own time on the analyzer thread
        self.wait_ms: float | None = None  # how long `finish` waited for it (0 when it was done already)

    def done(self) -> bool:
        return self._future.done()

    async def finish(self, transcript: str, language: str | None) -> TurnContext:
        """The turn's context: waits for the audio work, then identifies the speaker, adds the speaking rate and
        reads the state against that speaker's baseline (learning the turn into both)."""
        if self._context is not None:
            return self._context
        started = time.perf_counter()
        reading = await asyncio.wrap_future(self._future)
        self.wait_ms = (time.perf_counter() - started) * 1000
        self.audio_ms = reading.elapsed_ms
        if self._context is not None:  # a concurrent finish() got here first
            return self._context
        speaker = None if reading.embedding is None else self._caller.registry.identify(reading.embedding)
        prosody = Prosody.of(reading.features, speaking_rate(transcript, reading.features.speech_s, language))
        delta = None
        if speaker is not None:
            baseline = self._caller.baseline(speaker.id)
            delta = baseline.compare(prosody)
            baseline.learn(prosody)
        emotion = EmotionReading(self._rules.classify(delta), prosody, delta, reading.model)
        self._context = TurnContext(speaker=speaker, emotion=emotion, language=language)
        return self._context


class TurnAnalyzer:
    """The shared models and the executor they run on. `workers` > 1 lets several sessions' turns be analyzed
    at once (the models are then called from several threads; their inference keeps no state between calls)."""

    def __init__(self, speaker_encoder: SpeakerEncoder, emotion_classifier: EmotionClassifier | None = None,
                 rules: StateRules | None = None, speaker_threshold: float | None = None, workers: int = 1) -> None:
        self.speaker_encoder = speaker_encoder
        self.emotion_classifier = emotion_classifier
        self.rules = rules or StateRules()
        self.speaker_threshold = speaker_threshold if speaker_threshold is not None else \
            speaker_encoder.default_threshold
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=THREAD_NAME)
        self._warming: Future | None = None  # a warm-up in the background, while the server already serves

    @classmethod
    def load(cls, speaker_model: str | None = None, emotion_model: str | None = None,
             speaker_threshold: float | None = None, workers: int = 1) -> TurnAnalyzer:
        """`speaker_model`: None for Resemblyzer, else a transformers x-vector hub id or folder;
        `emotion_model`: None for prosody only, else an audio-classification hub id or folder."""
        classifier = EmotionClassifier(emotion_model) if emotion_model else None
        return cls(load_speaker_encoder(speaker_model), classifier, speaker_threshold=speaker_threshold,
                   workers=workers)

    def new_caller_state(self) -> CallerState:
        """A fresh per-session state, with this analyzer's speaker threshold."""
        return CallerState(registry=SpeakerRegistry(threshold=self.speaker_threshold))

    def start(self, audio16k: np.ndarray, caller: CallerState) -> TurnAnalysis:
        """Begin the audio half of the analysis (16 kHz float32 mono, one turn) on the analyzer's thread."""
        audio = np.array(audio16k, dtype=np.float32).reshape(-1)  # a copy: the caller may reuse its buffer
        context = contextvars.copy_context()  # the session's context (its log id) goes along to the thread
        return TurnAnalysis(self._executor.submit(context.run, self._read_audio, audio), caller, self.rules)

    def _read_audio(self, audio: np.ndarray) -> AudioReading:
        started = time.perf_counter()
        embedding = self.speaker_encoder.embed(audio)
        features = measure_prosody(audio)
        model = self.emotion_classifier.classify(audio) if self.emotion_classifier is not None else None
        return AudioReading(embedding, features, model, (time.perf_counter() - started) * 1000)

    @property
    def warming(self) -> bool:
        """A background warm-up is still running: a turn analyzed now would wait seconds behind it."""
        return self._warming is not None and not self._warming.done()

    def warm_up_in_background(self) -> Future:
        """Warm up on the analyzer's thread while the server starts serving; `warming` says when it is done."""
        self._warming = self._executor.submit(self._warm_up_logged)
        return self._warming

    def _warm_up_logged(self) -> float:
        started = time.perf_counter()
        self._read_audio(_voiced_tone())
        elapsed = (time.perf_counter() - started) * 1000
        log.info("turn analyzer warmed up in %.0f ms (in the background; turns before it go without speaker "
                 "and emotion)", elapsed)
        return elapsed

    def warmup(self) -> float:
        """Analyze one synthetic voiced second so the first real turn does not pay for lazy initialisation
        (librosa's and numba's first calls take seconds); ms taken."""
        started = time.perf_counter()
        self._executor.submit(self._read_audio, _voiced_tone()).result()
        elapsed = (time.perf_counter() - started) * 1000
        log.info("turn analyzer warmed up in %.0f ms", elapsed)
        return elapsed

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def _voiced_tone(seconds: float = 1.5, pitch_hz: float = 140.0) -> np.ndarray:
    """A buzz with a falling harmonic spectrum, loud enough for every stage to run its full path."""
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    tone = sum(np.sin(2 * np.pi * pitch_hz * k * t) / k for k in range(1, 20))
    return (0.1 * tone / np.max(np.abs(tone))).astype(np.float32)
