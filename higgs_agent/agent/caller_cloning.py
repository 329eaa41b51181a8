"""The caller's own voice (`audio.output.voice = "caller"`): their clean speech, gathered turn after turn at the
rate it came in, cloned afresh in the background once enough more has come."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import numpy as np

from higgs_agent.audio import resample
from higgs_agent.model.asr import Transcriber
from higgs_agent.model.prompts import VoiceReference
from higgs_agent.streaming.speech_engine import SpeechEngine
from higgs_agent.voices.caller_voice import CallerClip, CallerVoice

log = logging.getLogger(__name__)
_ASR_RATE = 16_000


class CallerCloning:
    def __init__(self, engine: SpeechEngine, transcriber: Transcriber,
                 spawn: Callable[[asyncio.Future], None], name: str) -> None:
        self._engine = engine
        self._transcriber = transcriber
        self._spawn = spawn  # the session keeps its background tasks (and cancels them when it closes)
        self._name = name
        self.voice = CallerVoice()  # the caller's speech so far
        self.reference: VoiceReference | None = None  # the newest clone
        self.task: asyncio.Task | None = None  # the clone being made (or the last one made)

    def learn(self, samples: np.ndarray, rate: int, words: str, speaking_in_it: bool) -> None:
        """Gather a turn's speech; when the session speaks in the caller's voice and enough more has come,
        clone it (the turn does not wait). Gathered only otherwise: a clone is an encode on the model worker
        per turn (and, each clip being its own length, a new oneDNN convolution cached each time: one source
        of the soak's memory growth)."""
        self.voice.add_turn(samples, rate, words)
        if not speaking_in_it:
            return
        clip = self.voice.take_due_clip()
        if clip is not None:
            self.task = asyncio.create_task(self._clone(clip), name=f"{self._name}-voice")
            self._spawn(self.task)

    @property
    def cloning(self) -> bool:
        return self.task is not None and not self.task.done()

    async def _clone(self, clip: CallerClip) -> None:
        try:
            words = clip.transcript
            if words is None:  # a turn was cut to fit: the clip's own words
                words = (await self._transcriber.transcribe_async(
                    resample(clip.audio, clip.rate, _ASR_RATE))).text.strip()
            reference = await self._engine.voice(clip.audio, clip.rate, words)
        except Exception:  # noqa: BLE001 - the previous reference stays
            log.exception("cloning the caller's voice failed")
            return
        self.reference = reference
        log.info("caller voice: %.1f s of speech from %d turns at %d Hz", clip.speech_s, clip.turns, clip.rate)

    def release(self) -> None:
        """The session is over: its speech and clone go, and the session's callback (a cycle back to it)."""
        self.voice = CallerVoice()
        self.reference = None
        self.task = None
        self._spawn = _keep_nothing


def _keep_nothing(task: asyncio.Future) -> None:
    task.cancel()
