"""One step's audio logits -> one row of codes, exactly as `HiggsAudioV2GenerationMixin._sample` does it.

Same order: delay-pattern masks, then transformers' own temperature / top-k / top-p warpers per codebook,
then multinomial (or argmax), then repetition-aware sampling (RAS). Each stream draws from its own
`torch.Generator`; a generator seeded with N draws the same numbers as `torch.manual_seed(N)` followed by
`generate`, so a seeded stream reproduces `generate` exactly (tested), and streams sharing a batch cannot
perturb each other's randomness.

`sample_rows` does a whole batch: the masks, argmax and warpers run once over all streams (they act row by
row, so each stream's scores are what it would get alone); only the draws and RAS stay per stream, each
on its own generator.
"""

from __future__ import annotations

import torch
from transformers import (
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from higgs_agent.model.sampling import SamplingSettings
from higgs_agent.streaming.delay import AudioTokenIds, DelayState, apply_forcing


def build_warpers(settings: SamplingSettings) -> LogitsProcessorList:
    """The warpers `generate` builds for these settings, in its order."""
    warpers = LogitsProcessorList()
    if settings.greedy:
        return warpers
    if settings.temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(settings.temperature))
    if settings.top_k:
        warpers.append(TopKLogitsWarper(top_k=settings.top_k, min_tokens_to_keep=1))
    if settings.top_p is not None and settings.top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p=settings.top_p, min_tokens_to_keep=1))
    return warpers


class CodeSampler:
    """Samples rows for one stream."""

    def __init__(self, settings: SamplingSettings, ids: AudioTokenIds, device: torch.device) -> None:
        self.settings = settings
        self.ids = ids
        self.warpers = build_warpers(settings)
        self.generator: torch.Generator | None = None
        if not settings.greedy:
            self.generator = torch.Generator(device=device)
            if settings.seed is not None:
                self.generator.manual_seed(settings.seed)
            else:
                self.generator.seed()

    @property
    def warper_key(self) -> tuple:
        """Streams with equal keys can share one pass of the warpers."""
        return (self.settings.temperature, self.settings.top_k, self.settings.top_p)

    def sample(self, logits: torch.Tensor, delay: DelayState, history: torch.Tensor | None) -> torch.Tensor:
        """logits: (K, V) float32 raw audio logits; history: (n, K) earlier rows incl. prompt audio rows."""
        return sample_rows(logits[None], [self], [delay], [history])[0]

    def draw(self, probs: torch.Tensor, logits: torch.Tensor, history: torch.Tensor | None) -> torch.Tensor:
        """One row from warped probabilities (K, V), then repetition-aware resampling from raw `logits`."""
        row = torch.multinomial(probs, 1, generator=self.generator).squeeze(1)
        if self.settings.uses_ras and history is not None and history.shape[0] > 0:
            row = self._resample_repeats(row, logits, history)
        return row

    def _resample_repeats(self, row: torch.Tensor, logits: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        """A code already seen >= max_repeats times in the window is redrawn from the raw distribution."""
        window = history[-self.settings.ras_window:]
        real = (window != self.ids.stream_bos) & (window != self.ids.stream_eos)
        repeats = ((window == row[None]) & real).sum(dim=0)
        redo = repeats >= self.settings.ras_max_repeats
        if bool(redo.any()):
            fresh = logits[redo].softmax(dim=-1).multinomial(1, replacement=True, generator=self.generator)
            row = row.clone()
            row[redo] = fresh.view(-1)
        return row


def sample_rows(logits: torch.Tensor, samplers: list[CodeSampler], delays: list[DelayState],
                histories: list[torch.Tensor | None]) -> torch.Tensor:
    """logits (B, K, V) float32, one row per stream -> codes (B, K). Advances each stream's delay state.
    All or nothing: if it raises (say NaN logits make `multinomial` fail), no delay state or generator has
    moved, so the caller can sample the streams one by one to find the one at fault."""
    ids = samplers[0].ids
    masks = [delay.masks(ids) for delay in delays]
    saved = [s.generator.get_state() if s.generator is not None else None for s in samplers]  # ~1 us each
    try:
        scores = apply_forcing(logits, torch.stack([m[0] for m in masks]), torch.stack([m[1] for m in masks]), ids)
        rows = scores.argmax(dim=-1)  # the greedy streams' answer; sampled rows are replaced below
        groups: dict[tuple, list[int]] = {}
        for b, sampler in enumerate(samplers):
            if not sampler.settings.greedy:
                groups.setdefault(sampler.warper_key, []).append(b)
        k, vocab = scores.shape[1], scores.shape[2]
        for members in groups.values():
            picked = scores[members].view(-1, vocab)  # (n * K, V): the warpers act row by row
            # The warpers' input_ids argument is unused by these three; pass an empty placeholder.
            probs = samplers[members[0]].warpers(torch.empty(0, dtype=torch.long), picked).softmax(dim=-1)
            for n, b in enumerate(members):
                rows[b] = samplers[b].draw(probs[n * k:(n + 1) * k], logits[b], histories[b])
    except BaseException:
        for sampler, state in zip(samplers, saved):
            if state is not None:
                sampler.generator.set_state(state)
        raise
    for delay in delays:
        delay.advance(ids)
    return rows
