"""One request's stream: its prompt, per-stream sampling state, statistics and delivered outputs.

A `Generation` never runs the model: the scheduler (`scheduler.py`) runs every forward, for all streams at
once, and hands each stream its logits. What lives here is what is private to a stream: the delay
pattern, its sampler (own random generator), the frames it completes, its timings, and a small outbox
that the scheduler's thread fills and a consumer (async or not) empties.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from higgs_agent.model.prompts import ModelInputs
from higgs_agent.model.sampling import SamplingSettings
from higgs_agent.streaming.delay import AudioTokenIds, DelayState, FrameAssembler
from higgs_agent.streaming.latency import GenerationStats, now
from higgs_agent.streaming.sampler import CodeSampler

if TYPE_CHECKING:
    from higgs_agent.streaming.scheduler import BatchScheduler

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
    """One stream. Created by `StreamingEngine.start`; the scheduler prefills it, then samples one row per
    step for it via `record`; consumers read `StepOutput`s with `take`. `cancel()` is safe from any thread."""

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
        self.finished = False  # no more rows will come (end of audio, budget, cancel or failure)
        self.cancelled = False
        self.error: BaseException | None = None
        self.scheduler: BatchScheduler | None = None
        self._outbox: deque[StepOutput] = deque()
        self._ended = False  # set after the last output is in the outbox
        self._listener: Callable[[], None] | None = None
        self._lock = threading.Lock()

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
        out = StepOutput(row=row, frame=frame, finished=self.finished)
        self._deliver(out, last=self.finished)
        return out

    def _remember(self, rows: torch.Tensor) -> None:
        if self.history_rows:
            self.history = torch.cat([self.history, rows])[-self.history_rows:]

    # -- ending --------------------------------------------------------------------------------------

    def cancel(self) -> None:
        """Stop this stream at the next step (at once if no step is running) and free its slot. Other
        streams are not disturbed. A no-op once the stream has ended."""
        if self.finished:
            return
        self.cancelled = True
        if self.scheduler is not None:
            self.scheduler.cancel(self)

    def end(self, reason: str, error: BaseException | None = None) -> None:
        """Called by the scheduler when the stream stops early (cancelled, refused, failed)."""
        if not self.finished:
            self.finished = True
            self.error = error
            self.stats.stop_reason = reason
            self.stats.finished_at = now()
        self._deliver(None, last=True)

    # -- outputs -------------------------------------------------------------------------------------

    def set_listener(self, listener: Callable[[], None] | None) -> None:
        """`listener()` is called (on the scheduler's thread) after each output and at the end."""
        with self._lock:
            self._listener = listener

    def take(self) -> tuple[StepOutput | None, bool]:
        """(the oldest undelivered output or None, whether the stream has ended and been drained)."""
        with self._lock:
            if self._outbox:
                return self._outbox.popleft(), False
            return None, self._ended

    def _deliver(self, out: StepOutput | None, last: bool) -> None:
        with self._lock:
            if self._ended:
                return
            if out is not None:
                self._outbox.append(out)
            self._ended = last
            listener = self._listener
        if listener is not None:
            try:
                listener()
            except RuntimeError:  # the consumer's event loop has closed: nobody is listening any more
                log.debug("%s: listener gone", self.request_id)

    def advance(self) -> StepOutput:
        """Synchronous convenience: step the scheduler until this stream has one more output."""
        while True:
            out, ended = self.take()
            if out is not None:
                return out
            if ended or self.scheduler is None:
                if self.error is not None:
                    raise self.error
                if self.cancelled:
                    raise GenerationCancelled(self.request_id)
                raise RuntimeError(f"{self.request_id} already finished")
            self.scheduler.step()


def _valid_audio_rows(inputs: ModelInputs, device: torch.device) -> torch.Tensor | None:
    """The prompt's audio rows (F, K) in placeholder order, masked-out rows dropped (as the model does)."""
    if inputs.audio_input_ids is None:
        return None
    rows = inputs.audio_input_ids[0]
    if inputs.audio_input_ids_mask is not None:
        rows = rows[inputs.audio_input_ids_mask[0].bool()]
    return rows.to(device)
