"""The streaming engine: prompts in, codec frames out as they complete, many streams per model.

transformers' `generate` cannot stream audio (its streamer only sees text placeholders), so the engine
runs the same computation step by step over `HiggsAudioV2ForConditionalGeneration`: the network is
transformers' own. Every stream shares one `BatchScheduler` (slots, batched forwards; `scheduler.py`):
a single stream is a batch of one. With greedy decoding a stream's rows equal `generate`'s; with sampling
they do too under the same seed (see `sampler.py`).

Threads: one thread at a time runs `scheduler.step()`. Async consumers (`frames`) are fed by a background
driver thread that steps while any stream needs it and sleeps otherwise; outputs reach the event loop
through `loop.call_soon_threadsafe`. Synchronous callers (`run_to_end`, tests, benchmarks) may step
themselves; steps never overlap.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator

import torch

from higgs_agent.model.loader import HiggsBundle
from higgs_agent.model.prompts import ModelInputs
from higgs_agent.model.sampling import SamplingSettings
from higgs_agent.streaming.codec_batch import CodecBatcher
from higgs_agent.streaming.delay import AudioTokenIds
from higgs_agent.streaming.generation import (
    AtCapacityError,
    Generation,
    GenerationCancelled,
    StepOutput,
)
from higgs_agent.streaming.scheduler import (
    DEFAULT_CONTEXT_TOKENS,
    DEFAULT_QUEUE_TIMEOUT_S,
    DEFAULT_SLOTS,
    BatchScheduler,
    StepReport,
)

__all__ = ["AtCapacityError", "Generation", "GenerationCancelled", "StepOutput", "StepReport", "StreamingEngine"]

log = logging.getLogger(__name__)
_IDLE_WAIT_S = 0.5  # how often an idle driver re-checks (queued requests time out even with no wake-up)
_FAILED_STEP_BACKOFF_S = 0.05  # after a step raised: a fault outside any stream must not spin a core


class StreamingEngine:
    """Turns prompts into streams of codec frames; up to `slots` streams run together.

    `max_queue=0` refuses a request at once when every slot is busy (`AtCapacityError` from `start`);
    `max_queue>0` queues up to that many, each refused (the error comes out of `frames`) when no slot
    frees within `queue_timeout_s`. `prefill_chunk_tokens` bounds the prompt work one step may add while
    others decode (default 64 on a CPU, 256 on a GPU); `context_tokens` is the cache allocated per slot
    up front (it grows as needed). `batch_codec` shares one codec worker among the PCM streams
    (`codec_batch.py`): on by default on a GPU; off on a CPU, where batched decoding measured slower."""

    def __init__(self, bundle: HiggsBundle, slots: int = DEFAULT_SLOTS,
                 prefill_chunk_tokens: int | None = None, max_queue: int = 0,
                 queue_timeout_s: float = DEFAULT_QUEUE_TIMEOUT_S, context_tokens: int = DEFAULT_CONTEXT_TOKENS,
                 batch_codec: bool | None = None) -> None:
        self.bundle = bundle
        self.ids = AudioTokenIds.from_config(bundle.config)
        self.scheduler = BatchScheduler(bundle, slots=slots, prefill_chunk_tokens=prefill_chunk_tokens,
                                        max_queue=max_queue, queue_timeout_s=queue_timeout_s,
                                        context_tokens=context_tokens)
        self.batch_codec = bundle.device.type == "cuda" if batch_codec is None else batch_codec
        self._driver: threading.Thread | None = None
        self._codec_batcher: CodecBatcher | None = None
        self._driver_lock = threading.Lock()
        self._closed = False

    @property
    def slots(self) -> int:
        return self.scheduler.slots

    @property
    def active_streams(self) -> int:
        """Streams accepted and not yet ended (running, waiting for their prompt, or queued)."""
        return len(self.scheduler.streams())

    @property
    def codec_batcher(self) -> CodecBatcher | None:
        """The codec worker shared by this engine's PCM streams (`speech.stream_pcm`), if `batch_codec`."""
        if not self.batch_codec:
            return None
        with self._driver_lock:
            if self._codec_batcher is None:
                self._codec_batcher = CodecBatcher(self.bundle.codec)
            return self._codec_batcher

    def start(self, inputs: ModelInputs, settings: SamplingSettings) -> Generation:
        """Accept a request: it joins the batch at the next step. Raises AtCapacityError when full, and
        RuntimeError once the engine is closed (no driver would ever run it)."""
        if self._closed:
            raise RuntimeError("streaming engine closed")
        generation = Generation(self.ids, inputs, settings, self.bundle.device)
        self.scheduler.submit(generation)
        return generation

    def step(self) -> StepReport:
        """Run one scheduler step here, synchronously (tests, benchmarks)."""
        return self.scheduler.step()

    async def frames(self, generation: Generation) -> AsyncIterator[torch.Tensor]:
        """Yield each frame (K codes) the step it completes. Closing the iterator (or cancelling the task)
        cancels the stream: its slot frees at once, or at the end of a step running at that moment."""
        loop = asyncio.get_running_loop()
        wake = asyncio.Event()
        generation.set_listener(lambda: loop.call_soon_threadsafe(wake.set))
        self._ensure_driver()
        try:
            while True:
                wake.clear()
                out, ended = generation.take()
                if out is not None:
                    if out.frame is not None:
                        yield out.frame
                    continue
                if ended:
                    if generation.error is not None:
                        raise generation.error
                    return
                await wake.wait()
        finally:
            generation.set_listener(None)
            generation.cancel()
            log.info("%s %s", generation.request_id, generation.stats.summary())

    def run_to_end(self, generation: Generation) -> list[StepOutput]:
        """Synchronous loop (tests, benchmarks): every output of this stream, stepping as needed."""
        outputs = []
        while True:
            out, ended = generation.take()
            if out is not None:
                outputs.append(out)
            elif ended:
                if generation.error is not None:
                    raise generation.error
                return outputs
            else:
                self.scheduler.step()

    def close(self) -> None:
        """Stop the driver thread (streams still running are cancelled)."""
        self._closed = True
        for generation in self.scheduler.streams():
            generation.cancel()
        self.scheduler.wake()  # so the driver sees _closed
        if self._driver is not None:
            self._driver.join(timeout=5)
        # The driver may have exited between steps with cancelled streams not yet ended: end them now,
        # after any running step, so their consumers see the end instead of waiting forever.
        self.scheduler.reap()
        if self._codec_batcher is not None:
            self._codec_batcher.close()

    def _ensure_driver(self) -> None:
        with self._driver_lock:
            if self._driver is None or not self._driver.is_alive():
                self._driver = threading.Thread(target=self._drive, name="higgs-engine", daemon=True)
                self._driver.start()

    def _drive(self) -> None:
        while not self._closed:
            if not self.scheduler.wait_for_work(_IDLE_WAIT_S):
                continue
            try:
                self.scheduler.step()  # a step that raises has already failed the streams it involved
            except Exception:  # noqa: BLE001 - the loop must outlive one bad step
                log.exception("engine step failed")
                time.sleep(_FAILED_STEP_BACKOFF_S)
