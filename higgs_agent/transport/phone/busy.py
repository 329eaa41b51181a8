"""The words a caller hears when the agent has no room for the call, spoken ahead of need.

A call that starts while every engine slot is busy cannot be spoken to by the engine, so the apology is spoken
once, while a slot is free (at the first webhook, before that call's session exists), and kept as 24 kHz PCM:
saying it later needs no slot at all. If no slot was free then, the next webhook tries again; until it is
ready, a call at capacity is hung up without a word.
"""

from __future__ import annotations

import asyncio
import logging
import time

import numpy as np

from higgs_agent import SAMPLE_RATE
from higgs_agent.agent.phrases import PhraseSplitter
from higgs_agent.agent.services import AgentServices
from higgs_agent.agent.speaker import PhraseSpeaker
from higgs_agent.streaming.engine import AtCapacityError

log = logging.getLogger(__name__)


class BusyMessage:
    def __init__(self, text: str | None) -> None:
        self.text = (text or "").strip()
        self.pcm: np.ndarray | None = None  # float32 mono at SAMPLE_RATE, once spoken
        self._task: asyncio.Task[None] | None = None

    @property
    def ready(self) -> bool:
        return self.pcm is not None

    async def prepare(self, services: AgentServices, wait_s: float) -> None:
        """Speak the message if that is not done yet and a slot is free; wait at most `wait_s` for it (the
        speaking goes on after that, for the next call)."""
        if self.ready or not self.text:
            return
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._speak(services), name="busy-message")
        await asyncio.wait({self._task}, timeout=wait_s)

    async def _speak(self, services: AgentServices) -> None:
        started = time.perf_counter()
        speaker = PhraseSpeaker(services.engine, services.sampling)
        voice = services.resolve_voice(None)  # the server's voice, as the agent's replies
        splitter = PhraseSplitter()
        chunks: list[np.ndarray] = []
        try:
            async with services.engine.lease("busy-message") as lease:  # one slot for every phrase of it
                for phrase in splitter.feed(self.text) + splitter.flush():
                    async for chunk in speaker.speak(phrase, lease, voice):
                        chunks.append(chunk)
        except AtCapacityError:
            log.info("busy message: no free slot to speak it now; the next call tries again")
            return
        except Exception as exc:  # noqa: BLE001 - a model error: try again at the next call
            log.warning("busy message: speaking it failed (%s); the next call tries again", exc)
            return
        if chunks:
            self.pcm = np.concatenate(chunks).astype(np.float32)
            log.info("busy message ready: %.1f s of speech, spoken in %.1f s", len(self.pcm) / SAMPLE_RATE,
                     time.perf_counter() - started)
