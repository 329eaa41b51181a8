"""How audio codes are sampled: one settings object for transformers' `generate` and our engine alike."""

from __future__ import annotations

from dataclasses import dataclass

from transformers import GenerationConfig


@dataclass(frozen=True)
class SamplingSettings:
    """Sampling per codebook. Defaults follow the Higgs authors (temperature 0.7-1.0, top-p 0.95,
    top-k 50, repetition-aware sampling over 7 frames with at most 2 repeats)."""

    greedy: bool = False
    temperature: float = 0.7
    top_k: int | None = 50
    top_p: float | None = 0.95
    ras_window: int | None = 7  # repetition-aware sampling: frames looked back (None = off)
    ras_max_repeats: int = 2
    max_frames: int = 1500  # generation steps budget (one step = one frame = 40 ms of audio)
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ValueError("temperature must be > 0 (use greedy=True for argmax decoding)")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")
        if self.max_frames < 1:
            raise ValueError("max_frames must be >= 1")

    @property
    def uses_ras(self) -> bool:
        # RAS resamples from the raw distribution: random, so it has no place in greedy decoding.
        return not self.greedy and self.ras_window is not None and self.ras_window > 0

    def generation_config(self, pad_token_id: int, eos_token_id: int) -> GenerationConfig:
        config = GenerationConfig(
            max_new_tokens=self.max_frames,
            do_sample=not self.greedy,
            pad_token_id=pad_token_id,
            eos_token_id=eos_token_id,
            return_dict_in_generate=True,
        )
        if not self.greedy:
            config.temperature = self.temperature
            # transformers reads top_k=None as "its default"; 0 and 1.0 switch the warpers off.
            config.top_k = self.top_k or 0
            config.top_p = self.top_p if self.top_p is not None else 1.0
        if self.uses_ras:
            # HiggsAudioV2GenerationMixin._sample reads these two attributes when present.
            config.ras_win_len = self.ras_window
            config.ras_win_max_num_repeat = self.ras_max_repeats
        return config
