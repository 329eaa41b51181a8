"""The model worker: the one thread that runs model, cache, codec and tokenizer work.

Everything that touches the network's weights or the slot cache happens here, in one loop:
  1. apply the commands other threads queued (start a stream, reserve or release capacity);
  2. one scheduler step (prefill chunk + one batched decode forward for every decoding stream);
  3. route the step's outputs: each frame to its stream's codec state (and to the consumer, if it wants
     frames); then decode every window that became final, for all streams in one `decode_windows` call
     (batched across streams on a GPU, a batch of one each on a CPU), and hand the PCM to the consumers;
  4. run one queued job (a reference encode, a tokenizer call, a text-head step): between steps, so a long
     job delays the streams by one job, never by a queue of them;
  5. cancel streams whose consumer stopped reading (a bounded lead over the reader, then a timeout).
Cancelling from another thread only raises a flag (`Generation.cancel`); the slot is freed by step 2.

Consumers receive `Row`, `Frame`, `Pcm` and finally `End` items through a sink: an asyncio queue on their own
event loop (`AsyncSink`), or a list and an event for synchronous callers (`SyncSink`).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from higgs_agent import SAMPLE_RATE
from higgs_agent.model.loader import HiggsBundle
from higgs_agent.streaming.codec_stream import (
    StreamParams,
    StreamState,
    add_frames,
    commit_windows,
    decode_windows,
    plan_windows,
)
from higgs_agent.streaming.generation import Generation, StepOutput
from higgs_agent.streaming.mailbox import EngineClosed, Mailbox
from higgs_agent.streaming.scheduler import BatchScheduler, StepReport

log = logging.getLogger(__name__)
THREAD_NAME = "higgs-model"
_IDLE_WAIT_S = 0.25  # an idle worker still wakes this often: queued requests time out, stalls are found
_FAILED_STEP_BACKOFF_S = 0.05  # after a step raised: a fault outside any stream must not spin a core


class ConsumerStalled(RuntimeError):
    """The stream's consumer stopped reading; the stream was cancelled to free its slot."""


@dataclass
class Row:
    output: StepOutput


@dataclass
class Frame:
    codes: torch.Tensor  # (K,) one complete frame


@dataclass
class Pcm:
    samples: np.ndarray  # float32, 24 kHz


@dataclass
class End:
    error: BaseException | None  # None: finished by itself, or cancelled by its consumer


Item = Row | Frame | Pcm | End


class Sink(Protocol):
    wants: frozenset[str]  # of "rows", "frames", "pcm"
    delivered_samples: int
    consumed_samples: int
    last_read: float

    def put(self, item: Item) -> bool:
        """Hand an item to the consumer (from the worker thread); False once nobody can receive it."""


