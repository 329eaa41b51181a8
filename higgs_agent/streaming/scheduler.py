"""Continuous batching: a fixed number of cache slots, one batched forward per step for every decoding stream.

A step (`BatchScheduler.step`, synchronous; one caller at a time) does, in order:
  1. frees the slots of cancelled streams and refuses queued requests whose wait ran out;
  2. gives free slots to newcomers;
  3. runs at most ONE prompt chunk (<= `prefill_chunk_tokens` tokens) of one newcomer, as a batch of one
     written straight into its slot, so a long prompt stalls running streams by one chunk at most; with
     nothing decoding, whole prompts go in one forward each (nobody to stall, and the fastest start: a
     lone stream's prefill is `generate`'s). The chunk that ends the prompt yields the stream's first
     row, and the stream joins the decode below in the same step;
  4. ONE forward over all decoding streams (audio_input_ids (B, 1, K): each stream's last row), each row at
     its own position, padding hidden by the attention mask (see `kv_slots.py`);
  5. samples every stream's next row (`sampler.sample_rows`) and delivers it to the stream's outbox.

Failures stay with the stream at fault: a prompt forward, a cache that cannot grow, or a draw that raises
(NaN logits make `multinomial` raise) fails that stream (`stop_reason` "failed", the error comes out of
its consumer) and the others go on; a failed stream's slot is zeroed. A batched forward that raises fails
the streams in it. Anything else that escapes a step fails every stream holding a slot (their cache state
is unknown) rather than raising again on every later step.

Decoding streams always hold slots 0..B-1, so the forward reads cache views, never gathered copies: when a
stream leaves, the last one moves into its slot; when a prompt is done, its slot swaps to position B.

Capacity: `submit` refuses at once (`AtCapacityError`) when every slot is taken, or, with `max_queue > 0`,
queues up to `max_queue` requests, each refused if no slot frees within `queue_timeout_s`. A `Lease`
(`reserve()`) holds a slot's worth of capacity for a whole response: the streams submitted under it (one at
a time, one per phrase) are admitted whatever else arrived in between, so a reply that has started can finish.

Threads: one thread owns the scheduler and runs `step()` (the engine's model worker; tests and benchmarks may
drive it themselves). `cancel` only raises the stream's flag; the freeing happens in the owner's next step,
never on the caller's thread. Outputs leave through each step's `StepReport`.

Exactness: a stream's rows do not depend on its neighbours beyond float rounding: the mask gives padding
exactly zero weight, positions and caches are per row, and sampling is per row with a per-stream
generator. What batching changes is the kernels: B rows run another matrix-multiply path than one row
(and, on a CPU, packed weights: `cpu_gemm.py`), and a prompt cut into chunks another path than one whole
prompt, so logits can differ in the last bits. Greedy codes are equal (tested, also in `bench batching`)
unless two codes tie to ~1e-6; a lone stream runs exactly `generate`'s computation.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import deque
from dataclasses import dataclass, field

import torch

from higgs_agent.model.loader import HiggsBundle
from higgs_agent.model.prompts import ModelInputs
from higgs_agent.model.sampling import SamplingSettings
from higgs_agent.streaming.cpu_gemm import PackedLinears
from higgs_agent.streaming.delay import AudioTokenIds
from higgs_agent.streaming.generation import AtCapacityError, Generation, StepOutput
from higgs_agent.streaming.kv_slots import SlotKVCache
from higgs_agent.streaming.latency import now
from higgs_agent.streaming.sampler import sample_rows

log = logging.getLogger(__name__)

DEFAULT_SLOTS = 8
# Prompt chunk while others decode. What a chunk costs, against one decode step of 8 streams (measured):
# mini model on one CPU core: 32 tokens 67 ms, 64 tokens 108 ms, 256 tokens 332 ms, vs ~45 ms per step; a
# GPU runs 256 tokens in about the time of a decode step. So: 64 on a CPU, 256 elsewhere.
DEFAULT_PREFILL_CHUNK_TOKENS = {"cpu": 64, "cuda": 256}
DEFAULT_QUEUE_TIMEOUT_S = 10.0
# Cache positions per slot allocated up front; more are added by doubling, which copies every slot once
# (a one-off stall of ~0.1 s on the mini model at 16 slots). A server can size it to its longest turns.
DEFAULT_CONTEXT_TOKENS = 256
# The slot mask is additive, which both of these honour; another kernel (flash attention, flex) would get
# a mask it reads differently, or none.
SUPPORTED_ATTENTION = ("sdpa", "eager")


@dataclass
class StepReport:
    """What one step did: each stream's output, the streams it let go of, and its timings."""

    index: int
    decoded: int  # streams in the batched decode forward
    prefill_tokens: int  # prompt tokens run this step
    prefill_ms: float
    decode_ms: float  # the batched forward (logits to float32 included)
    step_ms: float  # the whole step: bookkeeping, forwards, sampling, delivery
    outputs: list[tuple[Generation, StepOutput]] = field(default_factory=list)
    ended: list[Generation] = field(default_factory=list)  # finished, cancelled, failed or refused


