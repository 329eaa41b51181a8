"""A user turn understood: its words (the reading begun at the pause where it ended, else Whisper now), who
spoke them and how (alongside, on the analyzer's own thread), the caller's voice learned from it; and, only
when a reply needs them, its codec codes (an encode on the model's worker)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from higgs_agent.agent.caller_cloning import CallerCloning
from higgs_agent.agent.conversation import ConversationItem
from higgs_agent.agent.events import CallerUnderstood, ItemFinished, Say, TranscriptionFailed, UserTranscribed
from higgs_agent.agent.listening import Listening
from higgs_agent.agent.services import AgentServices
from higgs_agent.agent.turn_timing import TurnTiming
from higgs_agent.deadlines import StageTimeout, within
from higgs_agent.model.asr import Transcript
from higgs_agent.model.prompts import VoiceReference
from higgs_agent.understanding.context import context_line

if TYPE_CHECKING:
    from higgs_agent.agent.config import Transcription

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WireAudio:
    """A turn's audio at the rate it came in (the caller's voice is cloned from it)."""

    samples: np.ndarray
    rate: int


class TurnReader:
    def __init__(self, services: AgentServices, say: Say, listening: Listening, cloning: CallerCloning,
                 stalled: Callable[[StageTimeout], None]) -> None:
        self._services = services
        self._say = say
        self._listening = listening
        self._cloning = cloning
        self._stalled = stalled  # a stage past its bound: logged and counted by the session
        analyzer = services.analyzer
        self._caller = analyzer.new_caller_state() if analyzer is not None else None  # who spoke so far
        self._latest: tuple[str, WireAudio] | None = None  # the latest user turn's audio, for its codes

    def heard(self, item_id: str, wire: WireAudio) -> None:
        """A user turn's audio, kept (the latest only) in case its reply needs its codes."""
        self._latest = (item_id, wire)

    def release(self) -> None:
        self._latest = None

    async def read(self, item: ConversationItem, audio: np.ndarray, settings: Transcription,
                   early: asyncio.Future[Transcript] | None, wire: WireAudio | None, in_caller_voice: bool,
                   timing: TurnTiming) -> bool:
        """The turn's words into `item`, and what else the turn tells; False if it could not be transcribed."""
        analyzer = self._services.analyzer
        analysis = (analyzer.start(audio, self._caller)  # not behind a warm-up: this turn goes without
                    if analyzer is not None and self._caller is not None and not analyzer.warming else None)
        try:
            transcript = await within("transcription", self._services.reply_limits.transcription_s,
                                      self._transcript(audio, settings, early))
        except Exception as exc:  # noqa: BLE001 - reported against the item, the session goes on
            if isinstance(exc, StageTimeout):
                self._stalled(exc)
            log.exception("transcription failed")
            item.text = ""
            await self._say(TranscriptionFailed(item.id, f"transcription failed: {exc}"))
            await self._say(ItemFinished(item))
            return False
        item.text, item.language = transcript.text.strip(), transcript.language
        timing.mark("transcript")
        log.info("user %s: %r (%s)", item.id, item.text, item.language)
        await self._listening.finish(item.id, item.text)
        await self._say(UserTranscribed(item.id, item.text, item.language, transcript.duration_s))
        if analysis is not None:
            await self._understand(item, analysis, transcript.language)
        if wire is not None:
            self._cloning.learn(wire.samples, wire.rate, item.text, speaking_in_it=in_caller_voice)
        await self._say(ItemFinished(item))
        return True

    async def _transcript(self, audio: np.ndarray, settings: Transcription,
                          early: asyncio.Future[Transcript] | None) -> Transcript:
        if early is not None:
            try:
                return await asyncio.shield(early)
            except Exception:  # noqa: BLE001 - read it again below; a second failure is reported
                log.warning("the transcript begun at the pause failed; transcribing the turn again")
        return await self._services.transcriber.transcribe_async(audio, settings.language, settings.prompt)

    async def _understand(self, item: ConversationItem, analysis: Any, language: str) -> None:  # noqa: ANN401
        try:
            item.context = await within("understanding", self._services.reply_limits.understanding_s,
                                        analysis.finish(item.text or "", language))
        except StageTimeout as exc:  # the turn goes on without the caller's context
            self._stalled(exc)
            return
        except Exception:  # noqa: BLE001 - the turn goes on without the caller's context
            log.exception("understanding the turn failed")
            return
        log.info("caller context %s: %s", item.id, context_line(item.context))
        await self._say(CallerUnderstood(item.id, item.context))

    async def voice(self, item: ConversationItem | None) -> VoiceReference | None:
        """The latest user turn as a voice to clone (a first turn in the caller's voice has nothing else yet), in
        the form the engine takes (codes locally, kept on the item; the sound for a remote engine)."""
        if item is None or item.codes is not None:
            return None if item is None else VoiceReference(codes=item.codes, transcript=item.text or "")
        if self._latest is None or self._latest[0] != item.id:
            return None
        wire = self._latest[1]
        if len(wire.samples) < wire.rate // 10:
            return None
        try:
            reference = await self._services.engine.voice(wire.samples, wire.rate, item.text or "", stage="user_codes")
        except StageTimeout as exc:  # spoken in the model's own voice rather than not at all
            self._stalled(exc)
            return None
        except Exception:  # noqa: BLE001 - as above
            log.exception("cloning the caller's voice from their turn failed")
            return None
        if reference.codes is not None:
            item.codes, self._latest = reference.codes, None
        return reference

    async def codes(self, item: ConversationItem | None) -> Any:  # noqa: ANN401 - codes tensor or None
        """The codec codes of the latest user turn, encoded on first use (only some replies need them)."""
        if item is None or item.codes is not None or self._latest is None or self._latest[0] != item.id:
            return None if item is None else item.codes
        wire = self._latest[1]
        self._latest = None  # encoded (or not): the audio is not needed any more
        if len(wire.samples) >= wire.rate // 10:
            try:
                item.codes = await self._services.engine.encode(wire.samples, wire.rate, stage="user_codes")
            except StageTimeout as exc:  # the reply goes on without hearing the audio
                self._stalled(exc)
            except Exception:  # noqa: BLE001 - the reply goes on without hearing the audio
                log.exception("encoding the user's audio failed")
        return item.codes
