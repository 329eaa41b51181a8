"""The one thread that writes records: it takes writes from a bounded queue and commits what has gathered, at once.

The event loop only ever puts a write into the queue without waiting (`put`): a full queue (a slow database)
or a failed commit (a database that is down) drops writes, says so in the log (once a minute at most) and
counts them (`on_drop(reason, count)`: the `higgs_records_dropped` metric); nothing reaches the session.
Audio chunks (`serve --records-audio`) have a budget of their own in bytes waiting (`audio_queue_full` when it
is spent): a slow database holds back at most that much audio. Retention runs on the same thread: sessions
older than `days` are deleted at start and every hour.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

from higgs_agent.records.store import AudioWrite, RecordStore, Write

log = logging.getLogger(__name__)
QUEUE_SIZE = 10_000  # writes waiting: minutes of busy sessions, yet bounded
BATCH = 200  # writes committed together when they have piled up
AUDIO_QUEUE_BYTES = 32 << 20  # raw audio waiting: about 11 minutes of one side at 24 kHz
PRUNE_EVERY_S = 3600.0
_WARN_EVERY_S = 60.0
_STOP = object()


class RecordWriter:
    def __init__(self, store: RecordStore, days: float | None = None,
                 on_drop: Callable[[str, int], None] = lambda reason, count: None,
                 on_write: Callable[[int], None] = lambda count: None, queue_size: int = QUEUE_SIZE,
                 audio: bool = False, audio_queue_bytes: int = AUDIO_QUEUE_BYTES) -> None:
        self.store = store
        self.days = days
        self.audio = audio  # sessions record both sides' audio too (serve --records-audio)
        self._audio_budget = audio_queue_bytes
        self._audio_waiting = 0  # bytes of audio put and not yet taken by the thread
        self._audio_lock = threading.Lock()
        self._on_drop = on_drop
        self._on_write = on_write
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._warned: dict[str, float] = {}
        self._thread = threading.Thread(target=self._run, name="records-writer", daemon=True)
        self._next_prune = 0.0

    def start(self) -> None:
        self._thread.start()

    def put(self, write: Write) -> None:
        """Hand a write to the thread; never waits, never raises (a full queue drops it)."""
        if isinstance(write, AudioWrite) and write.pcm:
            with self._audio_lock:
                over = self._audio_waiting + len(write.pcm) > self._audio_budget
                if not over:
                    self._audio_waiting += len(write.pcm)
            if over:
                self._dropped("audio_queue_full", 1, "the records' audio waiting is over its budget (the database "
                                                     "is slow)")
                return
        try:
            self._queue.put_nowait(write)
        except queue.Full:
            self._taken(write)
            self._dropped("queue_full", 1, "the records queue is full (the database is slow)")

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until every write put so far is committed or dropped (tests, shutdown); False on a timeout."""
        done = threading.Event()
        try:
            self._queue.put(done, timeout=timeout_s)
        except queue.Full:
            return False
        return done.wait(timeout_s)

    def close(self, timeout_s: float = 5.0) -> None:
        """Commit what is queued (waiting at most `timeout_s`), then stop the thread."""
        if self._thread.is_alive():
            try:
                self._queue.put(_STOP, timeout=timeout_s)
            except queue.Full:
                pass
            self._thread.join(timeout_s)
        self.store.close()

    # --- the thread --------------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self.store.create()
            log.info("records: writing to %s", self.store.where)
        except Exception as exc:  # noqa: BLE001 - unreachable now; each commit tries again
            self._warn("connect", f"records: the database {self.store.where} cannot be reached yet ({exc}); "
                                  "writes are dropped until it can")
        while True:
            self._prune_when_due()
            try:
                first = self._queue.get(timeout=max(1.0, self._next_prune - time.monotonic())
                                        if self.days is not None else None)
            except queue.Empty:
                continue
            batch, waiters, stop = [], [], False
            for item in self._take(first):
                if item is _STOP:
                    stop = True
                elif isinstance(item, threading.Event):
                    waiters.append(item)
                else:
                    self._taken(item)
                    batch.append(item)
            if batch:
                self._commit(batch)
            for waiter in waiters:
                waiter.set()
            if stop:
                return

    def _taken(self, write: Write) -> None:
        if isinstance(write, AudioWrite) and write.pcm:
            with self._audio_lock:
                self._audio_waiting -= len(write.pcm)

    def _take(self, first: object) -> list[object]:
        taken = [first]
        while len(taken) < BATCH:
            try:
                taken.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return taken

    def _commit(self, batch: list[Write]) -> None:
        try:
            self.store.write(batch)
        except Exception as exc:  # noqa: BLE001 - a database that is down or refuses: the calls go on
            self._dropped("database_error", len(batch), f"records: writing to {self.store.where} failed: {exc}")
        else:
            self._on_write(len(batch))

    def _prune_when_due(self) -> None:
        if self.days is None or time.monotonic() < self._next_prune:
            return
        self._next_prune = time.monotonic() + PRUNE_EVERY_S
        try:
            if gone := self.store.prune(self.days):
                log.info("records: deleted %d sessions older than %g days", gone, self.days)
        except Exception as exc:  # noqa: BLE001 - tried again at the next hour
            self._warn("prune", f"records: deleting old sessions failed: {exc}")

    def _dropped(self, reason: str, count: int, message: str) -> None:
        self._on_drop(reason, count)
        self._warn(reason, f"{message}; {count} writes dropped")

    def _warn(self, key: str, message: str) -> None:
        now = time.monotonic()
        if now - self._warned.get(key, -_WARN_EVERY_S) >= _WARN_EVERY_S:
            self._warned[key] = now
            log.warning("%s", message)
