"""Is the caller done? Semantic turn detection (`turn_detection: {"type": "semantic_vad"}`).

A pause-only VAD ends a turn after a fixed silence: too slow for a finished sentence, too quick for "I would
like to book a table for ..." and a breath. Here the VAD only reports pauses (`SpeechPaused`, 60-200 ms of
silence by eagerness), and each pause is judged from two things heard in it:

- the voice: Pipecat's smart-turn v3.2 (`SmartTurn`), an 8 MB ONNX Whisper-encoder classifier trained on 23
  languages, whose weights ship inside the `pipecat-ai` wheel (so no model hub): P(the utterance is complete)
  from the last 8 s of audio, ~100 ms on one CPU core;
- the words: the transcript of the turn so far (made at the pause anyway, so the final transcript is ready when
  the turn ends), whose last word or mark says whether a clause is left open ("... a table for", "because",
  a trailing comma or "...") or closed (".", "?", "!").

The two are averaged (words: open 0, unsure 0.5, closed 1) and the turn ends when the average reaches the
eagerness's threshold; otherwise the VAD's own silence limit (`max_wait_ms`) ends it. Why both: smart-turn reads
intonation, which synthetic test speech and flat talkers lack (on espeak-ng it scores "What time does the museum
open today?" 0.09 and "... a table for," 0.97: `higgs-agent bench turns` shows each signal's accuracy and the
blend's), while Whisper's words and punctuation carry the grammar.
"""

from __future__ import annotations

import asyncio
import contextvars
import importlib.util
import logging
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

log = logging.getLogger(__name__)

RATE = 16_000
WINDOW_S = 8  # smart-turn reads the last 8 s (zero-padded in front when shorter)
_WEIGHTS = ("audio", "turn", "smart_turn", "data", "smart-turn-v3.2-cpu.onnx")  # inside the pipecat package

Words = Literal["open", "closed", "unsure"]
WORDS_SCORE: dict[Words, float] = {"open": 0.0, "unsure": 0.5, "closed": 1.0}

# Words a finished English sentence does not end on: articles, prepositions, conjunctions, auxiliaries,
# possessives and fillers. Other languages are judged by their punctuation (and the voice) alone.
_OPEN_ENDINGS = {
    "en": frozenset("""
        a an the my your his her its our their this that these those some any every each to for of in on at by
        with from into onto about as than like between through over under after before during without within
        until against toward towards and or but nor so because if when while although though unless since
        whereas whether then is are was were am be been being do does did have has had will would can could
        should shall may might must i we you he she they it's i'm we're you're they're there's i'd i'll um uh er
        erm hmm
    """.split()),
}
_OPEN_MARKS = ("...", "…", ",", "-", "—", ":", ";")
_CLOSED_MARKS = (".", "?", "!")


class TurnModelMissing(RuntimeError):
    """smart-turn's weights are not installed."""


def pipecat_data_file(*parts: str) -> Path:
    """A file inside the installed `pipecat-ai` package, found without importing it."""
    spec = importlib.util.find_spec("pipecat")
    if spec is None or not spec.submodule_search_locations:
        raise TurnModelMissing("semantic_vad needs Pipecat's smart-turn weights: `pip install pipecat-ai` (the "
                               "README's install has it), or use turn_detection server_vad")
    return Path(next(iter(spec.submodule_search_locations))).joinpath(*parts)


def smart_turn_weights() -> Path:
    """smart-turn v3.2's ONNX file inside the installed `pipecat-ai` package."""
    path = pipecat_data_file(*_WEIGHTS)
    if not path.is_file():
        raise TurnModelMissing(f"{path} is missing: this pipecat-ai has no smart-turn v3.2 weights; install the "
                               "version in uv.lock")
    return path


class SmartTurn:
    """smart-turn v3.2 on ONNX Runtime, on a thread of its own (a call is ~100 ms of one core)."""

    def __init__(self, path: Path | None = None) -> None:
        import onnxruntime
        from transformers import WhisperFeatureExtractor

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        self.path = path or smart_turn_weights()
        self._session = onnxruntime.InferenceSession(str(self.path), sess_options=options,
                                                     providers=["CPUExecutionProvider"])
        self._features = WhisperFeatureExtractor(chunk_length=WINDOW_S)  # as smart-turn's own inference code
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="higgs-turn")

    def probability(self, audio16k: np.ndarray) -> float:
        """P(the speaker has finished) for 16 kHz mono ending where the speech paused."""
        audio = np.asarray(audio16k, dtype=np.float32).reshape(-1)[-WINDOW_S * RATE:]
        audio = np.pad(audio, (WINDOW_S * RATE - len(audio), 0))
        features = self._features(audio, sampling_rate=RATE, return_tensors="np", do_normalize=True)
        logits = self._session.run(None, {"input_features": features["input_features"].astype(np.float32)})[0]
        return float(np.asarray(logits).reshape(-1)[0])  # the model's output is already a sigmoid

    async def probability_async(self, audio16k: np.ndarray) -> float:
        context = contextvars.copy_context()
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, lambda: context.run(self.probability, audio16k))

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def words_verdict(text: str, language: str | None = "en") -> Words:
    """Does the transcript so far leave a clause open, close one, or not say?"""
    text = text.strip()
    if not text:
        return "unsure"
    if text.endswith(_OPEN_MARKS):
        return "open"
    words = re.findall(r"[\w']+", text.lower())
    if words and words[-1] in _OPEN_ENDINGS.get((language or "en")[:2], frozenset()):
        return "open"
    return "closed" if text.endswith(_CLOSED_MARKS) else "unsure"


@dataclass(frozen=True)
class EndOfTurnPolicy:
    """OpenAI's `eagerness` as numbers: how soon a pause is judged, how sure the judge must be, and the longest
    silence that ends a turn whatever the judge said."""

    eagerness: str
    pause_ms: int
    threshold: float
    max_wait_ms: int

    @classmethod
    def for_eagerness(cls, eagerness: str) -> EndOfTurnPolicy:
        pause_ms, threshold, max_wait_ms = _EAGERNESS[eagerness]
        return cls(eagerness, pause_ms, threshold, max_wait_ms)

    def score(self, audio_probability: float | None, words: Words) -> float:
        """The blend of the two signals (the words alone when the voice was not judged)."""
        if audio_probability is None:
            return WORDS_SCORE[words]
        return (audio_probability + WORDS_SCORE[words]) / 2

    def complete(self, audio_probability: float | None, words: Words) -> bool:
        return self.score(audio_probability, words) >= self.threshold


# eagerness -> (pause judged after, threshold, longest silence). "auto" is "medium", as OpenAI documents.
# A threshold of 0.5 ends a turn on closed words whatever the voice says, never on open ones; "high" lets a very
# sure voice (>= 0.7) overrule open words, "low" wants the voice to agree (>= 0.4) even with closed words.
# The pause is counted from the VAD's first unvoiced frame, itself ~100-150 ms after the last word (webrtcvad's
# hangover): at "auto" a turn is judged ~200-250 ms after the last word.
_EAGERNESS: dict[str, tuple[int, float, int]] = {
    "high": (60, 0.35, 1200),
    "medium": (100, 0.5, 2500),
    "auto": (100, 0.5, 2500),
    "low": (200, 0.7, 5000),
}
