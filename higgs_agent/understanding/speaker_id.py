"""Who is speaking: a speaker embedding per user turn, and per session, stable ids for the voices heard.

The default encoder is Resemblyzer's VoiceEncoder: the GE2E speaker encoder of the Real-Time-Voice-Cloning
project (a 3-layer LSTM over 40 mel bands, 1.4 M parameters, 256-d embeddings). Its weights (17 MB) ship inside
the PyPI wheel, so it works with no model hub, and one turn costs tens of ms on one CPU core. The alternatives,
and why none is the default:

- SpeechBrain ECAPA-TDNN (`speechbrain/spkrec-ecapa-voxceleb`): a stronger verifier (0.8 % EER on VoxCeleb1 by
  its model card), but it needs the `speechbrain` package and its weights from the hub.
- pyannote (`pyannote/embedding`, `pyannote/wespeaker-voxceleb-resnet34-LM`): gated hub models (an access token)
  and the pyannote.audio stack; built for diarizing recordings rather than one turn at a time.
- WeSpeaker (ResNet34 / ECAPA, ONNX exports): strong, but its own package and weights fetched at run time.
- transformers' x-vector heads (`microsoft/wavlm-base-plus-sv`, `anton-l/wav2vec2-base-superb-sv`): no new
  package, but ~95 M parameters (70x Resemblyzer's) and weights from the hub. Offered as an option: pass a hub
  id or a local folder to `load_speaker_encoder` (`TransformersSpeakerEncoder`); its threshold is dataset-
  dependent (transformers' own example uses 0.7, the wavlm-base-plus-sv card 0.86): calibrate it with the bench.

`SpeakerRegistry` (one per session) turns embeddings into ids: a turn whose cosine similarity to a known
speaker's running centroid (the normalized mean of that speaker's turn embeddings) reaches the threshold is that
speaker (the most similar one when several do); otherwise it is a new speaker. Ids are "speaker 1", "speaker 2",
... in order of first appearance: short, readable in a system prompt, and meaning nothing outside the session.

Threshold for Resemblyzer, 0.65: measured with `higgs-agent bench understanding --speech-corpus DIR` on the real
LibriSpeech speech in Resemblyzer's repository (test-other: 10 speakers x 10 turns; train-clean: 251 more
speakers), turns cut to 1.5 s and 3 s as in a call: a turn against its own speaker's centroid of 1-3 earlier turns
(below the threshold: one caller split in two) and against other speakers' centroids (at or above it: two callers
merged). 0.65 keeps the worse of the two errors over both turn lengths lowest (about 3 %); at 0.70 one short
turn in ten would split its caller off, and in a one-caller session a split is the only mistake there is to make.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from higgs_agent.model.errors import ModelLoadError, ModelNotFoundError
from higgs_agent.model.sources import is_hub_id

log = logging.getLogger(__name__)

SAMPLE_RATE = 16_000
RESEMBLYZER = "resemblyzer"
RESEMBLYZER_THRESHOLD = 0.65  # measured: see the module docstring
XVECTOR_THRESHOLD = 0.86  # the usage example of microsoft/wavlm-base-plus-sv's model card; dataset-dependent
MIN_SPEECH_S = 0.5  # less speech than this (after trimming silence) gives no embedding: too little to tell


class SpeakerEncoder(Protocol):
    """One loaded speaker-verification model, shared by all sessions; called from the analyzer's thread."""

    name: str
    default_threshold: float  # cosine similarity at which two turns are the same speaker, for this model

    def embed(self, audio16k: np.ndarray) -> np.ndarray | None:
        """An L2-normalized embedding of the turn's voice, or None when the turn holds too little speech."""
        ...


class ResemblyzerEncoder:
    """Resemblyzer's pretrained GE2E VoiceEncoder on the CPU (weights from inside the wheel)."""

    name = RESEMBLYZER
    default_threshold = RESEMBLYZER_THRESHOLD

    def __init__(self) -> None:
        with warnings.catch_warnings():  # resemblyzer imports a scipy namespace deprecated since 1.8
            warnings.simplefilter("ignore", DeprecationWarning)
            from resemblyzer import VoiceEncoder, preprocess_wav
        started = time.perf_counter()
        self._encoder = VoiceEncoder(device="cpu", verbose=False)
        self._preprocess = preprocess_wav
        log.info("speaker encoder %s loaded in %.0f ms", self.name, (time.perf_counter() - started) * 1000)

    def embed(self, audio16k: np.ndarray) -> np.ndarray | None:
        # preprocess_wav: the level normalization and long-silence trimming the model was trained with
        speech = self._preprocess(np.asarray(audio16k, dtype=np.float32).reshape(-1))
        if len(speech) < MIN_SPEECH_S * SAMPLE_RATE:
            return None
        return _unit(self._encoder.embed_utterance(speech))


