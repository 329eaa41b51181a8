"""Work handed to the model worker is never lost, and no exit path of a reply leaks a lease or a stream (#20).

The deterministic tests force the interleavings that lost work before (a caller between picking its queue and
taking the lock while the worker drains; a cancel while the worker grants a lease; a barge-in while a stream is
let go); the stress test hammers the real worker from several threads while streams run and counts every piece
of work that never completed."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Future
from concurrent.futures import wait as wait_futures

import pytest

from higgs_agent.deadlines import StageTimeout
from higgs_agent.model.prompts import SpeechPrompt
from higgs_agent.model.sampling import SamplingSettings
from higgs_agent.streaming.engine import EngineLimits, Speech, StreamingEngine
from higgs_agent.streaming.mailbox import EngineClosed, Mailbox
from higgs_agent.streaming.worker import SyncSink

SETTINGS = SamplingSettings(greedy=True, max_frames=40)


class HookedCondition(threading.Condition):
    """A condition that runs `hook` once, in the thread that is about to take the lock, before it takes it."""

    def __init__(self) -> None:
        super().__init__()
        self.hook = None

    def __enter__(self):  # noqa: ANN204
        hook, self.hook = self.hook, None
        if hook is not None:
            hook()
        return super().__enter__()


def test_work_queued_while_the_worker_drains_between_the_call_and_the_lock_is_not_lost():
    """The interleaving that hung replies: a caller reaches `put`, and before it holds the lock the worker
    takes everything queued. What the caller then queues must be what the worker takes next."""
    cond = HookedCondition()
    mailbox = Mailbox(cond)
    drained: list = []
    cond.hook = lambda: drained.extend(mailbox.take_commands())  # the worker's whole pass, at the worst moment
    first = mailbox.put("command", lambda: "first")
    assert drained == []
    taken = mailbox.take_commands()
    assert [future for _, future in taken] == [first]
    earlier = mailbox.put("job", lambda: "earlier")
    taken_jobs: list = []
    cond.hook = lambda: taken_jobs.append(mailbox.take_job())
    job = mailbox.put("job", lambda: "job")
    assert [future for _, future in taken_jobs] == [earlier]
    next_job = mailbox.take_job()
    assert next_job is not None and next_job[1] is job
    assert mailbox.pending() == 0


def test_a_closed_mailbox_refuses_new_work_and_hands_back_what_was_queued():
    mailbox = Mailbox()
    queued = mailbox.put("job", lambda: 1)
    mailbox.close()
    refused = mailbox.put("command", lambda: 2)
    assert isinstance(refused.exception(timeout=0), EngineClosed)
    assert [future for _, future in mailbox.drain()] == [queued]
    assert mailbox.pending() == 0


@pytest.fixture
def engine(bundle):
    engine = StreamingEngine(bundle, slots=2, limits=EngineLimits(admission_s=5.0, item_s=30.0, job_s=30.0))
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def prompt():
    return SpeechPrompt(text="Hello there, how are you today?")


def test_commands_jobs_and_leases_from_many_threads_all_complete_while_streams_run(engine, prompt):
    """Hammer the worker: every command, job and lease handed to it completes, and every lease comes back."""
    threads, rounds = 4, 400
    futures: list[Future] = []
    futures_lock = threading.Lock()
    streams: list[tuple[SyncSink, Future]] = []

    def hammer(index: int) -> None:
        mine: list[Future] = []
        for round_ in range(rounds):
            mine.append(engine.worker.command(lambda: None))
            if round_ % 4 == 0:
                mine.append(engine.worker.job(lambda: None))
            if round_ % 8 == index % 8:
                granted = engine.worker.command(lambda: engine.scheduler.reserve("stress"))
                mine.append(granted)
                granted.add_done_callback(lambda f: f.exception() is None and mine.append(
                    engine.worker.command(lambda lease=f.result(): engine.scheduler.release(lease))))
            if index == 0 and round_ % 100 == 0:  # streams start and end all through
                sink = SyncSink(frozenset({"pcm"}))
                start = engine.worker.command(lambda sink=sink: engine._start(prompt, SETTINGS, None, sink))
                streams.append((sink, start))
                mine.append(start)
        with futures_lock:
            futures.extend(mine)

    workers = [threading.Thread(target=hammer, args=(i,)) for i in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    # Releases are queued from callbacks: wait until no new future appears, then for all of them.
    while True:
        with futures_lock:
            snapshot = list(futures)
        done, not_done = wait_futures(snapshot, timeout=120)
        with futures_lock:
            if len(futures) == len(snapshot):
                break
    assert not not_done, f"{len(not_done)} of {len(snapshot)} pieces of work never completed"
    started = [f for f in snapshot if f.exception() is None]
    assert len(started) >= threads * rounds  # the AtCapacityErrors of reserve are answers too
    ran = [sink for sink, start in streams if start.exception() is None]  # others were refused at capacity
    assert ran
    for sink in ran:
        assert sink.done.wait(120), "a stream never ended"
    assert engine.worker.command(lambda: engine.scheduler.leases).result(10) == 0
    assert engine.busy_slots == 0


async def cancel_while_on_the_worker(reply, entered: threading.Event, gate: threading.Event) -> None:  # noqa: ANN001
    """Run `reply()`, cancel it while its command sits on the worker (`entered`), then let the command finish."""
    task = asyncio.create_task(reply())
    assert await asyncio.to_thread(entered.wait, 30)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    gate.set()


async def test_a_reply_cancelled_while_the_worker_grants_its_lease_gives_the_lease_back(engine, monkeypatch):
    entered, gate = threading.Event(), threading.Event()
    reserve = engine.scheduler.reserve

    def slow_reserve(name: str = "lease"):  # noqa: ANN202
        entered.set()
        gate.wait(30)
        return reserve(name)

    monkeypatch.setattr(engine.scheduler, "reserve", slow_reserve)

    async def reply() -> None:
        async with engine.lease("reply"):
            raise AssertionError("the cancelled reply must not get its lease")

    await cancel_while_on_the_worker(reply, entered, gate)
    for _ in range(2):  # the release is queued by the grant; one round trip later it has run
        await asyncio.wrap_future(engine.worker.command(lambda: None))
    assert engine.scheduler.leases == 0
    assert engine.busy_slots == 0


async def test_a_barge_in_while_a_stream_is_let_go_is_not_lost(engine, prompt, monkeypatch):
    """The cancel lands exactly while leaving the stream waits for the worker: it must still end the reply."""
    cancel = Speech.cancel

    def cancel_and_barge_in(speech: Speech) -> None:
        cancel(speech)
        task = asyncio.current_task()
        assert task is not None
        task.cancel()  # the next await is the wait for the worker to let go

    monkeypatch.setattr(Speech, "cancel", cancel_and_barge_in)
    spoke_on = asyncio.Event()

    async def reply() -> None:
        async with engine.stream(prompt, SETTINGS) as speech:
            async for _ in speech.pcm():
                break
        spoke_on.set()  # a lost cancel would let the reply go on to its next phrase

    task = asyncio.create_task(reply())
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not spoke_on.is_set()
    assert engine.busy_slots == 0


async def test_a_stream_started_for_a_reply_that_was_cancelled_meanwhile_is_cancelled(engine, prompt, monkeypatch):
    entered, gate = threading.Event(), threading.Event()
    start = engine._start
    started: list = []

    def slow_start(*args):  # noqa: ANN002, ANN202
        entered.set()
        gate.wait(30)
        generation = start(*args)
        started.append(generation)
        return generation

    monkeypatch.setattr(engine, "_start", slow_start)

    async def reply() -> None:
        async with engine.stream(prompt, SETTINGS):
            raise AssertionError("unreachable")

    await cancel_while_on_the_worker(reply, entered, gate)
    await asyncio.wrap_future(engine.worker.command(lambda: None))
    assert started and started[0].cancelled
    while engine.active_streams:  # the worker lets go of it at its next step
        await asyncio.wrap_future(engine.worker.command(lambda: None))
    assert engine.busy_slots == 0


async def test_a_stuck_worker_times_the_lease_out_and_the_late_grant_is_released(bundle):
    engine = StreamingEngine(bundle, limits=EngineLimits(admission_s=0.3, item_s=30.0, job_s=0.3))
    try:
        entered, gate = threading.Event(), threading.Event()
        blocker = engine.worker.job(lambda: (entered.set(), gate.wait(30)))  # the worker sits inside one job
        assert await asyncio.to_thread(entered.wait, 30)
        with pytest.raises(StageTimeout) as raised:
            async with engine.lease("reply"):
                pass
        assert raised.value.stage == "lease"
        with pytest.raises(StageTimeout) as raised:
            await engine.run(lambda: 1, stage="count_tokens")
        assert raised.value.stage == "count_tokens"
        gate.set()
        await asyncio.wrap_future(blocker)
        for _ in range(2):
            await asyncio.wrap_future(engine.worker.command(lambda: None))
        assert engine.scheduler.leases == 0
    finally:
        engine.close()


def test_a_warm_up_speaks_through_the_codec_and_frees_its_slot(engine, prompt):
    """`serve` warms the engine up in the background: a whole phrase down to PCM, then nothing left held."""
    sink = engine.warm_up(prompt, SamplingSettings(greedy=True, max_frames=12))
    assert sink.done.wait(60)
    assert any(type(item).__name__ == "Pcm" and len(item.samples) for item in sink.items)
    assert engine.worker.command(lambda: engine.busy_slots).result(10) == 0
