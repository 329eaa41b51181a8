"""`higgs-agent bench captions`: what a transcription session (live captions, no replies) costs.

Sessions of `session.type: "transcription"` hear espeak-ng speech (phrases with pauses between them, as someone
talking) at real time, through the Realtime codec as a client's `input_audio_buffer.append` events: the VAD
(webrtcvad, server_vad) calls each turn, Whisper reads it while it is spoken (the deltas) and at its end (the
completed transcript). The process's CPU time over the run (every thread: the event loop, the ASR thread) per
second of audio heard is a captions session's cost; with several sessions at once, the same per session (they
share one ASR thread, which skips partial readings while it is busy) and how late the transcripts come. No
model is loaded: the engine a captions session holds fails the run if it is ever asked for anything.

Prints its JSON as the last line: per number of concurrent sessions, `cpu_s_per_audio_s`, the median and
slowest `completed_after_stop_ms` (from `speech_stopped` to the turn's completed transcript, wall clock), the
deltas per turn and the word error rate of the transcripts.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import statistics
import time
from typing import Any

import numpy as np

from higgs_agent.agent.events import DomainEvent
from higgs_agent.agent.responders.echo import EchoResponder
from higgs_agent.agent.services import AgentServices
from higgs_agent.agent.session import Session
from higgs_agent.audio import float_to_pcm16
from higgs_agent.bench.common import espeak_ng, median_ms, note, word_error_rate
from higgs_agent.model.asr import Transcriber, Transcript
from higgs_agent.testing.text_mode import RecordingOutput
from higgs_agent.transport.realtime_codec import deliver

RATE = 24_000  # the wire's PCM16 rate, as OpenAI's clients send
CHUNK_MS = 100
PAUSE_MS = 1200  # between phrases: past server_vad's 500 ms, so each phrase is a turn
STAGGER_S = 5.0  # concurrent sessions start this far apart, spread evenly
PHRASES = [
    "Good morning everyone, and welcome to the weekly planning meeting.",
    "First, the new office will open on the third floor next month.",
    "Please send your travel requests to the finance team by Friday.",
    "The customer survey shows that most people like the new design.",
    "We still need two volunteers for the charity run in the park.",
    "Lunch will be served in the main hall at half past twelve.",
    "If you have questions, ask them in the chat and we will answer them.",
    "Thank you all for coming, and see you again next week.",
]


class _NoEngine:
    """What a captions session holds for an engine: any use of it is a failure (it makes no speech)."""

    model_name = "none"

    def __getattr__(self, name: str) -> Any:  # noqa: ANN401
        raise AssertionError(f"a transcription session asked the engine for {name!r}")


class _Events(RecordingOutput):
    """A captions session's output: the events a client reads, and when each came (wall clock)."""

    def __init__(self) -> None:
        super().__init__()
        self.times: list[float] = []

    async def send_event(self, event: DomainEvent) -> None:
        now, before = time.perf_counter(), len(self.events)
        await super().send_event(event)
        self.times += [now] * (len(self.events) - before)

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [event for event in self.events if event["type"] == kind]

    def timed(self, kind: str) -> list[tuple[float, dict[str, Any]]]:
        return [(at, event) for at, event in zip(self.times, self.events, strict=True) if event["type"] == kind]