class Lease:
    """A slot's worth of capacity held for a whole response (see the module docstring)."""

    engine = "local"  # which engine speaks under it (a remote lease names its engine's URL)

    def __init__(self, name: str) -> None:
        self.name = name
        self.released = False
        self.generation: Generation | None = None  # the stream running under it, if any


class BatchScheduler:
    """Owns the model's forwards and the slot cache for up to `slots` concurrent streams."""

    def __init__(self, bundle: HiggsBundle, slots: int = DEFAULT_SLOTS,
                 prefill_chunk_tokens: int | None = None, max_queue: int = 0,
                 queue_timeout_s: float = DEFAULT_QUEUE_TIMEOUT_S, packed_cpu_weights: bool = True,
                 context_tokens: int = DEFAULT_CONTEXT_TOKENS) -> None:
        if prefill_chunk_tokens is None:
            prefill_chunk_tokens = DEFAULT_PREFILL_CHUNK_TOKENS.get(bundle.device.type, 256)
        if prefill_chunk_tokens < 1:
            raise ValueError("prefill_chunk_tokens must be >= 1")
        if max_queue < 0:
            raise ValueError("max_queue must be >= 0")
        attention = getattr(bundle.config, "_attn_implementation", None)
        if attention not in SUPPORTED_ATTENTION:
            raise ValueError(f"continuous batching needs attn_implementation 'sdpa' or 'eager' (its padded "
                             f"rows use an additive 4-D mask), not {attention!r}")
        self.model = bundle.model
        self.device = bundle.device
        self.ids = AudioTokenIds.from_config(bundle.config)
        self.slots = slots
        self.prefill_chunk_tokens = prefill_chunk_tokens
        self.max_queue = max_queue
        self.queue_timeout_s = queue_timeout_s
        self.cache = SlotKVCache(bundle.config, slots, bundle.dtype, bundle.device, initial_capacity=context_tokens)
        # CPU: batched decodes use MKL-packed weights (see cpu_gemm.py); a no-op elsewhere.
        self.packed = PackedLinears.for_model(self.model) if packed_cpu_weights and slots > 1 else None
        self.owners: list[Generation | None] = [None] * slots
        self.n_decoding = 0  # decoding streams hold slots 0 .. n_decoding - 1
        self.prefilling: list[Generation] = []  # oldest first; each holds a slot above the decoding ones
        self.steps = 0
        self.last_report: StepReport | None = None
        # Shared with other threads (submit, cancel, the engine's driver): guarded by _lock.
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)
        self._active: set[Generation] = set()  # accepted and not yet ended: they hold or await a slot
        self._joining: deque[Generation] = deque()
        self._queued: deque[tuple[Generation, float]] = deque()  # (stream, deadline)
        self._leases: set[Lease] = set()
        self._step_lock = threading.Lock()
        self._outputs: list[tuple[Generation, StepOutput]] = []  # the running step's report
        self._ended: list[Generation] = []

    # -- other threads -------------------------------------------------------------------------------

    def submit(self, generation: Generation, lease: Lease | None = None) -> None:
        """Accept a stream (it joins at the next step), queue it, or raise AtCapacityError at once. Under a
        lease it is always accepted: the lease already holds its capacity."""
        room = self.cache.max_capacity - generation.prompt_tokens  # positions left for rows
        if room < 1:
            raise ValueError(f"the prompt ({generation.prompt_tokens} tokens) fills the model's context "
                             f"of {self.cache.max_capacity}")
        generation.max_rows = min(generation.max_rows, room)  # a full context ends the stream, as max_frames
        with self._lock:
            if lease is not None:
                if lease.released or lease not in self._leases:
                    raise RuntimeError(f"lease {lease.name} was released")
                if lease.generation is not None and not lease.generation.ended:
                    raise RuntimeError(f"lease {lease.name} already runs {lease.generation.request_id}")
                lease.generation, generation.lease = generation, lease
                self._active.add(generation)
                self._joining.append(generation)
            elif self._live() + self._waiting() < self.slots:  # queued requests come first: no jumping
                self._active.add(generation)
                self._joining.append(generation)
            elif len(self._queued) < self.max_queue:
                self._queued.append((generation, now() + self.queue_timeout_s))
            else:
                raise AtCapacityError(self._full_message())
            self._work.notify_all()

    def start(self, inputs: ModelInputs, settings: SamplingSettings, lease: Lease | None = None) -> Generation:
        """A new stream for `inputs`, submitted (see `submit`)."""
        generation = Generation(self.ids, inputs, settings, self.device)
        self.submit(generation, lease)
        return generation

    def reserve(self, name: str = "lease") -> Lease:
        """Hold capacity for a response (AtCapacityError when every slot is taken). `release` it after."""
        with self._lock:
            if self._live() + self._waiting() >= self.slots:
                raise AtCapacityError(self._full_message())
            lease = Lease(name)
            self._leases.add(lease)
            return lease

    def release(self, lease: Lease) -> None:
        """Give the capacity back (a stream still running under the lease is cancelled)."""
        with self._lock:
            lease.released = True
            self._leases.discard(lease)
            running = lease.generation
            self._work.notify_all()
        if running is not None and not running.ended:
            running.cancel()

    def cancel(self, generation: Generation) -> None:
        """Stop a stream: it is let go of (slot freed) at the next step, on the scheduler's thread."""
        generation.cancel()
        self.wake()

    def _full_message(self) -> str:
        queue = f" and {len(self._queued)} queued" if self.max_queue else ""
        return f"at capacity: all {self.slots} slots busy{queue}; try again later"

    def _waiting(self) -> int:
        return sum(1 for g, _ in self._queued if not g.cancelled)

    def streams(self) -> list[Generation]:
        """Every stream not yet ended: holding a slot, about to get one, or queued."""
        with self._lock:
            return list(self._active) + [g for g, _ in self._queued]

    def wake(self) -> None:
        """Wake a thread blocked in `wait_for_work`."""
        with self._lock:
            self._work.notify_all()

    def has_work(self) -> bool:
        with self._lock:
            return bool(self._active or self._queued)

    @property
    def leases(self) -> int:
        with self._lock:
            return len(self._leases)

    def wait_for_work(self, timeout: float | None = None) -> bool:
        """Block until some stream needs a step (or `timeout` passes); True if one does."""
        with self._work:
            if not (self._active or self._queued):
                self._work.wait(timeout)
            return bool(self._active or self._queued)

    @property
    def busy_slots(self) -> int:
        """Streams holding or awaiting a slot (cancelled ones excluded: their slots are as good as free)."""
        with self._lock:
            return self._live()

    def _live(self) -> int:
        """Capacity in use: each lease, plus each running stream not under one (cancelled ones are as good
        as gone)."""
        return len(self._leases) + sum(1 for g in self._active if not g.cancelled and g.lease is None)

    @property
    def decoding(self) -> list[Generation]:
        """The decoding streams, in slot order."""
        return self.owners[:self.n_decoding]  # type: ignore[return-value]

    # -- the step ------------------------------------------------------------------------------------

    def step(self) -> StepReport:
        """One step. Raises only when something escaped the per-stream handling; the streams holding
        slots have then been failed with that error, so the next step starts clean."""
        with self._step_lock:
            start = now()
            self._outputs, self._ended = [], []
            try:
                self._reap()
                self._admit()
                prefill_tokens, prefill_ms = self._prefill()
                decoded, decode_ms = len(self.decoding), self._decode()
                self._reap()  # cancels that came in during the forwards take effect now, not a step later
            except Exception as exc:
                log.exception("scheduler step failed: failing the streams that hold slots")
                self._fail_slot_holders(exc)
                self.last_report = StepReport(self.steps, 0, 0, 0.0, 0.0, (now() - start) * 1000.0,
                                              self._outputs, self._ended)  # what the failure ended
                raise
            self.steps += 1
            self.last_report = StepReport(self.steps, decoded, prefill_tokens, prefill_ms, decode_ms,
                                          (now() - start) * 1000.0, self._outputs, self._ended)
            return self.last_report

    def reap(self) -> list[Generation]:
        """End cancelled streams now, waiting for a running step (`StreamingEngine.close`); returns them."""
        with self._step_lock:
            self._ended = []
            self._reap()
            return self._ended

    def _admit(self) -> None:
        dropped = []
        with self._lock:
            while self._queued and self._live() < self.slots:
                generation, _ = self._queued.popleft()
                if generation.cancelled:  # cancelled since _reap: it must still be ended
                    dropped.append(generation)
                else:
                    self._active.add(generation)
                    self._joining.append(generation)
            refused = []
            while self._queued and self._queued[0][1] <= now():
                refused.append(self._queued.popleft()[0])
            free = self.owners.count(None)
            joining = [self._joining.popleft() for _ in range(min(free, len(self._joining)))]
        for generation in dropped:
            generation.end("cancelled")
            self._ended.append(generation)
        for generation in refused:
            generation.end("at_capacity", AtCapacityError(
                f"at capacity: no slot of {self.slots} freed within {self.queue_timeout_s:g} s"))
            self._ended.append(generation)
        for generation in joining:
            slot = self.owners.index(None)  # the lowest free slot: usually where it will decode
            generation.slot = slot
            self.owners[slot] = generation
            self.cache.clear(slot)
            self.prefilling.append(generation)

    def _prefill(self) -> tuple[int, float]:
        """One chunk of the oldest newcomer's prompt; with nothing decoding at the step's start (nobody to
        stall), every waiting prompt whole."""
        chunked = self.n_decoding > 0
        tokens, elapsed = 0, 0.0
        while self.prefilling and not (chunked and tokens):
            generation = self.prefilling[0]
            if generation.cancelled:  # no point running its prompt
                self._release(generation, "cancelled")
                continue
            start = now()
            if generation.stats.prefill_started_at is None:
                generation.stats.prefill_started_at = start
            try:  # the view too: a cache that cannot grow fails this stream, not the step
                chunk = generation.next_prompt_chunk(self.prefill_chunk_tokens if chunked else None)
                view = self.cache.view(generation.slot, [chunk.start], chunk.length)
                with torch.inference_mode():
                    out = self.model(**chunk.kwargs, attention_mask=view.attention_mask(),
                                     position_ids=view.position_ids(), cache=view, use_cache=True,
                                     logits_to_keep=1)
                    logits = out.logits[0, -1].float().view(self.ids.num_codebooks, self.ids.codebook_size)
            except Exception as exc:  # noqa: BLE001 - the stream fails; the others go on
                log.exception("%s: prefill failed", generation.request_id)
                self._release(generation, "failed", exc)
                continue
            view.commit()
            ms = (now() - start) * 1000.0
            generation.prompt_chunk_done(chunk, ms)
            tokens, elapsed = tokens + chunk.length, elapsed + ms
            if chunk.last:
                self.prefilling.pop(0)
                drawn = self._draw([generation], logits[None])
                if isinstance(drawn[0], BaseException):  # it never joins the decoders
                    self._release(generation, "failed", drawn[0])
                    continue
                if generation.cancelled:  # ditto: a decoder needs a last row
                    self._release(generation, "cancelled")
                    continue
                self._join_decoding(generation)
                self._deliver([generation], drawn)
        return tokens, elapsed

    def _decode(self) -> float:
        """One forward for every decoding stream; returns its time in ms (0 when nothing decodes)."""
        batch = list(self.decoding)
        if not batch:
            return 0.0
        try:
            self.cache.reserve(max(self.cache.lengths[i] for i in range(len(batch))) + 1)
        except Exception as exc:  # noqa: BLE001 - out of memory growing: fail the streams that need the room
            log.exception("growing the cache failed")
            for generation in reversed(batch):
                if self.cache.lengths[generation.slot] + 1 > self.cache.capacity:
                    self._release(generation, "failed", exc)
            batch = list(self.decoding)
            if not batch:
                return 0.0
        start = now()
        packed = self.packed.rows(len(batch)) if self.packed is not None else contextlib.nullcontext()
        try:
            view = self.cache.view(0, [self.cache.lengths[i] for i in range(len(batch))], 1)
            last = torch.stack([g.frames.last_row for g in batch]).to(self.device)[:, None]  # (B, 1, K)
            with torch.inference_mode(), packed:
                out = self.model(audio_input_ids=last, attention_mask=view.attention_mask(),
                                 position_ids=view.position_ids(), cache=view, use_cache=True)
                logits = out.logits[:, -1].float().view(len(batch), self.ids.num_codebooks, self.ids.codebook_size)
        except Exception as exc:  # noqa: BLE001 - fail this step's streams, keep serving new ones
            log.exception("batched decode failed")
            for generation in reversed(batch):
                self._release(generation, "failed", exc)
            return 0.0
        # Booked now: each stream below either records its row (its cache then holds the K/V of the row it
        # decoded from) or is released, so no stream is left with a position and no row.
        view.commit()
        ms = (now() - start) * 1000.0
        for generation in batch:
            generation.stats.step_ms.append(ms)
        self._deliver(batch, self._draw(batch, logits))
        return ms

    def _draw(self, batch: list[Generation], logits: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor] | Exception]:
        """Each stream's next row as (on the CPU, on the device), or the error sampling it raised. One
        batched draw; if that raises (it changes nothing then), stream by stream, to find who is at fault."""
        try:
            with torch.inference_mode():
                rows = sample_rows(logits, [g.sampler for g in batch], [g.delay for g in batch],
                                   [g.history for g in batch])
                rows_cpu = rows.cpu()  # one device sync per step; the per-stream bookkeeping runs on the host
            return [(rows_cpu[b], rows[b]) for b in range(len(batch))]
        except Exception as exc:  # noqa: BLE001 - narrowed down below
            if len(batch) == 1:
                log.error("%s: sampling failed: %s", batch[0].request_id, exc)
                return [exc]
            log.warning("batched sampling failed (%s): sampling stream by stream", exc)
        drawn: list[tuple[torch.Tensor, torch.Tensor] | Exception] = []
        for b, generation in enumerate(batch):
            try:
                with torch.inference_mode():
                    row = sample_rows(logits[b:b + 1], [generation.sampler], [generation.delay],
                                      [generation.history])[0]
                    drawn.append((row.cpu(), row))
            except Exception as exc:  # noqa: BLE001 - this stream fails alone
                log.error("%s: sampling failed: %s", generation.request_id, exc)
                drawn.append(exc)
        return drawn

    def _deliver(self, batch: list[Generation], drawn: list[tuple[torch.Tensor, torch.Tensor] | Exception]) -> None:
        """Record each decoding stream's row; end the streams that finished or failed."""
        failed: dict[Generation, Exception] = {}
        for generation, row in zip(batch, drawn):
            if isinstance(row, Exception):
                failed[generation] = row
            # Cancelled during the step: no more output (it is reaped at the step's end), except a first row,
            # which a decoder needs to decode from (cancelled right after `_prefill` checked).
            elif not generation.cancelled or generation.rows == 0:
                try:
                    self._outputs.append((generation, generation.record(*row)))
                except Exception as exc:  # noqa: BLE001 - bookkeeping gone wrong for this stream only
                    log.exception("%s: recording a row failed", generation.request_id)
                    failed[generation] = exc
        for generation in reversed(batch):  # highest slot first keeps the moves simple
            if generation in failed:
                self._release(generation, "failed", failed[generation])
            elif generation.finished and not generation.cancelled:
                self._release(generation, None)

    # -- slots ---------------------------------------------------------------------------------------

    def _join_decoding(self, generation: Generation) -> None:
        self._swap(generation.slot, self.n_decoding)
        self.n_decoding += 1

    def _swap(self, a: int, b: int) -> None:
        if a == b:
            return
        self.cache.move(a, b)
        self.owners[a], self.owners[b] = self.owners[b], self.owners[a]
        for slot in (a, b):
            if self.owners[slot] is not None:
                self.owners[slot].slot = slot

    def _release(self, generation: Generation, reason: str | None, error: BaseException | None = None) -> None:
        """Free the stream's slot (keeping decoding slots contiguous) and end it (`reason` None: it
        finished by itself and has already delivered its last output)."""
        slot = generation.slot
        if slot is not None:
            if error is not None:  # before any move: its K/V may be NaN, which the mask cannot hide
                self.cache.wipe(slot)
            if slot < self.n_decoding:  # the last decoding stream takes its place
                last = self.n_decoding - 1
                self._swap(slot, last)
                self.n_decoding -= 1
                slot = last
            elif generation in self.prefilling:
                self.prefilling.remove(generation)
            self.owners[slot] = None
            self.cache.clear(slot)
            generation.slot = None
        with self._lock:
            self._active.discard(generation)
            self._work.notify_all()
        generation.end(reason, error)
        self._ended.append(generation)

    def _reap(self) -> None:
        """End cancelled streams wherever they are: decoding, prefilling, joining or queued."""
        for generation in [g for g in reversed(self.decoding) if g.cancelled]:
            self._release(generation, "cancelled")
        for generation in [g for g in self.prefilling if g.cancelled]:
            self._release(generation, "cancelled")
        with self._lock:
            dropped = [g for g in self._joining if g.cancelled] + [g for g, _ in self._queued if g.cancelled]
            self._joining = deque(g for g in self._joining if not g.cancelled)
            self._queued = deque((g, t) for g, t in self._queued if not g.cancelled)
        for generation in dropped:
            self._release(generation, "cancelled")

    def _fail_slot_holders(self, error: Exception) -> None:
        """The safety net: after an error that escaped the per-stream handling, the slots' state is
        unknown, so every admitted stream fails, the cache is zeroed, and the next step starts clean."""
        with self._lock:
            joining = set(self._joining)
            involved = [g for g in self._active if g not in joining]
        for generation in involved:
            generation.slot = None
            with self._lock:
                self._active.discard(generation)
        self.owners = [None] * self.slots
        self.n_decoding = 0
        self.prefilling = []
        for slot in range(self.slots):
            self.cache.wipe(slot)
        with self._lock:
            self._work.notify_all()
        for generation in involved:
            generation.end("failed", error)
            self._ended.append(generation)


def run_to_end(scheduler: BatchScheduler, generation: Generation) -> list[StepOutput]:
    """Synchronous loop (tests, benchmarks, the reference path): step until `generation` is let go of and
    return its outputs from then on; raises its error, if it failed."""
    outputs: list[StepOutput] = []
    while not generation.ended:
        report = scheduler.step()
        outputs += [out for owner, out in report.outputs if owner is generation]
    if generation.error is not None:
        raise generation.error
    return outputs
