"""Both sides' audio on record (`serve --records-audio`), gathered on the event loop and written by the records'
writer thread.

The caller's side is every 16 kHz sample the input clock counts (`InputAudio.on_audio`: after resampling, what
the turn detector and transcriber hear), and each user turn's span of it; the agent's side is each reply item's
audio as it is handed to the transport (`RecordedOutput`), with the place on the caller's clock where it began.
A cut is the item's `heard_ms`, already on record: its audio is read back only that far (records/audio.py).

On the loop this costs a list append per frame, and every second of audio one concatenation and a conversion to
16-bit PCM; the writer thread compresses and stores the chunk. A kill loses at most the chunk being gathered.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from higgs_agent import SAMPLE_RATE
from higgs_agent.agent.events import DomainEvent, ReplyFinished, ReplyItemDone
from higgs_agent.agent.output import SessionOutput
from higgs_agent.audio import float_to_pcm16
from higgs_agent.records.store import AudioWrite
from higgs_agent.records.writer import RecordWriter

CALLER_RATE = 16_000  # the input clock's rate (input_audio.ASR_RATE)
CHUNK_S = 1.0  # audio gathered before it is handed to the writer: what a kill can lose


class _Gathered:
    """Audio waiting to become a chunk."""

    def __init__(self, rate: int, start: int = 0) -> None:
        self.rate = rate
        self.start = start  # the first waiting sample's place on its track
        self.parts: list[np.ndarray] = []
        self.count = 0

    def add(self, samples: np.ndarray) -> bool:
        """True once a chunk's worth is waiting."""
        self.parts.append(samples)
        self.count += len(samples)
        return self.count >= CHUNK_S * self.rate

    def take(self) -> tuple[int, bytes]:
        """Where the waiting audio starts, and it as PCM16; the next chunk starts after it."""
        start, pcm = self.start, float_to_pcm16(np.concatenate(self.parts)) if self.parts else b""
        self.start += self.count
        self.parts, self.count = [], 0
        return start, pcm


class AudioRecorder:
    """One session's audio on record. `clock_ms` is the caller's clock now (the input audio heard so far)."""

    def __init__(self, writer: RecordWriter, session_id: str, clock_ms: Callable[[], int]) -> None:
        self.writer = writer
        self.session_id = session_id
        self._clock_ms = clock_ms
        self._caller = _Gathered(CALLER_RATE)
        self._agent: dict[str, tuple[_Gathered, float]] = {}  # item id -> its audio waiting, where it began

    def caller(self, samples: np.ndarray) -> None:
        """16 kHz samples, each one the input clock counts, in order."""
        if self._caller.add(samples):
            self._flush_caller()

    def agent(self, item_id: str, samples: np.ndarray) -> None:
        """24 kHz reply audio of an item, as it is handed to the transport."""
        if item_id not in self._agent:
            self._agent[item_id] = (_Gathered(SAMPLE_RATE), float(self._clock_ms()))
        if self._agent[item_id][0].add(samples):
            self._flush_agent(item_id)

    def turn(self, item_id: str, audio: np.ndarray, start_ms: float | None) -> None:
        """A user turn's 16 kHz audio: a span of the caller's track from `start_ms`, or (None: an item the
        client created, never heard on the input) audio of its own."""
        if start_ms is not None:
            self.writer.put(AudioWrite(self.session_id, "turn", item_id, max(round(start_ms * CALLER_RATE / 1000), 0),
                                       CALLER_RATE, samples=len(audio)))
            return
        step = int(CHUNK_S * CALLER_RATE)
        for at in range(0, len(audio), step):
            self.writer.put(AudioWrite(self.session_id, "item", item_id, at, CALLER_RATE,
                                       float_to_pcm16(audio[at:at + step])))

    def observe(self, event: DomainEvent) -> None:
        """A reply item that is over has all its audio: what waits of it goes now."""
        match event:
            case ReplyItemDone(_, item) if item.id in self._agent:
                self._flush_agent(item.id, last=True)
            case ReplyFinished(_, _, item_id) if item_id in self._agent:
                self._flush_agent(item_id, last=True)

    def end(self) -> None:
        self._flush_caller()
        for item_id in list(self._agent):
            self._flush_agent(item_id, last=True)

    def _flush_caller(self) -> None:
        start, pcm = self._caller.take()
        if pcm:
            self.writer.put(AudioWrite(self.session_id, "caller", None, start, CALLER_RATE, pcm))

    def _flush_agent(self, item_id: str, last: bool = False) -> None:
        gathered, at_ms = self._agent.pop(item_id) if last else self._agent[item_id]
        start, pcm = gathered.take()
        if pcm:
            self.writer.put(AudioWrite(self.session_id, "agent", item_id, start, SAMPLE_RATE, pcm, at_ms=at_ms))


class RecordedOutput:
    """A session's output (a SessionOutput) whose reply audio is also on record; the rest is the transport's."""

    def __init__(self, output: SessionOutput, recorder: AudioRecorder) -> None:
        self._output = output
        self._recorder = recorder

    async def send_event(self, event: DomainEvent) -> None:
        await self._output.send_event(event)

    async def send_audio(self, response_id: str, item_id: str, samples: np.ndarray) -> None:
        await self._output.send_audio(response_id, item_id, samples)
        self._recorder.agent(item_id, samples)  # once handed over: audio the transport refused was never sent

    async def flush_audio(self, response_id: str) -> None:
        await self._output.flush_audio(response_id)

    def discard_audio(self, item_id: str) -> int:
        return self._output.discard_audio(item_id)

    def heard_ms(self, item_id: str) -> float:
        return self._output.heard_ms(item_id)

    def hold_audio(self) -> bool:
        return self._output.hold_audio()

    def release_audio(self) -> None:
        self._output.release_audio()
