"""The model worker's mailbox: work other threads hand to the worker, none of it ever lost.

Two kinds of work: commands (quick bookkeeping, all applied before the next step) and jobs (longer work, one
between two steps). Every read and write of the queues happens under the one lock, and the queues are made
once and never replaced: a caller can never hold on to a queue the worker no longer reads. (The bug this
replaces: `command()` picked its deque before taking the lock while the worker swapped in a fresh deque on
every pass, so a caller that lost that race appended to a deque nobody read again, and its reply hung.)
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, Final, Literal

Kind = Literal["command", "job"]
Work = tuple[Callable[[], Any], Future]


class EngineClosed(RuntimeError):
    """The engine was closed (server shutdown): its worker takes no more work."""


class Mailbox:
    def __init__(self, cond: threading.Condition | None = None) -> None:
        self.cond: Final = cond or threading.Condition()
        self._queues: Final[dict[Kind, deque[Work]]] = {"command": deque(), "job": deque()}
        self.closed = False

    def put(self, kind: Kind, fn: Callable[[], Any]) -> Future:
        """Queue `fn` for the worker; its future settles when it ran (EngineClosed once closed)."""
        future: Future = Future()
        with self.cond:
            if self.closed:
                future.set_exception(EngineClosed("the streaming engine is closed"))
                return future
            self._queues[kind].append((fn, future))  # looked up under the lock: never a stale queue
            self.cond.notify_all()
        return future

    def has_work(self) -> bool:
        """Under `cond` (the worker's wait loop holds it)."""
        return bool(self._queues["command"] or self._queues["job"])

    def take_commands(self) -> list[Work]:
        with self.cond:
            commands = list(self._queues["command"])
            self._queues["command"].clear()
            return commands

    def take_job(self) -> Work | None:
        with self.cond:
            jobs = self._queues["job"]
            return jobs.popleft() if jobs else None

    def close(self) -> None:
        """Refuse new work from now on (what is queued stays, for `drain`)."""
        with self.cond:
            self.closed = True
            self.cond.notify_all()

    def drain(self) -> list[Work]:
        """Everything still queued, taken out (the worker fails it when shutting down)."""
        with self.cond:
            pending = [*self._queues["command"], *self._queues["job"]]
            for queue in self._queues.values():
                queue.clear()
            return pending

    def pending(self) -> int:
        with self.cond:
            return sum(len(queue) for queue in self._queues.values())
