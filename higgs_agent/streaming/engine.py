"""The streaming engine: prompts in, 24 kHz PCM (and codec frames) out while the model is still generating.

transformers' `generate` cannot stream audio (its streamer only sees text placeholders), so the engine
runs the same computation step by step over `HiggsAudioV2ForConditionalGeneration`: the network is
transformers' own. Every stream shares one `BatchScheduler` (slots, batched forwards): a single stream is a
batch of one. With greedy decoding a stream's rows equal `generate`'s; with sampling they do too under the
same seed (see `sampler.py`).

One owner: all model, cache, codec and tokenizer work runs on the engine's `ModelWorker` thread
(`worker.py`). The event loop only holds handles:

    async with engine.lease() as lease:                       # capacity for a whole response
        async with engine.stream(prompt, settings, lease=lease) as speech:
            async for chunk in speech.pcm():                  # float32 24 kHz, as it is decoded
                ...
    codes = await engine.encode(audio, rate)                  # a reference or a user turn -> codec codes

Leaving a `stream` block cancels the stream if it is still running and waits until the worker has let go
of it, so no exit path (an exception, a cancelled task, a client gone) can leak a slot.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch

from higgs_agent.deadlines import StageTimeout, within
from higgs_agent.model.loader import HiggsBundle
from higgs_agent.model.prompts import ModelInputs, SpeechPrompt, VoiceReference, build_inputs, encode_voice
from higgs_agent.model.sampling import SamplingSettings
from higgs_agent.streaming.codec_stream import StreamParams
from higgs_agent.streaming.generation import AtCapacityError, Generation, GenerationCancelled, StepOutput
from higgs_agent.streaming.latency import GenerationStats
from higgs_agent.streaming.scheduler import (
    DEFAULT_CONTEXT_TOKENS,
    DEFAULT_QUEUE_TIMEOUT_S,
    DEFAULT_SLOTS,
    BatchScheduler,
    Lease,
)
from higgs_agent.streaming.worker import (
    AsyncSink,
    ConsumerStalled,
    End,
    EngineClosed,
    Frame,
    ModelWorker,
    Pcm,
    Row,
    SyncSink,
)

__all__ = ["AtCapacityError", "ConsumerStalled", "EngineClosed", "EngineLimits", "Generation", "GenerationCancelled",
           "Lease", "Speech", "StageTimeout", "StepOutput", "StreamingEngine"]

log = logging.getLogger(__name__)
T = TypeVar("T")
_RELEASE_WAIT_S = 10.0  # how long leaving a stream waits for the worker to let go of it


@dataclass(frozen=True)
class EngineLimits:
    """How long the event loop waits on the worker before it gives up with StageTimeout (nothing waits on it
    forever: a lost or stuck piece of work becomes a failed reply, never a silent one). Generous: a busy CPU
    worker answers a command within one step and a job within a few, and delivers a stream's next item within
    one prefill chunk per stream."""

    admission_s: float = 10.0  # a lease, a stream's start (commands: run before the next step)
    item_s: float = 30.0  # between two items of a stream (its first one included)
    job_s: float = 30.0  # an encode, a tokenizer call, a text-head step (jobs: one between two steps)


class Speech:
    """One stream as the event loop sees it: its items, in order, then the end."""

    def __init__(self, engine: StreamingEngine, sink: AsyncSink) -> None:
        self.engine = engine
        self.sink = sink
        self.generation: Generation | None = None
        self.frames: list[torch.Tensor] = []  # every frame so far, when asked for with frames=True
        self.ended = False

    @property
    def stats(self) -> GenerationStats:
        assert self.generation is not None
        return self.generation.stats

    async def items(self) -> AsyncIterator[Pcm | Frame | Row]:
        """Every item until the stream ends; raises the stream's error (not for a cancel by its consumer)."""
        first = True
        while not self.ended:
            bound = self.engine.limits.item_s + (self.engine.queue_wait_s if first else 0.0)
            item = await within("engine_audio", bound, self.sink.get())
            first = False
            if isinstance(item, End):
                self.ended = True
                if item.error is not None:
                    raise item.error
                return
            if isinstance(item, Frame):
                self.frames.append(item.codes)
            yield item

    async def pcm(self, on_frame: Callable[[torch.Tensor], None] | None = None) -> AsyncIterator[np.ndarray]:
        """float32 24 kHz chunks in order; their concatenation is the whole decode of the frames (to >= 40 dB,
        see codec_stream). `on_frame` sees each frame as it completes (with frames=True)."""
        async for item in self.items():
            if isinstance(item, Pcm):
                yield item.samples
            elif isinstance(item, Frame) and on_frame is not None:
                on_frame(item.codes)

    def cancel(self) -> None:
        if self.generation is not None and not self.ended:
            self.engine.worker.cancel(self.generation)

    async def _wait_released(self) -> None:
        while not self.ended:
            if isinstance(await self.sink.get(), End):
                self.ended = True


