"""Real speech for tests: espeak-ng synthesis (cached per text), silence padding, speech edges from energy."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from higgs_agent.audio import read_wav
from higgs_agent.bench.common import normalize_text, speech_edges_ms, word_error_rate

CACHE_DIR = Path(tempfile.gettempdir()) / "higgs-agent-test-speech"
ESPEAK = shutil.which("espeak-ng")


def synthesize(text: str, voice: str = "en-us", rate_wpm: int = 150, sample_rate: int = 16_000,
               ) -> tuple[np.ndarray, int]:
    """`text` spoken by espeak-ng -> (float32 mono, sample_rate). Raises RuntimeError without espeak-ng."""
    if ESPEAK is None:
        raise RuntimeError("espeak-ng is not installed (apt-get install espeak-ng)")
    key = hashlib.sha1(f"{voice}|{rate_wpm}|{text}".encode()).hexdigest()[:16]
    path = CACHE_DIR / f"{key}.wav"
    if not path.exists():
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".wav", dir=CACHE_DIR)
        os.close(fd)
        subprocess.run([ESPEAK, "-v", voice, "-s", str(rate_wpm), "-w", tmp, text], check=True,
                       capture_output=True, timeout=60)
        os.replace(tmp, path)  # atomic: concurrent test runs never read half a file
    return read_wav(path, rate=sample_rate), sample_rate


def silence(ms: float, rate: int) -> np.ndarray:
    return np.zeros(int(round(ms * rate / 1000)), dtype=np.float32)


def speech_with_silence(text: str, lead_ms: float, tail_ms: float, rate: int = 16_000, **kwargs,
                        ) -> tuple[np.ndarray, tuple[int, int]]:
    """Speech with `lead_ms` / `tail_ms` of silence around it -> (audio, (start_ms, end_ms) of the speech)."""
    speech, _ = synthesize(text, sample_rate=rate, **kwargs)
    audio = np.concatenate([silence(lead_ms, rate), speech, silence(tail_ms, rate)])
    return audio, speech_edges_ms(audio, rate)


def pad(audio: np.ndarray, rate: int, lead_ms: float = 0, tail_ms: float = 0) -> np.ndarray:
    return np.concatenate([silence(lead_ms, rate), audio, silence(tail_ms, rate)])


__all__ = ["ESPEAK", "normalize_text", "pad", "silence", "speech_edges_ms", "speech_with_silence",
           "synthesize", "word_error_rate"]
