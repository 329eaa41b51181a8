"""The step loop: prefill once, then one forward per audio row with a KV cache, frames out as they complete.

transformers' `generate` cannot stream audio (its streamer only sees text placeholders), so this runs the
same computation step by step over `HiggsAudioV2ForConditionalGeneration`: the network is transformers'
own; what lives here is the loop, the per-stream state and cancellation. With greedy decoding the rows
equal `generate`'s; with sampling they do too under the same seed (see `sampler.py`).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from higgs_agent.model.loader import HiggsBundle
from higgs_agent.model.prompts import ModelInputs
from higgs_agent.model.sampling import SamplingSettings
from higgs_agent.streaming.delay import AudioTokenIds, DelayState, FrameAssembler
from higgs_agent.streaming.latency import GenerationStats, now
from higgs_agent.streaming.sampler import CodeSampler

log = logging.getLogger(__name__)
_request_ids = itertools.count(1)


class GenerationCancelled(RuntimeError):
    """The request was cancelled; its cache is gone."""


@dataclass
class StepOutput:
    row: torch.Tensor  # (K,) the codes sampled this step (delay pattern applied)
    frame: torch.Tensor | None  # (K,) the frame this step completed, if any
    finished: bool


class Generation:
    """One request's decode state. `advance()` runs one forward and samples one row; the first call is the
    prefill. Thread-safe against `cancel()`, which frees the KV cache at once or, mid-step, at the step's end."""

    def __init__(self, bundle: HiggsBundle, inputs: ModelInputs, settings: SamplingSettings) -> None:
        self.request_id = f"gen-{next(_request_ids)}"
        self.model = bundle.model
        self.device = bundle.device
        self.settings = settings
        self.ids = AudioTokenIds.from_config(bundle.config)
        self.inputs = inputs
        self.stats = GenerationStats()
        self.delay = DelayState.start(inputs.input_ids[0].tolist(), self.ids)
        self.sampler = CodeSampler(settings, self.ids, self.device)
        self.frames = FrameAssembler(self.ids.num_codebooks, max_code=self.ids.stream_bos - 1)
        # The rows repetition-aware sampling looks back at (prompt audio included), and no more.
        self.history_rows = settings.ras_window if settings.uses_ras else 0
        self.history = torch.empty(0, self.ids.num_codebooks, dtype=torch.long, device=self.device)
        if inputs.audio_input_ids is not None:
            self._remember(inputs.audio_input_ids[0].to(self.device))
        self.cache: DynamicCache | None = None
        self.attention_mask: torch.Tensor | None = None
        self.finished = False
        self.cancelled = False
        self._lock = threading.Lock()

    @property
    def rows(self) -> int:
        return self.frames.rows_seen

    def advance(self) -> StepOutput:
        with self._lock:
            if self.cancelled:
                self._free()
                raise GenerationCancelled(self.request_id)
            if self.finished:
                raise RuntimeError(f"{self.request_id} already finished")
            logits = self._forward()
            row = self.sampler.sample(logits, self.delay, self.history)
            out = self._record(row)
            if self.cancelled or self.finished:
                self._free()
            return out

    def cancel(self) -> None:
        """Stop at the next step boundary and free the cache (now, if no step is running)."""
        self.cancelled = True
        if self._lock.acquire(blocking=False):
            try:
                self._free()
                if self.stats.stop_reason is None:
                    self.stats.stop_reason = "cancelled"
                    self.stats.finished_at = now()
            finally:
                self._lock.release()

    def _forward(self) -> torch.Tensor:
        start = now()
        with torch.inference_mode():
            if self.cache is None:
                self.cache = DynamicCache(config=self.model.config)
                kwargs = self.inputs.as_kwargs(self.device)
                self.attention_mask = kwargs["attention_mask"]
                out = self.model(**kwargs, past_key_values=self.cache, use_cache=True, logits_to_keep=1)
            else:
                last = self.frames.last_row.view(1, 1, -1)
                self.attention_mask = torch.cat([self.attention_mask, self.attention_mask.new_ones(1, 1)], dim=1)
                out = self.model(audio_input_ids=last, attention_mask=self.attention_mask,
                                 past_key_values=self.cache, use_cache=True)
            logits = out.logits[0, -1].float().view(self.ids.num_codebooks, self.ids.codebook_size)
        elapsed = (now() - start) * 1000.0
        if self.stats.prefill_ms is None:
            self.stats.prefill_ms = elapsed
        else:
            self.stats.step_ms.append(elapsed)
        return logits

    def _record(self, row: torch.Tensor) -> StepOutput:
        ended = self.delay.record(row, self.ids)
        self._remember(row[None])
        frame = self.frames.add(row, ends_audio=ended)
        if frame is not None:
            self.stats.frames += 1
            self.stats.mark_first_frame()
        if ended or self.rows >= self.settings.max_frames:
            self.finished = True
            self.stats.stop_reason = "end_of_audio" if ended else "max_frames"
            self.stats.finished_at = now()
        return StepOutput(row=row.cpu(), frame=None if frame is None else frame.cpu(), finished=self.finished)

    def _remember(self, rows: torch.Tensor) -> None:
        if self.history_rows:
            self.history = torch.cat([self.history, rows])[-self.history_rows:]

    def _free(self) -> None:
        self.cache = None
        self.attention_mask = None


class StreamingEngine:
    """Turns prompts into streams of codec frames. One stream is a batch of one."""

    def __init__(self, bundle: HiggsBundle) -> None:
        self.bundle = bundle

    def start(self, inputs: ModelInputs, settings: SamplingSettings) -> Generation:
        return Generation(self.bundle, inputs, settings)

    async def frames(self, generation: Generation) -> AsyncIterator[torch.Tensor]:
        """Yield each frame (K codes) the step it completes; closing the iterator cancels the request."""
        try:
            while not generation.finished:
                out = await asyncio.to_thread(generation.advance)
                if out.frame is not None:
                    yield out.frame
        finally:
            generation.cancel()
            log.info("%s %s", generation.request_id, generation.stats.summary())

    def run_to_end(self, generation: Generation) -> list[StepOutput]:
        """Synchronous loop (tests, benchmarks): every step's output."""
        outputs = []
        while not generation.finished:
            outputs.append(generation.advance())
        return outputs
