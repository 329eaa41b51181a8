"""How a caller sounds: prosody against the same speaker's own baseline, mapped to a few states; optionally a
pretrained speech-emotion classifier beside it.

People differ far more from each other than from themselves (a deep voice is not a calm one), so every rule
compares a turn with its speaker's baseline: the mean of that speaker's first `BASELINE_TURNS` turns in the
session. The baseline is then frozen, so a caller who stays upset for ten turns is still heard as upset rather
than becoming the new normal. Until a speaker has a baseline (their first turn) the state is neutral.

The states and the rules that lead to them (first match wins; a rule needing a missing number does not fire):

| state    | rule, against the speaker's baseline (all of a row's cues at once)      | reading                       |
| -------- | ---------------------------------------------------------------------- | ----------------------------- |
| upset    | louder >= +4 dB, pitch >= +10 %, rate >= +15 %                          | raised, tense, hurried voice  |
| excited  | pitch >= +15 %, pitch range >= +40 %, and louder >= +2 dB or rate >= +15 % | lively, animated intonation |
| hesitant | rate <= -25 %, louder < +2 dB                                           | slow, halting speech          |
| calm     | softer <= -4 dB, pitch < +5 %, rate < +5 %                              | quieter, unhurried            |
| neutral  | anything else, or no baseline yet                                      |                               |

Why these numbers: on real read speech (LibriSpeech test-other, 10 speakers x 10 turns, each against the mean of
its speaker's first two turns) a turn moves from its baseline by -3..+2 dB, -20..+27 % pitch and -16..+34 % rate
(10th to 90th percentile), so no single cue is trusted: every state needs two or three cues at once, and the
loudness cues of upset and calm lie beyond loudness's everyday spread. That reading labels 95 % of those turns
neutral (`higgs-agent bench understanding --speech-corpus DIR` reports the split); espeak-ng turns louder by
6 dB, 28 % higher and 27 % faster read as upset (tests/test_understanding.py).

Prosody measures arousal, not valence: an angry and a delighted caller both get louder, higher and faster, and
this maps that pattern to "upset", the safer reading for an agent (a calm, warm reply does not hurt a delighted
caller; a cheerful one to an angry caller does). The classifier, when configured, is reported beside the state,
not merged into it: emotion models' label sets differ.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

import numpy as np

from higgs_agent.model.errors import ModelLoadError, ModelNotFoundError
from higgs_agent.model.sources import is_hub_id
from higgs_agent.understanding.prosody import SAMPLE_RATE, ProsodyFeatures

log = logging.getLogger(__name__)

BASELINE_TURNS = 2


class EmotionState(StrEnum):
    NEUTRAL = "neutral"
    UPSET = "upset"
    EXCITED = "excited"
    HESITANT = "hesitant"
    CALM = "calm"


@dataclass(frozen=True)
class Prosody:
    """The four numbers the rules read: from the audio (`ProsodyFeatures`) plus the rate from the words."""

    pitch_hz: float | None
    pitch_range_hz: float | None
    energy_db: float | None
    rate_wps: float | None

    @classmethod
    def of(cls, features: ProsodyFeatures, rate_wps: float | None) -> Prosody:
        return cls(features.pitch_hz, features.pitch_range_hz, features.energy_db, rate_wps)


@dataclass(frozen=True)
class BaselineDelta:
    """A turn against its speaker's baseline: relative change (%) for pitch, range and rate, dB for energy."""

    pitch_pct: float | None
    pitch_range_pct: float | None
    energy_db: float | None
    rate_pct: float | None


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def _percent(value: float | None, base: float | None) -> float | None:
    if value is None or base is None or base <= 0:
        return None
    return (value / base - 1.0) * 100.0


@dataclass
class SpeakerBaseline:
    """One speaker's usual voice in this session: the mean of their first `turns_needed` turns, then frozen."""

    turns_needed: int = BASELINE_TURNS
    turns: int = 0
    _values: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in _FIELDS})

    @property
    def is_set(self) -> bool:
        return self.turns > 0

    @property
    def is_frozen(self) -> bool:
        return self.turns >= self.turns_needed

    def learn(self, prosody: Prosody) -> None:
        """Count a turn into the baseline, unless it is frozen."""
        if self.is_frozen:
            return
        self.turns += 1
        for name in _FIELDS:
            value = getattr(prosody, name)
            if value is not None:
                self._values[name].append(value)

    def mean(self) -> Prosody:
        return Prosody(**{name: _mean(self._values[name]) for name in _FIELDS})

    def compare(self, prosody: Prosody) -> BaselineDelta | None:
        """This turn against the baseline; None before the speaker's first turn was learnt."""
        if not self.is_set:
            return None
        base = self.mean()
        energy = (prosody.energy_db - base.energy_db
                  if prosody.energy_db is not None and base.energy_db is not None else None)
        return BaselineDelta(pitch_pct=_percent(prosody.pitch_hz, base.pitch_hz),
                             pitch_range_pct=_percent(prosody.pitch_range_hz, base.pitch_range_hz),
                             energy_db=energy, rate_pct=_percent(prosody.rate_wps, base.rate_wps))


