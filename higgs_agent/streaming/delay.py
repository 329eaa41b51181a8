"""The delay pattern, step by step: which codebooks are forced to stream BOS/EOS, and which frames are done.

Codebook k runs k steps behind codebook 0. Generation opens with an all-BOS row; codebook k is forced to
BOS for its first k+1 rows. Once any codebook emits EOS (or the previous text token was the delay token),
the next text token is the delay token, and each step after it one more codebook is forced to EOS, until
the all-EOS row ends the audio. This mirrors `HiggsAudioV2DelayPatternLogitsProcessor` and the text-token
bookkeeping of `HiggsAudioV2GenerationMixin._sample`, kept per stream so streams can join a batch at any step.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class AudioTokenIds:
    """Ids the step loop needs, read from the model config."""

    num_codebooks: int
    codebook_size: int  # codes + stream BOS + stream EOS
    stream_bos: int
    stream_eos: int
    audio_out_bos: int  # text token that opens generated audio
    audio_token: int  # text placeholder for an audio frame
    delay_token: int  # text placeholder during the EOS cascade
    text_eos: int  # text token that ends the turn

    @classmethod
    def from_config(cls, config) -> AudioTokenIds:  # noqa: ANN001 - HiggsAudioV2Config
        return cls(
            num_codebooks=config.num_codebooks,
            codebook_size=config.codebook_size,
            stream_bos=config.audio_stream_bos_id,
            stream_eos=config.audio_stream_eos_id,
            audio_out_bos=config.audio_bos_token_id,
            audio_token=config.audio_token_id,
            delay_token=config.audio_delay_token_id,
            text_eos=config.eos_token_id if isinstance(config.eos_token_id, int) else config.eos_token_id[0],
        )


def _countdown(prompt_tail: list[int], marker: int, num_codebooks: int) -> torch.Tensor:
    """[1..K] shifted by where `marker` first appears among the last K prompt tokens (as the port does)."""
    pattern = torch.arange(1, num_codebooks + 1)
    tail = prompt_tail[-num_codebooks:]
    if marker in tail:
        return pattern - (num_codebooks - tail.index(marker))
    return pattern


@dataclass
class DelayState:
    """Per-stream delay-pattern state."""

    bos_countdown: torch.Tensor  # (K,) codebook k is forced to BOS while its count is >= 0
    eos_countdown: torch.Tensor  # (K,) counts down after each delay token; <= 0 forces EOS
    last_text_token: int

    @classmethod
    def start(cls, prompt_ids: list[int], ids: AudioTokenIds) -> DelayState:
        k = ids.num_codebooks
        tail = prompt_ids[-k:]
        bos = _countdown(tail, ids.audio_out_bos, k) if ids.audio_out_bos in tail else torch.zeros(k, dtype=torch.long)
        return cls(bos, _countdown(tail, ids.delay_token, k), prompt_ids[-1])

    def masks(self, ids: AudioTokenIds) -> tuple[torch.Tensor, torch.Tensor]:
        """This step's (forced_bos, forced_eos) codebook masks, each (K,) bool, without advancing the
        countdowns: a batch samples first and calls `advance` only once every draw succeeded, so a failed
        draw leaves the state as it was."""
        forced_bos = self.bos_countdown >= 0
        eos = self.eos_countdown - 1 if self.last_text_token == ids.delay_token else self.eos_countdown
        return forced_bos, eos <= 0

    def advance(self, ids: AudioTokenIds) -> None:
        """Move the countdowns past this step (what `masks` looked ahead to)."""
        self.bos_countdown -= (self.bos_countdown >= 0).long()
        if self.last_text_token == ids.delay_token:
            self.eos_countdown -= 1

    def step_masks(self, ids: AudioTokenIds) -> tuple[torch.Tensor, torch.Tensor]:
        """`masks`, then `advance`."""
        masks = self.masks(ids)
        self.advance(ids)
        return masks

    def constrain(self, scores: torch.Tensor, ids: AudioTokenIds) -> torch.Tensor:
        """Mask (K, V) scores for this step and advance the countdowns."""
        forced_bos, forced_eos = self.step_masks(ids)
        return apply_forcing(scores[None], forced_bos[None], forced_eos[None], ids)[0]

    def record(self, row: torch.Tensor, ids: AudioTokenIds) -> bool:
        """Book the sampled row; returns True when it ends the audio (all codebooks at EOS)."""
        is_eos = row == ids.stream_eos
        if bool(is_eos.all()):
            self.last_text_token = ids.text_eos
            return True
        if bool(is_eos.any()) or self.last_text_token == ids.delay_token:
            self.last_text_token = ids.delay_token
        else:
            self.last_text_token = ids.audio_token
        return False


def apply_forcing(scores: torch.Tensor, forced_bos: torch.Tensor, forced_eos: torch.Tensor,
                  ids: AudioTokenIds) -> torch.Tensor:
    """scores (B, K, V); forced_* (B, K) bool. A forced codebook keeps only its BOS (then EOS) score, as the
    port's logits processor does, BOS first: a codebook forced both ways ends all -inf there too."""
    vocab = torch.arange(scores.shape[-1], device=scores.device)
    forced_bos, forced_eos = forced_bos.to(scores.device)[..., None], forced_eos.to(scores.device)[..., None]
    scores = scores.masked_fill(forced_bos & (vocab != ids.stream_bos), -float("inf"))
    return scores.masked_fill(forced_eos & (vocab != ids.stream_eos), -float("inf"))


@dataclass
class FrameAssembler:
    """Reverts the delay pattern incrementally: frame j is codebook k of row j+1+k, so it is complete the
    step row j+K arrives. Codes are clipped to the codec's range, as `HiggsAudioV2Processor.batch_decode`
    does (frames at the very end can hold EOS codes from the cascade)."""

    num_codebooks: int
    max_code: int  # largest real code (stream BOS - 1)
    rows_seen: int = 0
    recent: deque[torch.Tensor] = field(default_factory=deque)  # the last K rows: all a frame needs

    @property
    def last_row(self) -> torch.Tensor:
        return self.recent[-1]

    def add(self, row: torch.Tensor, ends_audio: bool = False) -> torch.Tensor | None:
        """Book a row; return the frame it completes, if any. The all-EOS row that ends the audio
        completes none."""
        self.rows_seen += 1
        self.recent.append(row)
        if len(self.recent) > self.num_codebooks:
            self.recent.popleft()
        if ends_audio or self.rows_seen <= self.num_codebooks:  # row 0 is the opening all-BOS row
            return None
        # frame j = codebook k of row j+1+k; this row is j+K, so row j+1+k is recent[k]
        frame = torch.stack([self.recent[k][k] for k in range(self.num_codebooks)])
        return frame.clamp(0, self.max_code)
