"""`python -m higgs_agent.install_check`: does the model stack load on this machine? Run by the install
script and first thing by CI, so a broken install fails in seconds with a message that says what to do,
not minutes later as an `undefined symbol` deep inside a test.

What it loads: torch; torchaudio's compiled extension (it must be built for this exact torch: PyPI's
torchaudio declares no torch pin, and a mismatched pair fails only when the extension loads); transformers'
Higgs Audio v2 classes, whose codec imports torchaudio; and one resample through torchaudio.
"""

from __future__ import annotations

import sys
from importlib import metadata

ADVICE = ("Reinstall from the lock file: `bash scripts/install.sh` (it installs the exact torch/torchaudio pair "
          "pinned in pyproject.toml); do not `pip install -U` torch or torchaudio on their own.")


def problems() -> list[str]:
    found: list[str] = []
    try:
        torch_version = metadata.version("torch")
        audio_version = metadata.version("torchaudio")
    except metadata.PackageNotFoundError as exc:
        return [f"{exc.name} is not installed"]
    if torch_version.split("+")[0] != audio_version.split("+")[0]:
        found.append(f"torch {torch_version} and torchaudio {audio_version} are not a matched pair")
    try:
        import torch
        import torchaudio.functional

        torchaudio.functional.resample(torch.zeros(1, 2400), 24_000, 16_000)
    except Exception as exc:  # noqa: BLE001 - any failure here is the message
        found.append(f"torchaudio {audio_version} does not load with torch {torch_version}: "
                     f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
    try:
        from transformers import (  # noqa: F401 - the import is the check
            HiggsAudioV2ForConditionalGeneration,
            HiggsAudioV2Processor,
            HiggsAudioV2TokenizerModel,
        )
        from transformers.models.higgs_audio_v2_tokenizer import modeling_higgs_audio_v2_tokenizer  # noqa: F401
    except Exception as exc:  # noqa: BLE001
        found.append(f"transformers cannot load Higgs Audio v2: {type(exc).__name__}: {exc}")
    return found


def main() -> int:
    found = problems()
    if found:
        for problem in found:
            print(f"install check failed: {problem}", file=sys.stderr)
        print(ADVICE, file=sys.stderr)
        return 1
    print(f"install check ok: torch {metadata.version('torch')}, torchaudio {metadata.version('torchaudio')}, "
          f"transformers {metadata.version('transformers')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
