"""One codec worker for many streams: windows that wait together are decoded together.

Each stream's `StreamingCodecDecoder` plans its own windows (`plan_windows`); with a `CodecBatcher` it hands
them to this worker instead of decoding them itself. The worker takes everything pending, decodes it with
`decode_windows` (one `codec.decode` call per window length, a batch across streams), and wakes each
submitter. Nothing waits for a batch to fill: a window submitted to an idle worker is decoded at once;
batches form from windows that arrive while a decode runs. A stream's samples are those it would decode
alone up to float rounding (a batched convolution sums in another order), so seams and SNR are unchanged.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Sequence
from concurrent.futures import Future, InvalidStateError

import numpy as np
from torch import nn

from higgs_agent.streaming.codec_stream import CodecWindow, decode_windows

log = logging.getLogger(__name__)


class CodecBatcher:
    """Decodes windows from any number of streams on one background thread, batching those that wait."""

    def __init__(self, codec: nn.Module) -> None:
        self.codec = codec
        self.calls = 0  # decode rounds run (each is one decode_windows call)
        self.windows = 0  # windows decoded
        self._pending: list[tuple[list[CodecWindow], Future]] = []
        self._lock = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False

    def submit(self, windows: Sequence[CodecWindow]) -> Future:
        """Queue windows; the future resolves to their PCM (float32 arrays, in order)."""
        future: Future = Future()
        if not windows:
            future.set_result([])
            return future
        with self._lock:
            if self._closed:
                raise RuntimeError("codec batcher closed")
            self._pending.append((list(windows), future))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="higgs-codec", daemon=True)
                self._thread.start()
            self._lock.notify()
        return future

    def decode(self, windows: Sequence[CodecWindow]) -> list[np.ndarray]:
        """Blocking form of `submit`."""
        return self.submit(windows).result()

    async def decode_async(self, windows: Sequence[CodecWindow]) -> list[np.ndarray]:
        return await asyncio.wrap_future(self.submit(windows))

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._lock.notify()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        # The loop must never die: a dead worker leaves every later `decode` waiting forever.
        while True:
            with self._lock:
                while not self._pending and not self._closed:
                    self._lock.wait()
                if self._closed and not self._pending:
                    return
                batch, self._pending = self._pending, []
            try:
                self._decode_batch(batch)
            except BaseException as exc:  # noqa: BLE001 - hand the error out, keep the worker
                log.exception("codec worker round failed")
                for _, future in batch:
                    _settle(future, exception=exc)

    def _decode_batch(self, batch: list[tuple[list[CodecWindow], Future]]) -> None:
        # Mark each future running: a consumer cancelled before this point is skipped (its windows are not
        # decoded), and one cancelled later can no longer cancel the future, so setting its result is safe.
        batch = [(windows, future) for windows, future in batch if future.set_running_or_notify_cancel()]
        if not batch:
            return
        flat = [w for windows, _ in batch for w in windows]
        try:
            pcm = decode_windows(self.codec, flat)
        except Exception as exc:  # noqa: BLE001 - hand the error to every waiting stream
            log.exception("batched codec decode failed")
            for _, future in batch:
                _settle(future, exception=exc)
            return
        self.calls += 1
        self.windows += len(flat)
        at = 0
        for windows, future in batch:
            _settle(future, result=pcm[at:at + len(windows)])
            at += len(windows)


def _settle(future: Future, result: object = None, exception: BaseException | None = None) -> None:
    """Resolve a future unless it is already done (cancelled): never raise on the worker thread."""
    if future.done():
        return
    try:
        if exception is not None:
            future.set_exception(exception)
        else:
            future.set_result(result)
    except InvalidStateError:  # cancelled between the check and the set
        pass
