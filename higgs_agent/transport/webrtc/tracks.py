"""Audio on a call's media tracks: the reply going out at real time, the caller's audio coming in.

`ReplyAudioTrack` is the track aiortc's RTP sender pulls from: every `recv()` waits for the next 20 ms slot on
the clock and hands over one 48 kHz frame, the reply audio its sink (the call's output, a pulled
`ReplyAudioSink`) has due, else silence (so the RTP stream never stalls). Resampling, framing, barge-in and
what the caller heard are the sink's; this only keeps time.
"""

from __future__ import annotations

import asyncio
import fractions
import logging
from typing import Protocol

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from higgs_agent.audio import float_to_pcm16

log = logging.getLogger(__name__)

WIRE_RATE = 48_000  # Opus's clock
FRAME_MS = 20
FRAME_SAMPLES = WIRE_RATE * FRAME_MS // 1000
TIME_BASE = fractions.Fraction(1, WIRE_RATE)
MAX_LAG_S = 0.1  # behind the clock by more than this (the event loop stalled): restart the clock, do not burst


class FrameSource(Protocol):
    def next_frame(self) -> object | None:
        """The frame due now (with `.samples`: FRAME_SAMPLES float32 at 48 kHz), or None for silence."""


class ReplyAudioTrack(MediaStreamTrack):
    """The agent's voice on the call: one frame from `source` every 20 ms."""

    kind = "audio"

    def __init__(self, source: FrameSource) -> None:
        super().__init__()
        self._source = source
        self._next_at: float | None = None  # when the next frame is due (event-loop clock)
        self._pts = 0

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        await self._wait_for_slot()
        if self.readyState != "live":
            raise MediaStreamError
        frame = self._source.next_frame()
        pcm = bytes(FRAME_SAMPLES * 2) if frame is None else float_to_pcm16(frame.samples)  # type: ignore[attr-defined]
        out = av.AudioFrame(format="s16", layout="mono", samples=FRAME_SAMPLES)
        out.planes[0].update(pcm)
        out.sample_rate = WIRE_RATE
        out.time_base = TIME_BASE
        out.pts = self._pts
        self._pts += FRAME_SAMPLES
        return out

    async def _wait_for_slot(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self._next_at is None or now - self._next_at > MAX_LAG_S:
            self._next_at = now
        else:
            if self._next_at > now:
                await asyncio.sleep(self._next_at - now)
        self._next_at += FRAME_MS / 1000


def frame_to_mono(frame: av.AudioFrame) -> np.ndarray:
    """A decoded caller frame (aiortc's Opus decoder gives PCM16 stereo at 48 kHz) -> float32 mono."""
    data = frame.to_ndarray()
    channels = len(frame.layout.channels)
    if frame.format.is_planar:
        samples = data.astype(np.float32).mean(axis=0)
    else:
        samples = data.reshape(-1, channels).astype(np.float32).mean(axis=1)
    if frame.format.name.startswith("s16"):
        samples /= 32768.0
    elif frame.format.name.startswith("s32"):
        samples /= 2147483648.0
    return samples.astype(np.float32, copy=False)
