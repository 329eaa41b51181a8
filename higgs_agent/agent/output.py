"""What a transport gives a session: the one interface between the conversation and a wire."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from higgs_agent.agent.events import DomainEvent


class OutputClosed(Exception):
    """The transport can no longer deliver: the client is gone, or stopped reading and was disconnected."""


class SessionOutput(Protocol):
    """What a transport gives a session: the session's events out (a transport encodes those its wire carries,
    before it awaits anything: an event may name a live conversation item), reply audio out, the end of a
    response's audio, a way to drop reply audio the listener has not yet heard (barge-in), and what the listener
    has heard. Sends raise OutputClosed once the client cannot be reached. Transports implement the audio half
    with a `ReplyAudioSink` (transport/audio_sink.py)."""

    async def send_event(self, event: DomainEvent) -> None: ...

    async def send_audio(self, response_id: str, item_id: str, samples: np.ndarray) -> None:
        """float32 mono 24 kHz; the transport encodes it for its wire."""

    async def flush_audio(self, response_id: str) -> None:
        """The response sends no more audio: what is held back for a whole frame goes out."""

    def discard_audio(self, item_id: str) -> int:
        """Drop queued, unsent audio of an item; return the samples (24 kHz) dropped."""

    def heard_ms(self, item_id: str) -> float:
        """How much of the item's audio the listener has heard by now."""

    def hold_audio(self) -> bool:
        """Stop playing reply audio out, keeping it (maybe an interruption); False where it cannot."""

    def release_audio(self) -> None:
        """Play on after `hold_audio`."""
