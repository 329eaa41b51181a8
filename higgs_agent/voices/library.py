"""The voice library: cloned voices on disk, each encoded to codec codes once, owned by a tenant.

Layout under `root`:

    voice_<24 hex>/voice.json   id, name, tenant, transcript, duration_s, created_at, frames, codec
    voice_<24 hex>/clip.wav     the clip as uploaded (after checks), 24 kHz mono PCM16
    voice_<24 hex>/codes.npy    its codec codes (num_codebooks x frames, int16), computed once at upload
    .preset-cache/NAME-<hash>.npy   codes of presets, keyed by the preset WAV's content hash

A voice folder is written under a temporary name and renamed into place, so a crash never leaves half a
voice; leftovers are removed at start-up. Codes carry the `codec_id` they were made with: when the server
runs another codec, a voice is re-encoded from its WAV on first use.

Presets (`presets=DIR`) are read-only voices every tenant may use, laid out as boson-ai/higgs-audio's
`voice_prompts/`: `NAME.wav` beside `NAME.txt` (its transcript). Their id is `preset_NAME`, their name NAME;
they are encoded on first use and cached. A tenant's lookups by name see its own voices first, then presets.

`encode` turns (mono float audio, rate) into codes; the server passes one that runs the codec on its model
worker. All methods may be called from several threads; encoding happens outside the index lock.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from higgs_agent import SAMPLE_RATE
from higgs_agent.audio import read_wav, resample, write_wav
from higgs_agent.model.prompts import VoiceReference

log = logging.getLogger(__name__)

Encode = Callable[[np.ndarray, int], "torch.Tensor | np.ndarray"]

VOICE_PREFIX = "voice_"
PRESET_PREFIX = "preset_"
_VOICE_ID = re.compile(r"voice_[0-9a-f]{24}")
_PRESET_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
MAX_NAME_CHARS = 64
MAX_TRANSCRIPT_CHARS = 2000
METADATA = "voice.json"
CLIP = "clip.wav"
CODES = "codes.npy"
PRESET_CACHE = ".preset-cache"
_STAGING = ".staging-"
_TRASH = ".trash-"


class VoiceLibraryError(Exception):
    code = "voice_error"


class VoiceNotFound(VoiceLibraryError, KeyError):
    """No such voice for this tenant (another tenant's voice reads as missing: its existence is not told)."""

    code = "voice_not_found"

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "voice not found"


class PresetReadOnly(VoiceLibraryError, PermissionError):
    code = "preset_read_only"


class VoiceNameTaken(VoiceLibraryError, ValueError):
    code = "voice_name_taken"


class VoiceLimitReached(VoiceLibraryError, ValueError):
    code = "voice_limit_reached"


class InvalidVoiceName(VoiceLibraryError, ValueError):
    code = "invalid_name"


@dataclass(frozen=True)
class Voice:
    id: str
    name: str
    tenant: str | None  # None for a preset: every tenant's
    transcript: str
    duration_s: float
    created_at: int  # Unix seconds
    frames: int = 0  # codec frames; 0 for a preset not yet encoded
    codec: str = ""

    @property
    def preset(self) -> bool:
        return self.tenant is None


def check_name(name: str) -> str:
    name = (name or "").strip()
    if not name or len(name) > MAX_NAME_CHARS or not name.isprintable():
        raise InvalidVoiceName(f"the voice name must be 1-{MAX_NAME_CHARS} printable characters")
    return name


def codes_array(codes: torch.Tensor | np.ndarray) -> np.ndarray:
    """Codes as stored: (num_codebooks, frames) int16 (codes are < 1024)."""
    array = codes.detach().cpu().numpy() if isinstance(codes, torch.Tensor) else np.asarray(codes)
    if array.ndim != 2 or array.shape[1] == 0:
        raise ValueError(f"encode gave codes of shape {array.shape}; expected (num_codebooks, frames)")
    return array.astype(np.int16)


class VoiceLibrary:
    def __init__(self, root: str | Path, encode: Encode, presets: str | Path | None = None, codec_id: str = "",
                 max_voices_per_tenant: int = 100) -> None:
        self.root = Path(root)
        self.encode = encode
        self.presets_dir = Path(presets) if presets is not None else None
        self.codec_id = codec_id
        self.max_voices_per_tenant = max_voices_per_tenant
        self._lock = threading.RLock()
        self._voices: dict[str, Voice] = {}
        self._codes: dict[str, tuple[str, np.ndarray]] = {}  # voice id -> (content key, codes)
        self._encoding: dict[str, threading.Lock] = {}  # one lock per voice being (re-)encoded
        self._digests: dict[Path, tuple[tuple[int, int], str]] = {}  # preset WAV -> ((mtime, size), hash)
        self.root.mkdir(parents=True, exist_ok=True)
        self._load()

    # -- reading ------------------------------------------------------------------------------------------

    def voices(self, tenant: str) -> list[Voice]:
        """Presets (by name), then the tenant's own voices (oldest first)."""
        with self._lock:
            own = sorted((v for v in self._voices.values() if v.tenant == tenant), key=lambda v: (v.created_at, v.id))
        return self._presets() + own

    def get(self, tenant: str, key: str) -> Voice:
        """A voice by id or name: the tenant's own voices first, then presets. VoiceNotFound otherwise."""
        with self._lock:
            voice = self._voices.get(key)
            if voice is not None and voice.tenant == tenant:
                return voice
            named = [v for v in self._voices.values() if v.tenant == tenant and v.name == key]
            if named:
                return named[0]
        for preset in self._presets():
            if key in (preset.id, preset.name):
                return preset
        raise VoiceNotFound(f"no voice {key!r}")

    def reference(self, tenant: str, key: str) -> VoiceReference:
        """The voice's codes and transcript, ready for `SpeechPrompt(voice=...)`. Presets are encoded on first
        use; a voice made by another codec is re-encoded from its clip."""
        voice = self.get(tenant, key)
        codes = self._preset_codes(voice) if voice.preset else self._voice_codes(voice)
        return VoiceReference(codes=torch.from_numpy(codes.astype(np.int64)), transcript=voice.transcript)

    def clip_path(self, tenant: str, key: str) -> Path:
        voice = self.get(tenant, key)
        return self._preset_wav(voice.name) if voice.preset else self.root / voice.id / CLIP

    # -- writing ------------------------------------------------------------------------------------------

    def create(self, tenant: str, name: str, audio: np.ndarray, sample_rate: int, transcript: str) -> Voice:
        """Store a new voice of `tenant` from a checked clip; its codes are computed here, once."""
        name = check_name(name)
        transcript = " ".join((transcript or "").split())
        if len(transcript) > MAX_TRANSCRIPT_CHARS:
            raise ValueError(f"the transcript is longer than {MAX_TRANSCRIPT_CHARS} characters")
        self._check_room(tenant, name)  # fail fast, before the codec's work
        wave = resample(np.asarray(audio, dtype=np.float32).reshape(-1), sample_rate, SAMPLE_RATE)
        codes = codes_array(self.encode(wave, SAMPLE_RATE))
        voice = Voice(id=VOICE_PREFIX + secrets.token_hex(12), name=name, tenant=tenant, transcript=transcript,
                      duration_s=round(len(wave) / SAMPLE_RATE, 3), created_at=int(time.time()),
                      frames=int(codes.shape[1]), codec=self.codec_id)
        staging = self.root / f"{_STAGING}{voice.id}"
        staging.mkdir()
        try:
            write_wav(staging / CLIP, wave)
            np.save(staging / CODES, codes)
            _write_json(staging / METADATA, asdict(voice))
            with self._lock:
                self._check_room(tenant, name)  # again: another thread may have taken the name meanwhile
                os.replace(staging, self.root / voice.id)
                self._voices[voice.id] = voice
                self._codes[voice.id] = (self.codec_id, codes)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return voice

    def delete(self, tenant: str, voice_id: str) -> Voice:
        """Delete one of the tenant's voices by id. PresetReadOnly for a preset, VoiceNotFound otherwise."""
        with self._lock:
            voice = self._voices.get(voice_id)
            if voice is None or voice.tenant != tenant:
                if any(voice_id in (p.id, p.name) for p in self._presets()):
                    raise PresetReadOnly(f"{voice_id!r} is a preset voice: presets cannot be deleted")
                raise VoiceNotFound(f"no voice {voice_id!r}")
            trash = self.root / f"{_TRASH}{voice.id}"
            os.replace(self.root / voice.id, trash)  # gone from the library at once; files go below
            del self._voices[voice.id]
            self._codes.pop(voice.id, None)
        shutil.rmtree(trash, ignore_errors=True)
        return voice

    # -- internals ----------------------------------------------------------------------------------------

    def _check_room(self, tenant: str, name: str) -> None:
        with self._lock:
            own = [v for v in self._voices.values() if v.tenant == tenant]
        if any(v.name == name for v in own):
            raise VoiceNameTaken(f"you already have a voice named {name!r}; delete it or pick another name")
        if len(own) >= self.max_voices_per_tenant:
            raise VoiceLimitReached(f"at most {self.max_voices_per_tenant} voices per key; delete one first")

    def _load(self) -> None:
        for entry in self.root.iterdir():
            if entry.name.startswith((_STAGING, _TRASH)):
                shutil.rmtree(entry, ignore_errors=True)  # an interrupted create or delete
                continue
            if not (_VOICE_ID.fullmatch(entry.name) and entry.is_dir()):
                continue
            try:
                voice = Voice(**json.loads((entry / METADATA).read_text(encoding="utf-8")))
            except (OSError, ValueError, TypeError) as exc:
                log.warning("skipping voice folder %s: unreadable metadata (%s)", entry, exc)
                continue
            if voice.id != entry.name or voice.tenant is None:
                log.warning("skipping voice folder %s: its metadata names another voice", entry)
                continue
            self._voices[voice.id] = voice

    def _lock_for(self, key: str) -> threading.Lock:
        with self._lock:
            return self._encoding.setdefault(key, threading.Lock())

    def _voice_codes(self, voice: Voice) -> np.ndarray:
        with self._lock:
            cached = self._codes.get(voice.id)
        if cached is not None and cached[0] == self.codec_id:
            return cached[1]
        with self._lock_for(voice.id):
            folder = self.root / voice.id
            try:
                if voice.codec == self.codec_id:
                    codes = np.load(folder / CODES)
                else:  # made by another codec: encode the kept clip again, once
                    codes = codes_array(self.encode(read_wav(folder / CLIP), SAMPLE_RATE))
                    np.save(folder / CODES, codes)
                    voice = Voice(**{**asdict(voice), "codec": self.codec_id, "frames": int(codes.shape[1])})
                    _write_json(folder / METADATA, asdict(voice))
            except FileNotFoundError:  # deleted meanwhile
                raise VoiceNotFound(f"no voice {voice.id!r}") from None
            with self._lock:
                if voice.id in self._voices:
                    self._voices[voice.id] = voice
                    self._codes[voice.id] = (self.codec_id, codes)
        return codes

    def _preset_wav(self, name: str) -> Path:
        assert self.presets_dir is not None
        return self.presets_dir / f"{name}.wav"

    def _presets(self) -> list[Voice]:
        """Presets as they are in the folder now (it may change while the server runs)."""
        if self.presets_dir is None or not self.presets_dir.is_dir():
            return []
        voices = []
        for wav in sorted(self.presets_dir.glob("*.wav")):
            text = wav.with_suffix(".txt")
            if not (_PRESET_NAME.fullmatch(wav.stem) and text.is_file()):
                continue
            try:
                info = sf.info(str(wav))
                transcript = " ".join(text.read_text(encoding="utf-8").split())
                stat = wav.stat()
            except (OSError, RuntimeError, UnicodeDecodeError) as exc:
                log.warning("skipping preset %s: %s", wav, exc)
                continue
            voices.append(Voice(id=PRESET_PREFIX + wav.stem, name=wav.stem, tenant=None, transcript=transcript,
                                duration_s=round(info.duration, 3), created_at=int(stat.st_mtime),
                                codec=self.codec_id))
        return voices

    def _preset_digest(self, wav: Path) -> str:
        """The content hash of a preset WAV (and the codec), re-hashed only when the file changes."""
        stat = wav.stat()
        seen = (stat.st_mtime_ns, stat.st_size)
        with self._lock:
            known = self._digests.get(wav)
        if known is not None and known[0] == seen:
            return known[1]
        digest = hashlib.sha256(wav.read_bytes() + self.codec_id.encode()).hexdigest()[:16]
        with self._lock:
            self._digests[wav] = (seen, digest)
        return digest

    def _preset_codes(self, preset: Voice) -> np.ndarray:
        wav = self._preset_wav(preset.name)
        try:
            digest = self._preset_digest(wav)
        except FileNotFoundError:
            raise VoiceNotFound(f"no voice {preset.name!r}") from None
        with self._lock:
            cached = self._codes.get(preset.id)
        if cached is not None and cached[0] == digest:
            return cached[1]
        with self._lock_for(preset.id):  # one encode per preset, however many sessions ask at once
            with self._lock:
                cached = self._codes.get(preset.id)
            if cached is not None and cached[0] == digest:
                return cached[1]
            cache_file = self.root / PRESET_CACHE / f"{preset.name}-{digest}.npy"
            if cache_file.is_file():
                codes = np.load(cache_file)
            else:
                codes = codes_array(self.encode(read_wav(wav), SAMPLE_RATE))
                cache_file.parent.mkdir(exist_ok=True)
                staging = cache_file.with_name(f"{_STAGING}{secrets.token_hex(4)}.npy")
                np.save(staging, codes)
                os.replace(staging, cache_file)
            with self._lock:
                self._codes[preset.id] = (digest, codes)
        return codes


def _write_json(path: Path, obj: dict) -> None:
    staging = path.with_name(f"{_STAGING}{path.name}")
    staging.write_text(json.dumps(obj, indent=1, sort_keys=True), encoding="utf-8")
    os.replace(staging, path)
