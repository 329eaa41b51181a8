"""Phrases in, 24 kHz PCM out: one engine generation per phrase, decoded incrementally, in one steady voice.

A reply is spoken phrase by phrase so speech starts on the first complete phrase. Each phrase is its own
generation, so the voice must be pinned or it would drift between phrases: the session's voice reference
(a server voice, or the caller's own voice), else the session's first spoken phrase becomes the reference
for everything it says after (zero-shot cloning of itself).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import replace

import numpy as np
import torch

from higgs_agent import FRAME_RATE
from higgs_agent.model.prompts import SpeechPrompt, VoiceReference, build_inputs
from higgs_agent.model.sampling import SamplingSettings
from higgs_agent.streaming.engine import StreamingEngine
from higgs_agent.streaming.speech import stream_pcm

MAX_REFERENCE_FRAMES = 10 * FRAME_RATE  # longer references add prompt cost without a better voice


def frame_budget(text: str, cap: int) -> int:
    """Frames a phrase may take: ~2x a slow speaking pace (0.12 s per character) plus a second, so a model
    that never says EOS cannot talk for ever about a short phrase."""
    return max(FRAME_RATE, min(cap, int(FRAME_RATE * (1.0 + 0.12 * len(text)))))


def clip_reference(voice: VoiceReference) -> VoiceReference:
    if voice.frames <= MAX_REFERENCE_FRAMES:
        return voice
    return replace(voice, codes=voice.codes[:, -MAX_REFERENCE_FRAMES:])


class PhraseSpeaker:
    def __init__(self, engine: StreamingEngine, sampling: SamplingSettings, system: str | None = None) -> None:
        self.engine = engine
        self.sampling = sampling
        self.system = system
        self.own_voice: VoiceReference | None = None  # set by the first phrase spoken without a reference

    async def speak(self, text: str, voice: VoiceReference | None = None,
                    on_first_frame: Callable[[], None] | None = None) -> AsyncIterator[np.ndarray]:
        """Yield float32 PCM chunks of `text` spoken in `voice` (or the session's own voice)."""
        reference = voice or self.own_voice
        prompt = SpeechPrompt(text=text, voice=None if reference is None else clip_reference(reference))
        if self.system:
            prompt = replace(prompt, system=self.system)
        inputs = build_inputs(self.engine.bundle.processor, prompt)
        settings = replace(self.sampling, max_frames=frame_budget(text, self.sampling.max_frames))
        generation = self.engine.start(inputs, settings)  # AtCapacityError when every slot is busy
        frames: list[torch.Tensor] = []

        def on_frame(frame: torch.Tensor) -> None:
            if not frames and on_first_frame is not None:
                on_first_frame()
            frames.append(frame)

        async with contextlib.aclosing(stream_pcm(self.engine, generation, on_frame=on_frame)) as pcm:
            async for chunk in pcm:
                yield chunk
        if reference is None and frames and generation.stats.stop_reason == "end_of_audio":
            self.own_voice = VoiceReference(codes=torch.stack(frames, dim=1), transcript=text)
