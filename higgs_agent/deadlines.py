"""Bounds on waiting: every await on a reply's path has an end, and one that runs out names its stage.

A reply waits on other threads and other tasks (the model worker, the responder, a voice encode, the reply
before it). Any of them can stall; none may hold a caller in silence forever. `within(stage, seconds, aw)`
raises `StageTimeout(stage)` when `aw` has not finished in time (cancelling it), and only then: a timeout
raised *inside* `aw` by a nested stage keeps its own stage name.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


class StageTimeout(Exception):
    """A stage of the reply path did not finish within its bound."""

    def __init__(self, stage: str, timeout_s: float, detail: str = "") -> None:
        self.stage = stage
        self.timeout_s = timeout_s
        super().__init__(f"{stage} did not finish within {timeout_s:g} s{f' ({detail})' if detail else ''}")


async def within(stage: str, timeout_s: float | None, aw: Awaitable[T]) -> T:
    """`await aw`, bounded: StageTimeout(stage) when it takes longer than `timeout_s` (None: unbounded)."""
    if timeout_s is None:
        return await aw
    try:
        async with asyncio.timeout(timeout_s) as scope:
            return await aw
    except TimeoutError:
        if scope.expired():
            raise StageTimeout(stage, timeout_s) from None
        raise