def talk(phrases: list[str]) -> np.ndarray:
    """The phrases at the wire's rate with a pause after each (and a short lead-in)."""
    pause = np.zeros(RATE * PAUSE_MS // 1000, dtype=np.float32)
    parts = [pause[: RATE // 2]]
    for phrase in phrases:
        parts += [espeak_ng(phrase, rate=RATE), pause]
    return np.concatenate(parts)


async def caption(services: AgentServices, pcm: bytes, start_delay_s: float) -> _Events:
    """One transcription session hearing `pcm` at real time; returns what it said once every turn is done."""
    await asyncio.sleep(start_delay_s)
    output = _Events()
    session = Session(services, output)  # type: ignore[arg-type] # events only: it never sends audio
    session.configure({"type": "transcription", "audio": {"input": {"format": {"type": "audio/pcm", "rate": RATE}}}})
    await session.open()
    step = RATE * CHUNK_MS // 1000 * 2
    loop = asyncio.get_running_loop()
    start = loop.time()
    for index, offset in enumerate(range(0, len(pcm), step)):
        await asyncio.sleep(max(0.0, start + index * CHUNK_MS / 1000 - loop.time()))
        chunk = base64.b64encode(pcm[offset:offset + step]).decode()
        await deliver(session, json.dumps({"type": "input_audio_buffer.append", "audio": chunk}))
    since = 0
    for _ in output.of("input_audio_buffer.committed"):  # every turn's transcript, in order
        since = await output.next_of("conversation.item.input_audio_transcription.completed", since, 60) + 1
    await session.close()
    return output


def summary(outputs: list[_Events], phrases: list[str], cpu_s: float, audio_s: float) -> dict[str, Any]:
    waits, deltas, errors = [], [], []
    for output in outputs:
        stopped = {event["item_id"]: at for at, event in output.timed("input_audio_buffer.speech_stopped")}
        done = output.timed("conversation.item.input_audio_transcription.completed")
        waits += [(at - stopped[event["item_id"]]) * 1000 for at, event in done if event["item_id"] in stopped]
        counted = [event["item_id"] for event in output.of("conversation.item.input_audio_transcription.delta")]
        deltas += [counted.count(event["item_id"]) for _, event in done]
        errors.append(word_error_rate(" ".join(phrases), " ".join(event["transcript"] for _, event in done)))
        assert not output.of("error") and not [e for e in output.events if e["type"].startswith("response.")]
        assert output.audio_samples == 0  # a transcription session never speaks
    return {"sessions": len(outputs), "audio_s": round(audio_s, 1), "cpu_s": round(cpu_s, 2),
            "cpu_s_per_audio_s": round(cpu_s / (audio_s * len(outputs)), 3),
            "turns": sum(len(o.of("input_audio_buffer.committed")) for o in outputs),
            "completed_after_stop_ms": {"median": median_ms(waits), "max": round(max(waits), 1) if waits else None},
            "deltas_per_turn_median": statistics.median(deltas) if deltas else None,
            "word_error_rate": round(statistics.mean(errors), 3)}


async def measure(services: AgentServices, phrases: list[str], sessions: int) -> dict[str, Any]:
    pcm = float_to_pcm16(talk(phrases))
    began = time.process_time()  # every thread of the process: the loop, the VAD, the ASR thread
    # Spread over one phrase's length, as unrelated speakers' turns would be, not all ending at once.
    outputs = await asyncio.gather(*(caption(services, pcm, start_delay_s=STAGGER_S * n / sessions)
                                     for n in range(sessions)))
    return summary(list(outputs), phrases, time.process_time() - began, len(pcm) / 2 / RATE)


def run_captions_bench(args: argparse.Namespace) -> dict[str, Any]:
    transcriber = Transcriber.load(args.asr_model)
    transcriber.transcribe(np.zeros(16_000, dtype=np.float32))  # warm: the first reading loads lazily
    if args.without_asr:  # every reading answers at once: the cost of all but Whisper
        transcriber.transcribe = lambda audio, *_, **__: Transcript("words", "en", 1.0, len(audio) / 16_000, 0.0)
    services = AgentServices(engine=_NoEngine(), transcriber=transcriber,  # type: ignore[arg-type]
                             responders={"echo": EchoResponder()}, default_responder="echo")
    phrases = PHRASES[:max(1, min(len(PHRASES), args.phrases))]
    note(f"{len(phrases)} phrases per session, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    runs = []
    for sessions in (int(n) for n in args.sessions.split(",")):
        runs.append(asyncio.run(measure(services, phrases, sessions)))
        note(json.dumps(runs[-1]))
    transcriber.close()
    return {"benchmark": "captions", "asr_model": "none (a stub)" if args.without_asr else transcriber.name, "cpus": os.cpu_count(),
            "load_average": round(os.getloadavg()[0], 1), "runs": runs}
