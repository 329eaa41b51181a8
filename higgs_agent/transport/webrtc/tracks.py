"""Audio on a call's media tracks: the reply going out at real time, the caller's audio coming in.

`ReplyAudioTrack` is the track aiortc's RTP sender pulls from: every `recv()` waits for the next 20 ms slot on
the clock and hands over one 48 kHz frame, reply audio when some is queued, else silence (so the RTP stream
never stalls). The engine's audio (float32 24 kHz, faster than real time) is resampled per reply item in one
soxr stream and cut into whole frames as it arrives. A frame counts as sent when `recv()` hands it to the
encoder, which is as close to the wire as a track gets: `heard_ms` is that count, never a guess from the
clock. A barge-in (`discard`) drops the item's frames still queued; audio the engine still makes for an item
after that is refused.
"""

from __future__ import annotations

import asyncio
import fractions
import logging
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from higgs_agent import SAMPLE_RATE
from higgs_agent.audio import float_to_pcm16
from higgs_agent.audio_formats import StreamResampler

log = logging.getLogger(__name__)

WIRE_RATE = 48_000  # Opus's clock
FRAME_MS = 20
FRAME_SAMPLES = WIRE_RATE * FRAME_MS // 1000
TIME_BASE = fractions.Fraction(1, WIRE_RATE)
MAX_LAG_S = 0.1  # behind the clock by more than this (the event loop stalled): restart the clock, do not burst
_KEPT_ITEMS = 16  # progress of recent items, for a late heard_ms

PlaybackCallback = Callable[[str, str], None]  # (what happened: "started" | "stopped" | "cleared", response_id)


@dataclass(frozen=True)
class _Frame:
    response_id: str
    item_id: str
    pcm: bytes  # FRAME_SAMPLES of PCM16 at 48 kHz
    real_samples: int  # of those, reply audio (the rest pads the item's last frame)


@dataclass
class _Item:
    """One reply item on its way out."""

    response_id: str
    resampler: StreamResampler = field(default_factory=lambda: StreamResampler(SAMPLE_RATE, WIRE_RATE))
    remainder: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))
    queued: int = 0  # frames of it queued, not yet sent
    sent_samples: int = 0  # 48 kHz samples of reply audio handed to the encoder
    finished: bool = False  # its response is done: no more audio will come
    cut: bool = False  # a barge-in dropped the rest