_FIELDS = ("pitch_hz", "pitch_range_hz", "energy_db", "rate_wps")


@dataclass(frozen=True)
class StateRules:
    """The thresholds of the table in this module's docstring (dB for energy, % for the rest)."""

    upset_louder_db: float = 4.0
    upset_higher_pct: float = 10.0
    upset_faster_pct: float = 15.0
    excited_higher_pct: float = 15.0
    excited_wider_pct: float = 40.0
    excited_louder_db: float = 2.0
    excited_faster_pct: float = 15.0
    hesitant_slower_pct: float = -25.0
    hesitant_max_louder_db: float = 2.0
    calm_softer_db: float = -4.0
    calm_max_higher_pct: float = 5.0
    calm_max_faster_pct: float = 5.0

    def classify(self, delta: BaselineDelta | None) -> EmotionState:
        if delta is None:
            return EmotionState.NEUTRAL
        louder, higher, wider, faster = delta.energy_db, delta.pitch_pct, delta.pitch_range_pct, delta.rate_pct
        if _at_least(louder, self.upset_louder_db) and _at_least(higher, self.upset_higher_pct) \
                and _at_least(faster, self.upset_faster_pct):
            return EmotionState.UPSET
        if _at_least(higher, self.excited_higher_pct) and _at_least(wider, self.excited_wider_pct) \
                and (_at_least(louder, self.excited_louder_db) or _at_least(faster, self.excited_faster_pct)):
            return EmotionState.EXCITED
        if _at_most(faster, self.hesitant_slower_pct) and _below(louder, self.hesitant_max_louder_db):
            return EmotionState.HESITANT
        if _at_most(louder, self.calm_softer_db) and _below(higher, self.calm_max_higher_pct) \
                and _below(faster, self.calm_max_faster_pct):
            return EmotionState.CALM
        return EmotionState.NEUTRAL


def _at_least(value: float | None, limit: float) -> bool:
    return value is not None and value >= limit


def _at_most(value: float | None, limit: float) -> bool:
    return value is not None and value <= limit


def _below(value: float | None, limit: float) -> bool:
    return value is not None and value < limit


@dataclass(frozen=True)
class ModelEmotion:
    """The speech-emotion classifier's top label for a turn, in the model's own label set."""

    label: str
    score: float


class EmotionClassifier:
    """A pretrained speech-emotion model through transformers' `audio-classification` pipeline, from a hub id
    (e.g. `superb/wav2vec2-base-superb-er`, `ehcalabres/wav2vec2-lg-xlsr-en-speech-emotion-recognition`) or a
    local folder holding the model and its feature extractor. Runs on the CPU, from the analyzer's thread."""

    def __init__(self, source: str) -> None:
        from transformers import pipeline

        if not is_hub_id(source) and not Path(source).expanduser().is_dir():
            raise ModelNotFoundError(f"the emotion model folder {source!r} does not exist; pass a local folder "
                                     "saved with save_pretrained (model + feature extractor) or a hub id")
        started = time.perf_counter()
        try:
            self._pipeline = pipeline("audio-classification", model=source, device="cpu")
        except OSError as exc:  # unreachable hub, missing files
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ModelLoadError(f"could not load the emotion model {source!r} ({reason}); download it on a "
                                 "connected machine (`hf download ID --local-dir DIR`) and pass DIR") from exc
        self.name = source
        self.labels = sorted(self._pipeline.model.config.id2label.values())
        log.info("emotion model %s loaded in %.0f ms", source, (time.perf_counter() - started) * 1000)

    def classify(self, audio16k: np.ndarray) -> ModelEmotion | None:
        audio = np.asarray(audio16k, dtype=np.float32).reshape(-1)
        if len(audio) == 0:
            return None
        # the pipeline resamples from SAMPLE_RATE when the model expects another rate
        best = self._pipeline({"raw": audio, "sampling_rate": SAMPLE_RATE}, top_k=1)[0]
        return ModelEmotion(label=str(best["label"]), score=float(best["score"]))
