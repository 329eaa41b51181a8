"""One request's stream: its prompt, per-stream sampling state, statistics and what it has produced.

A `Generation` never runs the model: the scheduler (`scheduler.py`) runs every forward, for all streams at
once, and hands each stream its logits. What lives here is what is private to a stream: the delay pattern,
its sampler (own random generator), the frames it completes, and its timings. Its outputs leave through the
scheduler's `StepReport`, the one path every consumer reads them from.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass

import torch

from higgs_agent.model.prompts import ModelInputs
from higgs_agent.model.sampling import SamplingSettings
from higgs_agent.streaming.delay import AudioTokenIds, DelayState, FrameAssembler
from higgs_agent.streaming.latency import GenerationStats, now
from higgs_agent.streaming.sampler import CodeSampler

log = logging.getLogger(__name__)
_request_ids = itertools.count(1)


class GenerationCancelled(RuntimeError):
    """The request was cancelled; its cache slot is gone."""


class AtCapacityError(RuntimeError):
    """Every slot is busy (and the wait queue, if any, is full or timed out): the request was refused."""


@dataclass
class StepOutput:
    row: torch.Tensor  # (K,) the codes sampled this step (delay pattern applied)
    frame: torch.Tensor | None  # (K,) the frame this step completed, if any
    finished: bool


@dataclass
class PromptChunk:
    """Model inputs for prompt tokens [start, start + length) (audio rows sliced to their placeholders)."""

    start: int
    length: int
    kwargs: dict[str, torch.Tensor]
    last: bool  # this chunk completes the prompt: its logits give the first row


class Generation:
    """One stream. The scheduler prefills it, then samples one row per step for it (`record`). `cancel()` may
    be called from any thread: it only raises a flag, which the scheduler acts on at its next step."""

    def __init__(self, ids: AudioTokenIds, inputs: ModelInputs, settings: SamplingSettings,
                 device: torch.device) -> None:
        self.request_id = f"gen-{next(_request_ids)}"
        self.ids = ids
        self.inputs = inputs
        self.settings = settings
        self.device = device
        self.stats = GenerationStats()
        self.delay = DelayState.start(inputs.input_ids[0].tolist(), ids)
        self.sampler = CodeSampler(settings, ids, device)
        self.frames = FrameAssembler(ids.num_codebooks, max_code=ids.stream_bos - 1)
        # The rows repetition-aware sampling looks back at (prompt audio included), and no more.
        self.history_rows = settings.ras_window if settings.uses_ras else 0
        self.history = torch.empty(0, ids.num_codebooks, dtype=torch.long, device=device)
        self.prompt_ids = inputs.input_ids.to(device)
        self.prompt_audio = _valid_audio_rows(inputs, device)
        if inputs.audio_input_ids is not None:  # generate's RAS window reads the prompt's rows as given
            self._remember(inputs.audio_input_ids[0].to(device))
        self.max_rows = settings.max_frames  # the scheduler lowers it if the context would overflow
        self.prefilled = 0  # prompt tokens already in the cache
        self.audio_prefilled = 0  # prompt audio rows already in the cache
        self.slot: int | None = None  # set by the scheduler while the stream holds a cache slot
        self.lease: object | None = None  # the reservation it runs under, if any (scheduler.Lease)
        self.finished = False  # no more rows will come (end of audio, budget, cancel or failure)
        self.cancelled = False
        self.ended = False  # the scheduler is done with it: no output will follow
        self.error: BaseException | None = None

    @property
    def rows(self) -> int:
        return self.frames.rows_seen

    @property
    def prompt_tokens(self) -> int:
        return int(self.prompt_ids.shape[1])

    # -- prompt --------------------------------------------------------------------------------------

    def next_prompt_chunk(self, max_tokens: int | None) -> PromptChunk:
        """The next prompt piece: up to the next multiple of `max_tokens`, or (None) all the rest."""
        start = self.prefilled
        stop = self.prompt_tokens if max_tokens is None else min(self.prompt_tokens,
                                                                  (start // max_tokens + 1) * max_tokens)
        ids = self.prompt_ids[:, start:stop]
        kwargs = {"input_ids": ids}
        if self.prompt_audio is not None:
            placeholders = int(((ids == self.ids.audio_token) | (ids == self.ids.delay_token)).sum())
            if placeholders:
                rows = self.prompt_audio[self.audio_prefilled:self.audio_prefilled + placeholders]
                kwargs["audio_input_ids"] = rows[None]
                kwargs["audio_input_ids_mask"] = torch.ones(1, placeholders, dtype=torch.bool, device=self.device)
        return PromptChunk(start, stop - start, kwargs, stop == self.prompt_tokens)

    def prompt_chunk_done(self, chunk: PromptChunk, elapsed_ms: float) -> None:
        self.prefilled = chunk.start + chunk.length
        if "audio_input_ids" in chunk.kwargs:
            self.audio_prefilled += int(chunk.kwargs["audio_input_ids"].shape[1])
        self.stats.prefill_ms = (self.stats.prefill_ms or 0.0) + elapsed_ms

    # -- rows ----------------------------------------------------------------------------------------

    def record(self, row: torch.Tensor, row_on_device: torch.Tensor) -> StepOutput:
        """Book one sampled row (`row` on the CPU, the same on the model's device) and queue its output."""
        ended = self.delay.record(row, self.ids)
        self._remember(row_on_device[None])
        frame = self.frames.add(row, ends_audio=ended)
        if frame is not None:
            self.stats.frames += 1
            self.stats.mark_first_frame()
        if ended or self.rows >= self.max_rows:
            self.finished = True
            self.stats.stop_reason = "end_of_audio" if ended else "max_frames"
            self.stats.finished_at = now()
        return StepOutput(row=row, frame=frame, finished=self.finished)

    def _remember(self, rows: torch.Tensor) -> None:
        if self.history_rows:
            self.history = torch.cat([self.history, rows])[-self.history_rows:]

    # -- ending --------------------------------------------------------------------------------------

    def cancel(self) -> None:
        """Stop this stream at the scheduler's next step, which frees its slot; others are not disturbed."""
        if not self.finished:
            self.cancelled = True

    def end(self, reason: str | None, error: BaseException | None = None) -> None:
        """Called by the scheduler when it lets go of the stream (`reason` None: it finished by itself)."""
        if not self.finished:
            self.finished = True
            self.error = error
            self.stats.stop_reason = reason
            self.stats.finished_at = now()
        self.ended = True


def _valid_audio_rows(inputs: ModelInputs, device: torch.device) -> torch.Tensor | None:
    """The prompt's audio rows (F, K) in placeholder order, masked-out rows dropped (as the model does)."""
    if inputs.audio_input_ids is None:
        return None
    rows = inputs.audio_input_ids[0]
    if inputs.audio_input_ids_mask is not None:
        rows = rows[inputs.audio_input_ids_mask[0].bool()]
    return rows.to(device)