class ReplyAudioTrack(MediaStreamTrack):
    """The agent's voice on the call. `push` queues reply audio (waiting while more than `max_queued_s` is
    queued, so a long reply cannot fill memory), `finish` ends a response, `discard` drops an item's unsent
    audio, `heard_ms` says how much of an item went out. `on_playback` hears when a response's audio starts,
    stops (all of it sent after the response ended) or is cleared."""

    kind = "audio"

    def __init__(self, on_playback: PlaybackCallback | None = None, max_queued_s: float = 60.0) -> None:
        super().__init__()
        self._on_playback = on_playback or (lambda what, response_id: None)
        self._max_frames = max(1, int(max_queued_s * 1000 / FRAME_MS))
        self._frames: deque[_Frame] = deque()
        self._items: OrderedDict[str, _Item] = OrderedDict()
        self._framing: str | None = None  # the item whose audio is being cut into frames
        self._playing: set[str] = set()  # responses started and not yet stopped or cleared
        self._room = asyncio.Event()
        self._room.set()
        self._next_at: float | None = None  # when the next frame is due (event-loop clock)
        self._pts = 0
        self.reply_frames_sent = 0  # frames of reply audio handed to the encoder, all items together

    # -- reply audio in ------------------------------------------------------------------------------------

    async def push(self, response_id: str, item_id: str, samples: np.ndarray) -> bool:
        """Queue float32 mono 24 kHz reply audio; False (nothing queued) for an item a barge-in cut."""
        while len(self._frames) >= self._max_frames and self.readyState == "live":
            self._room.clear()
            await self._room.wait()
        if self.readyState != "live":
            raise MediaStreamError("the track has ended")
        known = self._items.get(item_id)
        if known is not None and known.cut:
            return False
        item = self._item_for(response_id, item_id)
        self._queue(item_id, item, item.resampler.push(samples), last=False)
        return True

    def finish(self, response_id: str) -> None:
        """The response is over: its last part-frame goes out padded with silence, and once all of it has
        been sent `stopped` is reported."""
        for item_id, item in list(self._items.items()):
            if item.response_id != response_id or item.finished:
                continue
            item.finished = True
            if not item.cut:
                self._queue(item_id, item, item.resampler.flush(), last=True)
            if self._framing == item_id:
                self._framing = None
        self._stopped_if_drained(response_id)

    def discard(self, item_id: str) -> int:
        """Barge-in: drop the item's audio not yet sent and refuse the rest; returns the 24 kHz samples
        dropped. Reports `cleared` if the response was audible or had audio waiting."""
        item = self._items.get(item_id)
        if item is None:  # nothing of it ever came: refuse what may still come
            item = self._remember(item_id, _Item(response_id=""))
            item.cut = True
            return 0
        dropped = sum(frame.real_samples for frame in self._frames if frame.item_id == item_id)
        dropped += len(item.remainder)
        self._frames = deque(frame for frame in self._frames if frame.item_id != item_id)
        item.queued = 0
        item.remainder = np.zeros(0, dtype=np.float32)
        item.cut = True
        if self._framing == item_id:
            self._framing = None
        self._room.set()
        if item.response_id in self._playing or dropped:
            self._playing.discard(item.response_id)
            self._on_playback("cleared", item.response_id)
        return dropped * SAMPLE_RATE // WIRE_RATE

    def heard_ms(self, item_id: str) -> float:
        item = self._items.get(item_id)
        return 0.0 if item is None else item.sent_samples * 1000.0 / WIRE_RATE

    def stop(self) -> None:
        super().stop()
        self._frames.clear()
        self._room.set()  # a push waiting for room learns the track ended

    # -- the RTP sender's side -----------------------------------------------------------------------------

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        await self._wait_for_slot()
        if self.readyState != "live":
            raise MediaStreamError
        frame = self._frames.popleft() if self._frames else None
        if frame is None:
            pcm = bytes(FRAME_SAMPLES * 2)
        else:
            pcm = frame.pcm
            self._room.set()
            self._sent(frame)
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

    def _sent(self, frame: _Frame) -> None:
        item = self._items.get(frame.item_id)
        self.reply_frames_sent += 1
        if item is None:
            return
        item.queued -= 1
        item.sent_samples += frame.real_samples
        if frame.response_id not in self._playing and not item.cut:
            self._playing.add(frame.response_id)
            self._on_playback("started", frame.response_id)
        self._stopped_if_drained(frame.response_id)

    def _stopped_if_drained(self, response_id: str) -> None:
        """`stopped` once the response is over and every frame of it (all its items) has been sent."""
        if response_id not in self._playing:
            return
        items = [item for item in self._items.values() if item.response_id == response_id]
        if all(item.finished and item.queued == 0 for item in items):
            self._playing.discard(response_id)
            self._on_playback("stopped", response_id)

    # -- framing ------------------------------------------------------------------------------------------

    def _item_for(self, response_id: str, item_id: str) -> _Item:
        if self._framing is not None and self._framing != item_id:  # a new item: the previous one is complete
            previous = self._items.get(self._framing)
            if previous is not None and not previous.cut:
                self._queue(self._framing, previous, previous.resampler.flush(), last=True)
            self._framing = None
        item = self._items.get(item_id) or self._remember(item_id, _Item(response_id))
        self._framing = item_id
        return item

    def _remember(self, item_id: str, item: _Item) -> _Item:
        self._items[item_id] = item
        while len(self._items) > _KEPT_ITEMS:
            self._items.popitem(last=False)
        return item

    def _queue(self, item_id: str, item: _Item, audio: np.ndarray, last: bool) -> None:
        audio = np.concatenate([item.remainder, audio]) if item.remainder.size else audio
        whole = len(audio) // FRAME_SAMPLES * FRAME_SAMPLES
        for start in range(0, whole, FRAME_SAMPLES):
            self._frames.append(_Frame(item.response_id, item_id, float_to_pcm16(audio[start:start + FRAME_SAMPLES]),
                                       FRAME_SAMPLES))
            item.queued += 1
        rest = audio[whole:]
        if last and rest.size:
            padded = np.zeros(FRAME_SAMPLES, dtype=np.float32)
            padded[:rest.size] = rest
            self._frames.append(_Frame(item.response_id, item_id, float_to_pcm16(padded), rest.size))
            item.queued += 1
            rest = rest[:0]
        item.remainder = rest


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
