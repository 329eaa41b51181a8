"""While the caller speaks: their words as they come, the transcript ready before the turn ends, and (with
semantic_vad) the judgement that ends it.

- Every `PARTIAL_EVERY_MS` of new speech, when the ASR thread is idle, the turn so far is read again and the
  words two readings agree on go out as transcription deltas (partial_transcript.py).
- At each pause the VAD reports, the turn so far is read at once. If the turn ends at that pause (no speech
  since), that reading *is* the final transcript: the session takes it (`take`) instead of starting Whisper
  after the turn. With semantic_vad the same reading, and smart-turn on the same audio, judge whether the turn
  is over (end_of_turn.py); a "yes" ends it at once (`end_turn`), a "no" lets the VAD's longest wait decide.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np

from higgs_agent.agent.end_of_turn import EndOfTurnPolicy, SmartTurn, words_verdict
from higgs_agent.agent.events import DomainEvent, PauseJudged, Say, UserTranscriptGrew
from higgs_agent.agent.partial_transcript import StablePrefix
from higgs_agent.agent.vad import SpeechPaused
from higgs_agent.model.asr import Transcriber, Transcript

log = logging.getLogger(__name__)
PARTIAL_EVERY_MS = 1000  # new speech between two readings of a turn in progress
WATCHED_EVERY_MS = 300  # ... of a turn that may be interrupting the agent (its words decide: interruptions.py)
_SPEAKING_GAP_MS = 60  # unvoiced audio after the last voiced frame past which the caller counts as pausing
_KEPT_PREFIXES = 8  # turns whose deltas are remembered until their final transcript


@dataclass(frozen=True)
class ListeningHooks:
    """What the listener asks of its session. They refer to the session, which refers to the listener: `close`
    lets go of them, so a closed session is freed by reference counting, not left to the cycle collector."""

    send: Say
    end_turn: Callable[[int], Awaitable[None]]  # end the VAD's turn at that pause, if the caller has not gone on
    language: Callable[[], tuple[str | None, str | None]]  # (language, prompt) of the transcription settings
    publish: Callable[[DomainEvent], None]  # the session's domain events
    on_words: Callable[[str, str], Awaitable[None]]  # every reading of the watched turn: (item id, its words)
    turn_model: Callable[[], SmartTurn | None]  # semantic_vad's voice judge (None: the words alone judge)
    # (item id, every word agreed so far, the reading that agreed them: its start and end ms and its words)
    on_agreed: Callable[[str, str, tuple[int, int, str]], None] = lambda item_id, words, reading: None


@dataclass
class _Reading:
    start_ms: int
    end_ms: int
    task: asyncio.Future[Transcript]


class Listening:
    def __init__(self, transcriber: Transcriber, hooks: ListeningHooks) -> None:
        self._transcriber = transcriber
        self._hooks: ListeningHooks | None = hooks  # None once closed
        self._watched: str | None = None
        self._item_id: str | None = None  # the turn in progress (its item id from speech_started)
        self._reading: _Reading | None = None  # the latest reading of it
        self._read_to_ms = 0  # end of the speech the latest reading covered
        self._prefixes: OrderedDict[str, StablePrefix] = OrderedDict()
        self._tasks: set[asyncio.Task] = set()

    # --- what the session tells it --------------------------------------------------------------------

    def started(self, item_id: str, start_ms: int) -> None:
        self._item_id = item_id
        self._reading = None
        self._read_to_ms = start_ms
        self._prefixes[item_id] = StablePrefix()
        while len(self._prefixes) > _KEPT_PREFIXES:
            self._prefixes.popitem(last=False)

    def watch(self, item_id: str | None) -> None:
        """Read this turn often and report each reading (`on_words`), while it may be an interruption."""
        self._watched = item_id

    def heard(self, span: tuple[int, int] | None, now_ms: int, audio: Callable[[], np.ndarray | None]) -> None:
        """New audio arrived: `span` is the turn so far on the input clock (InputAudio.speech_span), `now_ms` the
        clock, `audio` gives its samples (a copy, so only asked for when a reading starts)."""
        if self._item_id is None or span is None or self._transcriber.busy:
            return
        start_ms, end_ms = span
        if now_ms - end_ms > _SPEAKING_GAP_MS:
            return  # the caller is pausing: the pause's own reading is due, and must not wait behind this one
        every = WATCHED_EVERY_MS if self._watched == self._item_id else PARTIAL_EVERY_MS
        if end_ms - self._read_to_ms >= every and (samples := audio()) is not None:
            self._read(start_ms, end_ms, samples, draft=True)

    def paused(self, event: SpeechPaused, policy: EndOfTurnPolicy | None) -> None:
        if self._item_id is None:
            return
        reading = self._reading
        if reading is None or (reading.start_ms, reading.end_ms) != (event.audio_start_ms, event.audio_end_ms):
            reading = self._read(event.audio_start_ms, event.audio_end_ms, event.audio)
        if policy is not None:
            self._spawn(self._judge(event, policy, reading, self._item_id))

    def stopped(self) -> None:
        self._item_id = None

    def take(self, start_ms: int, end_ms: int) -> asyncio.Future[Transcript] | None:
        """The reading of exactly this turn's audio, made at its last pause; None when there is none."""
        reading = self._reading
        self._reading = None
        if reading is not None and (reading.start_ms, reading.end_ms) == (start_ms, end_ms):
            return reading.task
        return None

    async def finish(self, item_id: str, transcript: str, always: bool = False) -> None:
        """The turn's final transcript is out next: send what it adds to its deltas first (`always`: even when
        none were sent, as OpenAI's transcription sessions send each turn's words as deltas)."""
        prefix = self._prefixes.pop(item_id, None)
        if prefix is None and always:
            prefix = StablePrefix()
        hooks = self._hooks
        if hooks is None or prefix is None or not (prefix.sent or always):
            return
        if delta := prefix.finish(transcript):
            await hooks.send(UserTranscriptGrew(item_id, delta))

    def close(self) -> None:
        """The session is over: stop what is in flight and let go of the session (its hooks)."""
        self._item_id = None
        self._reading = None
        self._prefixes.clear()
        for task in list(self._tasks):
            task.cancel()
        self._hooks = None

    # --- readings and judgements -----------------------------------------------------------------------

    def _read(self, start_ms: int, end_ms: int, audio: np.ndarray, draft: bool = False) -> _Reading:
        language, prompt = self._hooks.language() if self._hooks is not None else (None, None)
        task = self._transcriber.submit(audio, language, prompt, draft=draft)
        task.add_done_callback(_retrieve)  # a reading nobody awaits any more must not log "never retrieved"
        reading = _Reading(start_ms, end_ms, task)
        self._reading = reading
        self._read_to_ms = end_ms
        self._spawn(self._deltas(reading, self._item_id))
        return reading

    async def _deltas(self, reading: _Reading, item_id: str | None) -> None:
        try:
            transcript = await asyncio.shield(reading.task)
        except Exception:  # noqa: BLE001 - a partial reading that failed: the final one reports errors
            return
        prefix = self._prefixes.get(item_id) if item_id is not None else None
        hooks = self._hooks
        if hooks is None or prefix is None or self._item_id != item_id:
            return  # the turn is over (or the session): its final transcript speaks for it
        if self._watched == item_id:
            await hooks.on_words(item_id, transcript.text)
        if delta := prefix.update(transcript.text):
            await hooks.send(UserTranscriptGrew(item_id, delta))
            hooks.on_agreed(item_id, prefix.sent, (reading.start_ms, reading.end_ms, transcript.text))

    async def _judge(self, event: SpeechPaused, policy: EndOfTurnPolicy, reading: _Reading,
                     item_id: str) -> None:
        if self._hooks is None:
            return
        model = self._hooks.turn_model()
        voice = asyncio.ensure_future(model.probability_async(event.audio)) if model is not None else None
        try:
            transcript = await asyncio.shield(reading.task)
            probability = await voice if voice is not None else None
        except Exception:  # noqa: BLE001 - no verdict: the VAD's longest wait ends the turn
            log.exception("judging a pause failed")
            return
        hooks = self._hooks
        if hooks is None:
            return  # the session closed while the pause was judged
        words = words_verdict(transcript.text, transcript.language)
        complete = policy.complete(probability, words)
        log.debug("pause %d at %d ms: voice %s, words %s (%r) -> %s", event.pause, event.audio_end_ms,
                  "-" if probability is None else f"{probability:.2f}", words, transcript.text[-40:],
                  "end of turn" if complete else "wait")
        hooks.publish(PauseJudged(item_id, event.pause, event.audio_end_ms, probability, words, transcript.text,
                                  complete))
        if complete and self._item_id == item_id:
            await hooks.end_turn(event.pause)

    def _spawn(self, coroutine: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _retrieve(task: asyncio.Future) -> None:
    if not task.cancelled():
        task.exception()
