"""A WebRTC call from the client's side, for tests and benchmarks: an aiortc peer whose microphone plays what it
is told at real time (silence otherwise), that records every event of the `oai-events` channel and every frame
of reply audio with its arrival time, and calls the way OpenAI's browser examples do (the raw SDP offer to
`/v1/realtime/calls`)."""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import json
import time
from collections.abc import Callable
from typing import Any

import av
import httpx
import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from higgs_agent.audio import float_to_pcm16, resample
from higgs_agent.transport.webrtc.tracks import FRAME_SAMPLES, WIRE_RATE, frame_to_mono

RATE = WIRE_RATE  # the microphone sends what the call's tracks carry: 48 kHz, 20 ms frames
FRAME = FRAME_SAMPLES
SOUND_RMS = 1e-3  # RMS of a 20 ms window with sound in it (Opus keeps digital silence near 1e-5)


class CallRefused(RuntimeError):
    """The server did not answer the offer (its status and body say why)."""


class Microphone(MediaStreamTrack):
    """The client's microphone: plays what it is told to say at real time, silence otherwise;
    `unplug()` stops it sending anything at all."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._pending = np.zeros(0, dtype=np.float32)
        self._next_at: float | None = None
        self._pts = 0
        self._unplugged = asyncio.Event()

        self.drained_at: float | None = None  # loop time when the last sample it was told to say went out

    def say(self, audio: np.ndarray, rate: int) -> None:
        self._pending = np.concatenate([self._pending, resample(audio, rate, RATE)])
        self.drained_at = None

    def unplug(self) -> None:
        self._unplugged.set()

    async def recv(self) -> av.AudioFrame:
        if self._unplugged.is_set():
            await asyncio.Event().wait()  # never again (until the connection closes)
        now = asyncio.get_running_loop().time()
        self._next_at = now if self._next_at is None else self._next_at + FRAME / RATE
        if self._next_at > now:
            await asyncio.sleep(self._next_at - now)
        chunk, self._pending = self._pending[:FRAME], self._pending[FRAME:]
        if len(chunk) and not len(self._pending):
            self.drained_at = self._next_at  # when the frame with the last sample went (as `talk` times a chunk)
        chunk = np.pad(chunk, (0, FRAME - len(chunk)))
        frame = av.AudioFrame.from_ndarray(np.frombuffer(float_to_pcm16(chunk), np.int16)[None, :], format="s16",
                                           layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = RATE, self._pts, fractions.Fraction(1, RATE)
        self._pts += FRAME
        return frame


class Caller:
    """One call from the client's side: its events (with arrival times) and the audio it received."""

    def __init__(self, pc: RTCPeerConnection) -> None:
        self.pc = pc
        self.microphone = Microphone()
        self.channel = pc.createDataChannel("oai-events")
        pc.addTrack(self.microphone)
        self.events: list[tuple[float, dict]] = []
        self.heard: list[tuple[float, np.ndarray]] = []  # (arrival, 48 kHz mono) per frame
        self.answer = ""
        self.call_id = ""
        self._changed = asyncio.Event()
        self._listener: asyncio.Task | None = None
        self.channel.on("message", self._on_message)
        pc.on("track", lambda track: setattr(self, "_listener", asyncio.ensure_future(self._listen(track))))

    @classmethod
    async def offer(cls) -> tuple[Caller, str]:
        caller = cls(RTCPeerConnection(RTCConfiguration(iceServers=[])))
        await caller.pc.setLocalDescription(await caller.pc.createOffer())
        return caller, caller.pc.localDescription.sdp

    @classmethod
    async def call(cls, base: str, key: str | None = None) -> Caller:
        """A call the way OpenAI's browser examples make it: the raw SDP offer, an optional Bearer key."""
        caller, sdp = await cls.offer()
        headers = {"Content-Type": "application/sdp", **({"Authorization": f"Bearer {key}"} if key else {})}
        async with httpx.AsyncClient() as http:
            answer = await http.post(f"{base}/v1/realtime/calls", content=sdp, headers=headers)
        if answer.status_code != 201 or not answer.headers["content-type"].startswith("application/sdp"):
            await caller.pc.close()
            raise CallRefused(f"HTTP {answer.status_code}: {answer.text[:500]}")
        await caller.connect(answer.text, answer.headers["location"])
        return caller

    async def connect(self, answer: str, location: str) -> None:
        self.answer, self.call_id = answer, location.rsplit("/", 1)[-1]
        if location != f"/v1/realtime/calls/{self.call_id}" or not self.call_id.startswith("rtc_"):
            raise CallRefused(f"the answer's Location is {location!r}, not /v1/realtime/calls/rtc_...")
        await self.pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
        await self.until("session.created", timeout=20)

    def send(self, event: dict) -> None:
        self.channel.send(json.dumps(event))

    async def until(self, kind: str | Callable[[dict], bool], timeout: float = 60, after: int = 0) -> dict:
        """The first event (from index `after` on) of a type, or matching a predicate."""
        match = (lambda event: event["type"] == kind) if isinstance(kind, str) else kind
        deadline = time.monotonic() + timeout
        while True:
            for _, event in self.events[after:]:
                if match(event):
                    return event
            self._changed.clear()
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {kind} within {timeout} s; got {self.types()}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), left)

    def types(self) -> list[str]:
        return [event["type"] for _, event in self.events]

    def at(self, kind: str, **fields: Any) -> float:  # noqa: ANN401
        """When the first event of `kind` with these fields arrived."""
        return next(t for t, e in self.events if e["type"] == kind and all(e.get(k) == v for k, v in fields.items()))

    def audio(self, start: float = 0.0, end: float = float("inf")) -> np.ndarray:
        chunks = [samples for t, samples in self.heard if start <= t < end]
        return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)

    async def hang_up(self) -> None:
        await self.pc.close()
        if self._listener is not None:
            self._listener.cancel()

    def _on_message(self, text: str) -> None:
        self.events.append((asyncio.get_running_loop().time(), json.loads(text)))
        self._changed.set()

    async def _listen(self, track: MediaStreamTrack) -> None:
        loop = asyncio.get_running_loop()
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                self.heard.append((loop.time(), frame_to_mono(frame)))