class StreamingEngine:
    """Turns prompts into streams of audio; up to `slots` streams run together on one model worker.

    `max_queue=0` refuses a request at once when every slot is busy (`AtCapacityError`); `max_queue>0` queues
    up to that many, each refused when no slot frees within `queue_timeout_s`. `prefill_chunk_tokens` bounds
    the prompt work one step may add while others decode (64 on a CPU, 256 on a GPU by default);
    `context_tokens` is the cache allocated per slot up front (it grows as needed). `batch_codec` decodes the
    windows of all streams in one call (on by default on a GPU; on a CPU batching measured slower).
    A stream whose consumer stops reading for `stall_timeout_s` with more than `max_unread_s` of audio
    unread is cancelled (a client that never reads an HTTP body cannot hold a slot)."""

    def __init__(self, bundle: HiggsBundle, slots: int = DEFAULT_SLOTS,
                 prefill_chunk_tokens: int | None = None, max_queue: int = 0,
                 queue_timeout_s: float = DEFAULT_QUEUE_TIMEOUT_S, context_tokens: int = DEFAULT_CONTEXT_TOKENS,
                 batch_codec: bool | None = None, codec_params: StreamParams | None = None,
                 stall_timeout_s: float = 10.0, max_unread_s: float = 5.0,
                 limits: EngineLimits | None = None) -> None:
        self.bundle = bundle
        self.limits = limits or EngineLimits()
        self.scheduler = BatchScheduler(bundle, slots=slots, prefill_chunk_tokens=prefill_chunk_tokens,
                                        max_queue=max_queue, queue_timeout_s=queue_timeout_s,
                                        context_tokens=context_tokens)
        self.ids = self.scheduler.ids
        self.batch_codec = bundle.device.type == "cuda" if batch_codec is None else batch_codec
        self.worker = ModelWorker(bundle, self.scheduler, codec_params or StreamParams(), self.batch_codec,
                                  stall_timeout_s=stall_timeout_s, max_unread_s=max_unread_s)

    @property
    def slots(self) -> int:
        return self.scheduler.slots

    @property
    def queue_wait_s(self) -> float:
        """The longest a stream may wait in the queue for a slot before its first item (0: no queue)."""
        return self.scheduler.queue_timeout_s if self.scheduler.max_queue else 0.0

    @property
    def active_streams(self) -> int:
        """Streams accepted and not yet ended (running, waiting for their prompt, or queued)."""
        return len(self.scheduler.streams())

    @property
    def busy_slots(self) -> int:
        """Capacity in use: leases and streams outside them."""
        return self.scheduler.busy_slots

    # -- the event loop's side -------------------------------------------------------------------------

    @asynccontextmanager
    async def lease(self, name: str = "response") -> AsyncIterator[Lease]:
        """Capacity for a whole response, decided once (AtCapacityError when every slot is busy): the streams
        started under it run whatever else arrives meanwhile; StageTimeout("lease") when the worker does not
        answer in time). A caller cancelled while the worker grants it never holds the lease: it is released."""
        granted = self.worker.command(lambda: self.scheduler.reserve(name))
        try:
            lease = await within("lease", self.limits.admission_s, asyncio.wrap_future(granted))
        except BaseException:
            granted.add_done_callback(self._release_unclaimed)
            raise
        try:
            yield lease
        finally:
            self.worker.command(lambda: self.scheduler.release(lease))

    async def admit(self, name: str) -> None:
        """Returns if a new call would get capacity now, under the rule every response's lease follows, and
        raises AtCapacityError with the scheduler's reason if not: a lease taken and given straight back."""
        async with self.lease(name):
            pass

    @asynccontextmanager
    async def stream(self, prompt: SpeechPrompt | ModelInputs, settings: SamplingSettings,
                     lease: Lease | None = None, frames: bool = False, pcm: bool = True) -> AsyncIterator[Speech]:
        """Start a stream (AtCapacityError, or ValueError for a prompt longer than the context, on entry)."""
        wants = frozenset({"pcm"} if pcm else set()) | (frozenset({"frames"}) if frames else frozenset())
        speech = Speech(self, AsyncSink(asyncio.get_running_loop(), wants))
        started = self.worker.command(lambda: self._start(prompt, settings, lease, speech.sink))
        try:
            speech.generation = await within("stream_start", self.limits.admission_s, asyncio.wrap_future(started))
        except BaseException:
            started.add_done_callback(self._cancel_unclaimed)
            raise
        stalled = False
        try:
            yield speech
        except StageTimeout:
            stalled = True  # the worker is not answering: waiting for it to let go would only add to the stall
            raise
        finally:
            speech.cancel()
            if not stalled:
                await self._let_go(speech)

    async def _let_go(self, speech: Speech) -> None:
        """Wait (bounded) until the worker has let go of the stream, so its slot is free when the block is left.
        A cancel that lands meanwhile is not lost: the wait finishes, then the cancel goes on up."""
        released = asyncio.ensure_future(speech._wait_released())
        deadline = asyncio.get_running_loop().time() + _RELEASE_WAIT_S
        cancelled = False
        while not released.done():
            try:
                await asyncio.wait_for(asyncio.shield(released), max(0.0, deadline - asyncio.get_running_loop().time()))
            except asyncio.CancelledError:
                cancelled = True
            except TimeoutError:
                released.cancel()
                log.warning("%s: the worker had not let go of the stream %g s after it was left",
                            speech.generation.request_id if speech.generation else "a stream", _RELEASE_WAIT_S)
                break
        if cancelled:
            raise asyncio.CancelledError

    def _release_unclaimed(self, granted: Future) -> None:
        """A lease granted to a caller that stopped waiting for it (cancelled, timed out): give it back."""
        if not granted.cancelled() and granted.exception() is None:
            lease = granted.result()
            self.worker.command(lambda: self.scheduler.release(lease))

    def _cancel_unclaimed(self, started: Future) -> None:
        """A stream started for a caller that stopped waiting for it: cancel it (the worker frees its slot)."""
        if not started.cancelled() and started.exception() is None:
            self.worker.cancel(started.result())

    async def encode(self, audio: np.ndarray, sample_rate: int, stage: str = "encode") -> torch.Tensor:
        """Audio (any rate, mono float) -> codec codes (num_codebooks, frames), as the processor encodes."""
        processor = self.bundle.processor
        reference = await self.run(lambda: encode_voice(processor, audio, sample_rate, ""), stage=stage)
        return reference.codes

    async def voice(self, audio: np.ndarray, sample_rate: int, transcript: str,
                    stage: str = "encode") -> VoiceReference:
        """A voice to clone from its sound: encoded to codes here (the prompt takes codes)."""
        return VoiceReference(codes=await self.encode(audio, sample_rate, stage), transcript=transcript)

    async def count_tokens(self, text: str) -> int:
        """Text tokens as the Higgs model counts them (for usage), on the model's worker."""
        tokenizer = self.bundle.tokenizer
        return await self.run(lambda: len(tokenizer(text, add_special_tokens=False)["input_ids"]),
                              stage="count_tokens")

    @property
    def name(self) -> str:
        return "local"

    @property
    def model_name(self) -> str:
        return self.bundle.model_source

    def health(self) -> dict[str, Any]:
        """What /health says of the engine: its model and how busy it is."""
        return {"model": self.bundle.model_source, "device": str(self.bundle.device), "slots": self.slots,
                "busy_slots": self.busy_slots, "leases": self.scheduler.leases, "streams": self.active_streams}

    async def run(self, fn: Callable[[], T], stage: str = "engine_job") -> T:
        """Any other model-thread work (tokenizer calls, the text head), between two steps; StageTimeout(stage)
        when it has not run within the job bound (it is then dropped if it had not started)."""
        return await within(stage, self.limits.job_s, asyncio.wrap_future(self.worker.job(fn)))

    # -- synchronous callers (tests, benchmarks, the CLI's reference path) --------------------------

    def generate(self, prompt: SpeechPrompt | ModelInputs, settings: SamplingSettings,
                 timeout_s: float = 600.0) -> list[StepOutput]:
        """Every output of one stream, blocking until it ends (through the worker, like any stream)."""
        sink = SyncSink(frozenset({"rows"}))
        self.worker.command(lambda: self._start(prompt, settings, None, sink)).result(timeout_s)
        if not sink.done.wait(timeout_s):
            raise TimeoutError(f"the stream did not end within {timeout_s:g} s")
        end = sink.items[-1]
        assert isinstance(end, End)
        if end.error is not None:
            raise end.error
        return [item.output for item in sink.items if isinstance(item, Row)]

    def warm_up(self, prompt: SpeechPrompt, settings: SamplingSettings) -> SyncSink:
        """Speak `prompt` once through the whole path (prefill, steps, codec decode) on the worker, so the first
        caller does not pay for first-call initialisation. Returns at once; the sink's `done` is set at the end."""
        sink = SyncSink(frozenset({"pcm"}))
        self.worker.command(lambda: self._start(prompt, settings, None, sink))
        return sink

    def close(self) -> None:
        """Stop the worker; running streams end with EngineClosed, new requests are refused."""
        self.worker.close()

    # -- on the worker --------------------------------------------------------------------------------

    def _start(self, prompt: SpeechPrompt | ModelInputs, settings: SamplingSettings, lease: Lease | None,
               sink: Any) -> Generation:  # noqa: ANN401 - a worker Sink
        inputs = build_inputs(self.bundle.processor, prompt) if isinstance(prompt, SpeechPrompt) else prompt
        generation = self.scheduler.start(inputs, settings, lease)
        self.worker.attach(generation, sink)
        return generation