class AsyncSink:
    """Items onto an asyncio queue of the consumer's loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, wants: frozenset[str]) -> None:
        self.loop = loop
        self.wants = wants
        self.queue: asyncio.Queue[Item] = asyncio.Queue()
        self.delivered_samples = 0  # written by the worker
        self.consumed_samples = 0  # written by the consumer
        self.last_read = time.monotonic()

    def put(self, item: Item) -> bool:
        if isinstance(item, Pcm):
            self.delivered_samples += len(item.samples)
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
            return True
        except RuntimeError:  # the consumer's loop is closed: nobody is listening any more
            return False

    async def get(self) -> Item:
        item = await self.queue.get()
        self.last_read = time.monotonic()
        if isinstance(item, Pcm):
            self.consumed_samples += len(item.samples)
        return item


class SyncSink:
    """Items into a list, for a thread that waits for the end (tests, benchmarks, the CLI's reference)."""

    def __init__(self, wants: frozenset[str]) -> None:
        self.wants = wants
        self.items: list[Item] = []
        self.done = threading.Event()
        self.delivered_samples = self.consumed_samples = 0  # read at once: never stalls
        self.last_read = float("inf")

    def put(self, item: Item) -> bool:
        self.items.append(item)
        if isinstance(item, End):
            self.done.set()
        return True


@dataclass
class _Stream:
    generation: Generation
    sink: Sink
    codec: StreamState = field(default_factory=StreamState)
    dirty: bool = False  # new frames or the end: windows may have become final
    stall: ConsumerStalled | None = None


class ModelWorker:
    def __init__(self, bundle: HiggsBundle, scheduler: BatchScheduler, codec_params: StreamParams,
                 batch_codec: bool, stall_timeout_s: float = 10.0, max_unread_s: float = 5.0) -> None:
        self.bundle = bundle
        self.scheduler = scheduler
        self.codec_params = codec_params
        self.batch_codec = batch_codec
        self.stall_timeout_s = stall_timeout_s
        self.max_unread_samples = int(max_unread_s * SAMPLE_RATE)
        self.steps_failed = 0
        self.mailbox = Mailbox()
        self._streams: dict[Generation, _Stream] = {}
        self._thread = threading.Thread(target=self._run, name=THREAD_NAME, daemon=True)
        self._thread.start()

    # -- any thread ------------------------------------------------------------------------------------

    def command(self, fn: Callable[[], Any]) -> Future:
        """Run `fn` on the worker before its next step (quick bookkeeping: start, reserve, release)."""
        return self.mailbox.put("command", fn)

    def job(self, fn: Callable[[], Any]) -> Future:
        """Run `fn` on the worker between two steps, one job per step (encodes, tokenizer, text head)."""
        return self.mailbox.put("job", fn)

    def attach(self, generation: Generation, sink: Sink) -> None:
        """On the worker (inside a command): route `generation`'s outputs to `sink`."""
        self._streams[generation] = _Stream(generation, sink)

    def cancel(self, generation: Generation) -> None:
        self.scheduler.cancel(generation)
        self.wake()

    def wake(self) -> None:
        with self.mailbox.cond:
            self.mailbox.cond.notify_all()

    def close(self, timeout_s: float = 10.0) -> None:
        """Cancel every stream, end their consumers, fail pending work, stop the thread."""
        self.mailbox.close()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                log.warning("the model worker is still busy %g s after close; leaving it", timeout_s)
            else:
                log.info("model worker stopped")

    @property
    def closed(self) -> bool:
        return self.mailbox.closed

    # -- the worker thread -----------------------------------------------------------------------------

    def _run(self) -> None:
        mailbox = self.mailbox
        while True:
            with mailbox.cond:
                while not (mailbox.closed or mailbox.has_work() or self._busy()):
                    mailbox.cond.wait(_IDLE_WAIT_S)
                    self._check_stalls()
                    if self.scheduler.has_work():  # a queued request's wait may have run out
                        break
                closed = mailbox.closed
            for command, future in mailbox.take_commands():
                _settle(future, command)
            if closed:
                self._shut_down()
                return
            if self.scheduler.has_work():
                self._step()
            self._decode()
            if (job := mailbox.take_job()) is not None:
                fn, future = job
                _settle(future, fn)
            self._check_stalls()

    def _busy(self) -> bool:
        return self.scheduler.has_work() or any(s.dirty for s in self._streams.values())

    def _step(self) -> None:
        try:
            report = self.scheduler.step()  # a step that raises has already failed the streams it involved
        except Exception:  # noqa: BLE001 - the loop must outlive one bad step
            log.exception("engine step failed")
            self.steps_failed += 1
            report = self.scheduler.last_report
            time.sleep(_FAILED_STEP_BACKOFF_S)
        if report is not None:
            self._route(report)

    def _route(self, report: StepReport) -> None:
        for generation, out in report.outputs:
            stream = self._streams.get(generation)
            if stream is None:
                continue
            if "rows" in stream.sink.wants:
                stream.sink.put(Row(out))
            if out.frame is not None:
                if "frames" in stream.sink.wants:
                    stream.sink.put(Frame(out.frame))
                if "pcm" in stream.sink.wants:
                    add_frames(stream.codec, out.frame[None])
                    stream.dirty = True
        for generation in report.ended:
            if generation in self._streams:
                self._streams[generation].dirty = True

    def _decode(self) -> None:
        """Decode the windows that became final, for every stream at once; then end the streams that ended."""
        dirty = [s for s in self._streams.values() if s.dirty]
        if not dirty:
            return
        plans = []
        for stream in dirty:
            stream.dirty = False
            wants_pcm = "pcm" in stream.sink.wants and stream.generation.error is None and stream.stall is None
            final = stream.generation.ended and not stream.generation.cancelled
            plans.append((stream, plan_windows(stream.codec, self.codec_params, final) if wants_pcm else []))
        windows = [w for _, planned in plans for w in planned]
        decoded: list[np.ndarray] = []
        failure: BaseException | None = None
        if windows:
            try:
                with torch.inference_mode():
                    decoded = decode_windows(self.bundle.codec, windows, batch=self.batch_codec)
            except Exception as exc:  # noqa: BLE001 - these streams fail; the worker goes on
                log.exception("codec decode failed")
                failure = exc
        at = 0
        for stream, planned in plans:
            if failure is not None and planned:
                stream.generation.cancel()
                self._end(stream, failure)
                continue
            chunks, at = decoded[at:at + len(planned)], at + len(planned)
            commit_windows(stream.codec, self.codec_params, planned)
            for chunk in chunks:
                stream.generation.stats.mark_first_pcm()
                if not stream.sink.put(Pcm(chunk)):
                    stream.generation.cancel()  # nobody is listening
            if stream.generation.ended:
                self._end(stream, stream.stall or stream.generation.error)

    def _end(self, stream: _Stream, error: BaseException | None) -> None:
        self._streams.pop(stream.generation, None)
        stream.sink.put(End(error))

    def _check_stalls(self) -> None:
        now = time.monotonic()
        for stream in self._streams.values():
            sink = stream.sink
            unread = sink.delivered_samples - sink.consumed_samples
            if (stream.stall is None and unread > self.max_unread_samples
                    and now - sink.last_read > self.stall_timeout_s):
                stream.stall = ConsumerStalled(f"{stream.generation.request_id}: its reader took nothing for "
                                               f"{self.stall_timeout_s:g} s; cancelled to free its slot")
                log.warning("%s", stream.stall)
                stream.generation.cancel()

    def _shut_down(self) -> None:
        for _, future in self.mailbox.drain():
            if future.set_running_or_notify_cancel():
                future.set_exception(EngineClosed("the streaming engine is closed"))
        for stream in list(self._streams.values()):
            stream.generation.cancel()
        for generation in self.scheduler.reap():
            if generation in self._streams:
                self._end(self._streams[generation], EngineClosed("the streaming engine is closed"))
        for stream in list(self._streams.values()):
            self._end(stream, EngineClosed("the streaming engine is closed"))


def _settle(future: Future, fn: Callable[[], Any]) -> None:
    if not future.set_running_or_notify_cancel():
        return
    try:
        future.set_result(fn())
    except BaseException as exc:  # noqa: BLE001 - handed to whoever waits
        future.set_exception(exc)