class TransformersSpeakerEncoder:
    """Any transformers audio x-vector model (`AutoModelForAudioXVector`: WavLM / wav2vec2 / UniSpeech-SAT -SV),
    from a hub id or a local folder with its feature extractor. Runs on the CPU."""

    default_threshold = XVECTOR_THRESHOLD

    def __init__(self, source: str) -> None:
        import torch
        from transformers import AutoFeatureExtractor, AutoModelForAudioXVector

        self.name = source
        self._torch = torch
        started = time.perf_counter()
        self._features = _load_pretrained(AutoFeatureExtractor, source, "speaker model's feature extractor")
        self._model = _load_pretrained(AutoModelForAudioXVector, source, "speaker model").eval()
        log.info("speaker encoder %s loaded in %.0f ms", source, (time.perf_counter() - started) * 1000)

    def embed(self, audio16k: np.ndarray) -> np.ndarray | None:
        audio = np.asarray(audio16k, dtype=np.float32).reshape(-1)
        if len(audio) < MIN_SPEECH_S * SAMPLE_RATE:
            return None
        inputs = self._features(audio, sampling_rate=SAMPLE_RATE, return_tensors="pt")
        with self._torch.inference_mode():
            embedding = self._model(**inputs).embeddings[0]
        return _unit(embedding.float().numpy())


def load_speaker_encoder(source: str | None = None) -> SpeakerEncoder:
    """None or "resemblyzer": the bundled GE2E encoder; anything else: a transformers x-vector model (hub id or
    local folder)."""
    if source in (None, "", RESEMBLYZER):
        return ResemblyzerEncoder()
    return TransformersSpeakerEncoder(source)


def _load_pretrained(cls, source: str, what: str):  # noqa: ANN001, ANN202 - transformers Auto classes
    """`cls.from_pretrained(source)` with errors that say what to do (offline hub, missing folder)."""
    if not is_hub_id(source) and not Path(source).expanduser().is_dir():
        raise ModelNotFoundError(f"the {what} folder {source!r} does not exist; pass a local folder saved with "
                                 "save_pretrained, or a hub id such as 'org/name'")
    try:
        return cls.from_pretrained(source)
    except OSError as exc:  # transformers raises OSError for unreachable hubs, missing files and bad ids
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        advice = (f"download it on a connected machine (`hf download {source} --local-dir DIR`) and pass DIR"
                  if is_hub_id(source) else "check that the folder holds config.json and the weights")
        raise ModelLoadError(f"could not load the {what} {source!r} ({reason}); {advice}") from exc


def _unit(vector: np.ndarray) -> np.ndarray:
    vector = np.asarray(vector, dtype=np.float32).reshape(-1)
    return vector / max(float(np.linalg.norm(vector)), 1e-12)


@dataclass(frozen=True)
class SpeakerMatch:
    """Who spoke a turn. `similarity`: cosine similarity to the matched speaker's centroid before this turn
    joined it (for a new speaker, to the closest known one; 0.0 when none was known)."""

    id: str
    is_new: bool
    similarity: float


@dataclass
class _KnownSpeaker:
    id: str
    embedding_sum: np.ndarray
    turns: int = 1

    @property
    def centroid(self) -> np.ndarray:
        return _unit(self.embedding_sum)


@dataclass
class SpeakerRegistry:
    """The voices heard in one session. Not thread-safe: the session's event loop owns it."""

    threshold: float = RESEMBLYZER_THRESHOLD
    speakers: list[_KnownSpeaker] = field(default_factory=list)

    def identify(self, embedding: np.ndarray) -> SpeakerMatch:
        """The speaker of this embedding, learning from it: a match joins that speaker's centroid, anything
        else becomes a new speaker."""
        embedding = _unit(embedding)
        similarities = [float(speaker.centroid @ embedding) for speaker in self.speakers]
        best = int(np.argmax(similarities)) if similarities else -1
        closest = similarities[best] if similarities else 0.0
        if similarities and closest >= self.threshold:
            speaker = self.speakers[best]
            speaker.embedding_sum = speaker.embedding_sum + embedding
            speaker.turns += 1
            return SpeakerMatch(speaker.id, is_new=False, similarity=closest)
        speaker = _KnownSpeaker(id=f"speaker {len(self.speakers) + 1}", embedding_sum=embedding.copy())
        self.speakers.append(speaker)
        return SpeakerMatch(speaker.id, is_new=True, similarity=closest)
