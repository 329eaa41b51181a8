"""Phrases in, 24 kHz PCM out: one engine stream per phrase, decoded incrementally, in one steady voice.

A reply is spoken phrase by phrase so speech starts on the first complete phrase. Each phrase is its own
stream, all under the response's lease (capacity decided once, when the response starts), and the voice is
pinned or it would drift between phrases: the session's voice reference (a server voice, a library voice,
or the caller's own voice), else the session's first spoken phrase becomes the reference for everything it
says after (zero-shot cloning of itself).

Several speakers: text with [SPEAKERn] tags is spoken with one reference per speaker, all in every phrase's
prompt, as Higgs Audio does it in one generation; `SpeakerTags` carries the current tag into phrases that
the splitter cut from the middle of a speaker's turn.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from higgs_agent import FRAME_RATE, SAMPLE_RATE
from higgs_agent.model.prompts import AudioClip, SpeechPrompt, VoiceReference
from higgs_agent.model.sampling import SamplingSettings
from higgs_agent.streaming.latency import GenerationStats
from higgs_agent.streaming.speech_engine import SpeechEngine

def frame_budget(text: str, cap: int) -> int:
    """Frames a phrase may take: ~2x a slow speaking pace (0.12 s per character) plus a second, so a model
    that never says EOS cannot talk for ever about a short phrase."""
    return max(FRAME_RATE, min(cap, int(FRAME_RATE * (1.0 + 0.12 * len(text)))))


_TAG = re.compile(r"\[SPEAKER(\d+)\]\s*")


class SpeakerTags:
    """The speaker of each phrase in multi-speaker text: a phrase without a tag continues the last speaker."""

    def __init__(self) -> None:
        self.current = "[SPEAKER0]"

    def tag(self, phrase: str) -> tuple[str, str]:
        """(what the engine is asked to say, with its speaker tag; the words alone, for the transcript)."""
        tags = _TAG.findall(phrase)
        if not phrase.lstrip().startswith("[SPEAKER"):
            phrase = f"{self.current} {phrase}"
        if tags:
            self.current = f"[SPEAKER{tags[-1]}]"
        return phrase, " ".join(_TAG.sub(" ", phrase).split())


class PhraseSpeaker:
    def __init__(self, engine: SpeechEngine, sampling: SamplingSettings) -> None:
        self.engine = engine
        self.sampling = sampling
        self.own_voice: VoiceReference | None = None  # set by the first phrase spoken without a reference

    def prompt(self, text: str, voice: VoiceReference | None = None, scene: str | None = None,
               speaker_voices: tuple[VoiceReference, ...] = ()) -> SpeechPrompt:
        """What the engine is asked to say for `text` (the voice pinned, or one per speaker; the delivery in
        the scene)."""
        if speaker_voices:
            clipped = tuple(speaker.clipped() for speaker in speaker_voices)
            return SpeechPrompt(text=text, speaker_voices=clipped, scene=scene)
        reference = voice or self.own_voice
        return SpeechPrompt(text=text, voice=None if reference is None else reference.clipped(), scene=scene)

    async def speak(self, text: str, lease: Any = None, voice: VoiceReference | None = None,  # noqa: ANN401 - lease
                    scene: str | None = None, max_frames: int | None = None,
                    on_first_frame: Callable[[GenerationStats], None] | None = None,
                    speaker_voices: tuple[VoiceReference, ...] = ()) -> AsyncIterator[np.ndarray]:
        """Yield float32 PCM chunks of `text` spoken in `voice` (or the session's own voice), or with a voice
        per [SPEAKERn] tag. `on_first_frame` sees the stream's timing when its first frame arrives."""
        pinned = voice is not None or self.own_voice is not None or bool(speaker_voices)
        budget = frame_budget(text, self.sampling.max_frames if max_frames is None else max_frames)
        settings = replace(self.sampling, max_frames=budget)
        spoken: list[np.ndarray] = []  # kept only until the session's own voice is pinned

        def on_frame(_: Any) -> None:  # noqa: ANN401 - a frame's codes, or a remote's chunk
            nonlocal on_first_frame
            if on_first_frame is not None:
                on_first_frame, first = None, on_first_frame
                first(speech.stats)

        async with self.engine.stream(self.prompt(text, voice, scene, speaker_voices), settings, lease=lease,
                                      frames=True) as speech:
            async for chunk in speech.pcm(on_frame=on_frame):
                if not pinned:
                    spoken.append(chunk)
                yield chunk
        if pinned or speech.stats.stop_reason != "end_of_audio":
            return
        if speech.frames:  # the local engine: the phrase's own codes
            self.own_voice = VoiceReference(codes=torch.stack(speech.frames, dim=1), transcript=text)
        elif spoken:  # a remote engine encodes references itself: the phrase's sound
            self.own_voice = VoiceReference(codes=None, transcript=text,
                                            audio=AudioClip(np.concatenate(spoken), SAMPLE_RATE)).clipped()
