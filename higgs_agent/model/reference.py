"""Offline synthesis with transformers' own `generate`: the reference the streaming engine must match."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from higgs_agent import HOP_LENGTH
from higgs_agent.model.loader import HiggsBundle
from higgs_agent.model.prompts import ModelInputs
from higgs_agent.model.sampling import SamplingSettings


@dataclass
class ReferenceResult:
    rows: torch.Tensor  # (steps, num_codebooks) generated rows, delay pattern still applied
    audio: np.ndarray  # float32 mono at 24 kHz

    @property
    def frames(self) -> int:
        """Codec frames in `audio`: the rows minus the opening BOS row, the 7 rows of delay and an ending
        all-EOS row, if any."""
        return len(self.audio) // HOP_LENGTH


def generate_rows(bundle: HiggsBundle, inputs: ModelInputs, settings: SamplingSettings) -> torch.Tensor:
    """The audio rows `generate` produces after the prompt: (steps, num_codebooks), delayed."""
    if settings.seed is not None:
        torch.manual_seed(settings.seed)
    config = settings.generation_config(bundle.config.pad_token_id, bundle.config.eos_token_id)
    with torch.inference_mode():
        out = bundle.model.generate(**inputs.as_kwargs(bundle.device), generation_config=config)
    return out.audio_sequences[0, inputs.prompt_frames:].cpu()


def decode_rows(bundle: HiggsBundle, rows: torch.Tensor) -> np.ndarray:
    """Delayed rows -> waveform, through the processor's own revert-and-decode."""
    if rows.shape[0] <= bundle.num_codebooks:  # not even one whole frame came out
        return np.zeros(0, dtype=np.float32)
    with torch.inference_mode():
        audio = bundle.processor.decode(rows[None].to(bundle.codec.device))
    return audio.float().numpy().reshape(-1)


def synthesize_reference(bundle: HiggsBundle, inputs: ModelInputs, settings: SamplingSettings) -> ReferenceResult:
    rows = generate_rows(bundle, inputs, settings)
    return ReferenceResult(rows=rows, audio=decode_rows(bundle, rows))
