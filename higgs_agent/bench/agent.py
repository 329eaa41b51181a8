"""`higgs-agent bench agent`: turn latency of the whole voice agent, over a real socket, in one run.

A real server (in this process, on a free port) with the echo responder; espeak-ng speech sent by the
Realtime client at full speed; per turn, the server's `higgs.turn.latency` stages and the client's own
"first audio after the end of my speech". Baseline, measured in the same run: the engine alone speaking
the same words (`stream_pcm` time to first audio), so `agent_vs_engine` is what the agent adds on top
of the speech generation it cannot avoid (ASR, VAD decision, codec encode of the turn, plumbing).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from higgs_agent import SAMPLE_RATE
from higgs_agent.agent.services import AgentServices
from higgs_agent.audio import read_wav
from higgs_agent.bench.common import median_ms, speech_edges_ms

UTTERANCE = "hello, can you tell me the weather forecast for tomorrow"


def espeak(text: str) -> np.ndarray:
    """24 kHz speech from espeak-ng (installed by scripts/install.sh), with 0.3 s of silence before."""
    if shutil.which("espeak-ng") is None:
        raise SystemExit("bench agent needs espeak-ng for its test speech: apt-get install espeak-ng")
    with tempfile.TemporaryDirectory() as folder:
        wav = Path(folder) / "speech.wav"
        subprocess.run(["espeak-ng", "-w", str(wav), text], check=True)
        audio = read_wav(wav, SAMPLE_RATE)
    return np.concatenate([np.zeros(SAMPLE_RATE * 3 // 10, dtype=np.float32), audio])


async def _engine_ttfa_ms(services: AgentServices, text: str) -> float:
    from higgs_agent.agent.speaker import PhraseSpeaker

    speaker = PhraseSpeaker(services.engine, services.sampling)
    start = time.perf_counter()
    first = None
    async for _ in speaker.speak(text):
        first = first or (time.perf_counter() - start) * 1000.0
    return first or float("nan")


def run_concurrent_agent_bench(args: argparse.Namespace) -> dict:
    """`--sessions N`: rounds of 1 and N callers ending their turns together (see bench/concurrency.py)."""
    from higgs_agent.bench.common import note
    from higgs_agent.bench.concurrency import run_concurrency
    from higgs_agent.model.tiny import make_tiny_model

    with tempfile.TemporaryDirectory() as scratch:
        model_dir = args.model
        if model_dir is None:
            note("making a mini model (random weights) ...")
            model_dir = str(make_tiny_model(Path(scratch) / "mini", size="mini", seed=0))
        rounds = run_concurrency(model_dir, espeak(UTTERANCE), args.sessions, args.threads, args.max_frames,
                                 slots=max(8, args.sessions), repeats=args.turns)
    one, many = rounds["n1"], rounds[f"n{args.sessions}"]
    return {**rounds, "sessions": args.sessions, "turns_per_round": args.turns,
            "ttfa_increase_ms": (round(many["ttfa_ms_p50"] - one["ttfa_ms_p50"], 1)
                                 if many["ttfa_ms_p50"] is not None and one["ttfa_ms_p50"] is not None else None),
            "model": args.model or "mini (made on the fly)"}


def run_agent_bench(args: argparse.Namespace) -> dict:
    if getattr(args, "sessions", 1) > 1:
        return run_concurrent_agent_bench(args)
    from higgs_agent.bench.common import echo_agent_services

    services, bundle, model = echo_agent_services(args)
    try:
        return _agent_bench(args, services, bundle, model)
    finally:  # the engine's and Whisper's threads end before the interpreter does (no native teardown race)
        asyncio.run(services.aclose())


def _agent_bench(args: argparse.Namespace, services: AgentServices, bundle: Any, model: str) -> dict:  # noqa: ANN401
    from higgs_agent.bench.common import describe

    speech = espeak(UTTERANCE)
    turns = _turns(services, speech, args.turns)
    said = turns[-1]["transcript_text"] or UTTERANCE
    baseline = [asyncio.run(_engine_ttfa_ms(services, said)) for _ in range(args.turns)]
    figures = _figures(turns)
    engine_ttfa = median_ms(baseline)
    speech_part = (figures["first_audio_sent"] or 0) - (figures["first_text"] or 0)
    result = {
        "turns": len(turns),
        "completed": sum(t["status"] == "completed" for t in turns),
        **{f"{stage}_ms_p50": value for stage, value in figures.items()},
        "engine_ttfa_ms_p50": engine_ttfa,
        "speech_vs_engine": round(speech_part / engine_ttfa, 3) if engine_ttfa else None,
        "transcript": turns[-1]["transcript_text"] if turns else None,
        "asr": services.transcriber.name, **describe(bundle, model),
    }
    if args.understanding:
        result["understanding"] = _understanding_cost(services, speech, args.turns, figures)
    if getattr(args, "last_word", False):
        result["from_last_word"] = _from_last_word(services, speech, args.turns)
    if getattr(args, "records", False):
        result["records"] = _records_cost(services, speech, args.turns)
    if getattr(args, "remote_engines", 0):
        result["remote_engines"] = _remote_cost(args, services, speech, args.turns)
    if getattr(args, "traces", False):
        result["traces"] = _traces_cost(services, speech, args.turns)
    return result


LAST_WORD_MODES = {  # how the turn's end is found, each measured the same way
    "commit_at_last_word": {"manual_commit": True},  # the baseline: the client itself says "done" at once
    "server_vad": {"session": {"audio": {"input": {"turn_detection": {"type": "server_vad"}}}}},
    "semantic_vad": {"session": {"audio": {"input": {"turn_detection": {"type": "semantic_vad"}}}}},
}


def _from_last_word(services: AgentServices, speech: np.ndarray, count: int) -> dict:
    """Speech sent at real-time pace, ending at the last word; per turn-end mode, the medians from that word:
    the client's first reply audio, and the server's stages (end_of_turn: last speech the VAD heard -> turn
    called; then transcript, first text, first audio frame, first byte sent, each from the turn's call)."""
    from higgs_agent.client import talk
    from higgs_agent.server import serve_in_background

    speech = speech[:speech_edges_ms(speech, SAMPLE_RATE)[1] * SAMPLE_RATE // 1000]  # to the true last word
    figures: dict[str, dict] = {}
    with serve_in_background(services) as base:
        url = base.replace("http://", "ws://") + "/v1/realtime"
        for mode, options in LAST_WORD_MODES.items():
            turns = [asyncio.run(talk(url, speech, SAMPLE_RATE, realtime_pace=True, timeout_s=300, **options))
                     for _ in range(count)]
            figures[mode] = {"client_first_audio_ms_p50": median_ms([t.first_audio_after_ms for t in turns]),
                             **{f"{stage}_ms_p50": median_ms([t.latency_ms.get(stage) for t in turns])
                                for stage in ("end_of_turn", "transcript", "first_text", "first_audio_sent")}}
    base_ms = figures["commit_at_last_word"]["client_first_audio_ms_p50"]
    for mode in ("server_vad", "semantic_vad"):
        ms = figures[mode]["client_first_audio_ms_p50"]
        figures[mode]["added_over_commit_ms"] = round(ms - base_ms, 1) if None not in (ms, base_ms) else None
    return figures


def _turns(services: AgentServices, speech: np.ndarray, count: int) -> list[dict]:
    from higgs_agent.client import talk
    from higgs_agent.server import serve_in_background

    turns = []
    with serve_in_background(services) as base:
        url = base.replace("http://", "ws://") + "/v1/realtime"
        for _ in range(count):
            result = asyncio.run(talk(url, speech, SAMPLE_RATE, realtime_pace=False, timeout_s=300))
            turns.append({**result.latency_ms, "client_first_audio": result.first_audio_after_ms,
                          "transcript_text": result.user_transcript, "status": result.status})
    return turns


def _figures(turns: list[dict]) -> dict[str, float | None]:
    return {stage: median_ms([t.get(stage) for t in turns]) for stage in
            ("transcript", "first_text", "first_audio_frame", "first_audio_sent", "client_first_audio")}


def _understanding_cost(services: AgentServices, speech: np.ndarray, count: int,
                        without: dict[str, float | None]) -> dict:
    """The same turns with the caller analysis on (it runs beside the transcription): what it adds to the
    turn's first audio byte, against the turns just measured without it."""
    from dataclasses import replace

    from higgs_agent.understanding.analyzer import TurnAnalyzer

    analyzer = TurnAnalyzer.load()
    analyzer.warmup()
    try:
        with_it = _figures(_turns(replace(services, analyzer=analyzer), speech, count))
    finally:
        analyzer.close()
    on, off = with_it["first_audio_sent"], without["first_audio_sent"]
    return {"first_audio_sent_ms_p50_with": on, "first_audio_sent_ms_p50_without": off,
            "added_ms": round(on - off, 1) if on is not None and off is not None else None,
            "transcript_ms_p50_with": with_it["transcript"]}


def _records_cost(services: AgentServices, speech: np.ndarray, count: int) -> dict:
    """The same turns with every session on record (a SQLite file, as `serve --records-url records.db`) and
    without, taken in turn (off, on, off, on, ...) so that a machine's drift falls on both: what recording adds
    to the turn's first audio byte, as medians and as the median of each pair's difference. Then `audio`: the
    same, on record without audio against on record with both sides' audio (`--records-audio`)."""
    from dataclasses import replace

    from higgs_agent.records.store import RecordStore
    from higgs_agent.records.writer import RecordWriter

    with tempfile.TemporaryDirectory() as folder:
        dropped: list[int] = []
        writer, with_audio = (RecordWriter(RecordStore(f"sqlite:///{Path(folder) / f'{name}.db'}"),
                                           on_drop=lambda reason, n: dropped.append(n), audio=name == "audio")
                              for name in ("records", "audio"))
        writer.start()
        with_audio.start()
        try:
            figures = _paired(services, replace(services, records=writer), speech, count)
            audio = _paired(replace(services, records=writer), replace(services, records=with_audio), speech, count)
            writer.flush()
            with_audio.flush()
            sessions, _ = writer.store.list_sessions("default", 100)
            stored = _audio_stored(with_audio.store)
        finally:
            writer.close()
            with_audio.close()
    return {**figures, "sessions_on_record": len(sessions), "writes_dropped": sum(dropped),
            "loop_us_per_event": _recorder_cost_us(),
            "audio": {**audio, "stored": stored, "loop_us_per_turn": _audio_recorder_cost_us(speech),
                      "flac_bytes_per_minute": _flac_bytes_per_minute(speech)}}


def _traces_cost(services: AgentServices, speech: np.ndarray, count: int) -> dict:
    """The same turns with each answered turn traced (as `serve --otlp-endpoint`, to a receiver in this process)
    and without, taken in turn: what tracing adds to the turn's first audio byte; and the tracer's own cost on
    the event loop per turn, with the collector up and with it down (bench/traces.py)."""
    from dataclasses import replace

    from higgs_agent.bench.traces import tracer_cost_us
    from higgs_agent.otlp import start_traces
    from higgs_agent.testing.otlp_receiver import Collector

    with Collector() as receiver:
        traces = start_traces(receiver.url)
        assert traces is not None
        try:
            figures = _paired(services, replace(services, traces=traces), speech, count)
        finally:
            traces.shutdown()
        spans = len(receiver.spans)
    return {**figures, "spans_received": spans, "loop_us_per_turn": tracer_cost_us()}


def _paired(services: AgentServices, on_services: AgentServices, speech: np.ndarray, count: int) -> dict:
    """`count` turns each way, taken in turn (off, on, off, on, ...) so that a machine's drift falls on both:
    the first audio byte's medians, and the median of each pair's difference."""
    off, on = [], []
    for _ in range(count):
        off.extend(_turns(services, speech, 1))
        on.extend(_turns(on_services, speech, 1))
    stage = "first_audio_sent"
    pairs = [b[stage] - a[stage] for a, b in zip(off, on) if a.get(stage) is not None and b.get(stage) is not None]
    return {f"{stage}_ms_p50_without": median_ms([t.get(stage) for t in off]),
            f"{stage}_ms_p50_with": median_ms([t.get(stage) for t in on]),
            "client_first_audio_ms_p50_without": median_ms([t.get("client_first_audio") for t in off]),
            "client_first_audio_ms_p50_with": median_ms([t.get("client_first_audio") for t in on]),
            "added_ms_p50_of_pairs": median_ms(pairs), "pairs": len(pairs)}


def _remote_cost(args: argparse.Namespace, services: AgentServices, speech: np.ndarray, count: int) -> dict:
    """The same turns spoken by this process's engine ("without") and by `--remote-engines N` `serve` engine
    processes on this machine ("with": the same model; the agent keeps ASR and the responder), taken in turn:
    the turn's first audio byte both ways, and the hop the remote adds (the median of each pair's difference)."""
    import contextlib
    from dataclasses import replace

    from higgs_agent.bench.common import note
    from higgs_agent.model.tiny import make_tiny_model
    from higgs_agent.remote.engines import RemoteEngines
    from higgs_agent.testing.serve_process import running_serve

    with tempfile.TemporaryDirectory() as scratch, contextlib.ExitStack() as stack:
        model_dir = args.model or str(make_tiny_model(Path(scratch) / "mini", size="mini", seed=0))
        threads = ["--threads", str(args.threads)] if args.threads else []
        note(f"starting {args.remote_engines} serve engine(s) ...")
        engines = [stack.enter_context(running_serve(["--model", model_dir, "--device", args.device or "auto",
                                                      "--no-understanding", *threads]))
                   for _ in range(args.remote_engines)]
        pool = RemoteEngines([engine.base for engine in engines], metrics=services.metrics)
        paired = _paired(services, replace(services, engine=pool), speech, count)  # without = local, with = remote
        report = pool.health()["engines"]
    return {"engines": len(engines), **paired, "phrases_per_engine": [r["requests"] for r in report],
            "engine_first_audio_ms_p50": [r["first_audio_ms_p50"] for r in report]}


def _recorder_cost_us(turns: int = 2000) -> float:
    """What recording costs the event loop, in microseconds per domain event: a turn's events (a spoken user
    item, its transcript, the reply's item added, finished and timed) through the session's observer into the
    writer's queue, the thread committing them to a SQLite file meanwhile."""
    from higgs_agent.agent.config import SessionConfig
    from higgs_agent.agent.conversation import ConversationItem
    from higgs_agent.agent.events import (
        ItemAdded,
        ItemFinished,
        Place,
        ReplyFinished,
        ReplyItemAdded,
        ReplyItemDone,
        SessionOpened,
        TurnTimed,
        UserTranscribed,
    )
    from higgs_agent.agent.recording import SessionRecorder
    from higgs_agent.agent.tools.spec import ToolConfig
    from higgs_agent.records.store import RecordStore
    from higgs_agent.records.writer import RecordWriter

    with tempfile.TemporaryDirectory() as folder:
        writer = RecordWriter(RecordStore(f"sqlite:///{Path(folder) / 'records.db'}"), queue_size=1_000_000)
        writer.start()
        recorder = SessionRecorder(writer, "sess_bench", "default", "websocket")
        recorder.observe(SessionOpened(SessionConfig(model="m"), ToolConfig()))
        events = 0
        took = 0.0
        for n in range(turns):
            user = ConversationItem(f"item_u{n}", "user", "input_audio", status="in_progress")
            reply = ConversationItem(f"item_a{n}", "assistant", "output_audio", status="in_progress")
            place = Place(f"resp_{n}", reply.id, 0)
            turn = [ItemAdded(user, None), UserTranscribed(user.id, UTTERANCE, "en", 3.2), ItemFinished(user, None),
                    ReplyItemAdded(place, reply, user.id), ReplyItemDone(place, reply, user.id),
                    ReplyFinished(place.response_id, "completed", reply.id, UTTERANCE),
                    TurnTimed(place.response_id, user.id, reply.id, {"transcript": 400.0, "first_text": 4.0,
                                                                       "first_audio_frame": 450.0})]
            start = time.perf_counter()
            for event in turn:
                recorder.observe(event)
            took += time.perf_counter() - start
            events += len(turn)
        writer.flush(60)
        writer.close()
    return round(took / events * 1e6, 1)


def _audio_stored(store: Any) -> dict:  # noqa: ANN401 - a RecordStore
    """What the bench's calls left in `record_audio`: seconds and FLAC bytes of each side."""
    from sqlalchemy import func, select

    from higgs_agent.records.store import audio

    with store.engine.connect() as conn:
        rows = conn.execute(select(audio.c.track, func.sum(audio.c.samples), func.max(audio.c.rate),
                                   func.sum(func.length(audio.c.data))).where(audio.c.data.is_not(None))
                            .group_by(audio.c.track)).all()
    return {track: {"seconds": round(samples / rate, 1), "bytes": int(size),
                    "bytes_per_minute": int(size / (samples / rate) * 60)} for track, samples, rate, size in rows}


def _flac_bytes_per_minute(speech: np.ndarray) -> dict:
    """Stored bytes per minute of audio, in the recorder's one-second FLAC chunks: the bench's espeak speech
    (a stand-in for a voice: the bench's random-weight model speaks noise) at the caller's 16 kHz and the
    agent's 24 kHz, silence, and raw 16-bit PCM for comparison."""
    from higgs_agent.audio import float_to_pcm16, resample
    from higgs_agent.records.audio_codec import encode_flac

    def per_minute(audio: np.ndarray, rate: int) -> int:
        minute = np.resize(audio, 60 * rate)
        return sum(len(encode_flac(float_to_pcm16(minute[at:at + rate]), rate)) for at in range(0, 60 * rate, rate))

    return {"caller_speech_16k": per_minute(resample(speech, SAMPLE_RATE, 16_000), 16_000),
            "agent_speech_24k": per_minute(speech, SAMPLE_RATE),
            "silence_16k": per_minute(np.zeros(16_000, dtype=np.float32), 16_000),
            "raw_pcm_16k": 60 * 16_000 * 2, "raw_pcm_24k": 60 * SAMPLE_RATE * 2}


def _audio_recorder_cost_us(speech: np.ndarray, turns: int = 200) -> float:
    """What recording audio costs the event loop per turn, in microseconds: the turn's caller audio in 20 ms
    frames, its span, and a reply as long in 40 ms chunks through a session's AudioRecorder (gathered, made
    into one-second PCM16 chunks, handed to the writer), the writer compressing and committing meanwhile."""
    from higgs_agent.agent.audio_recording import AudioRecorder
    from higgs_agent.agent.conversation import ConversationItem
    from higgs_agent.agent.events import Place, ReplyItemDone
    from higgs_agent.audio import resample
    from higgs_agent.records.store import RecordStore, SessionStarted
    from higgs_agent.records.writer import RecordWriter

    heard = resample(speech, SAMPLE_RATE, 16_000)
    took = []
    with tempfile.TemporaryDirectory() as folder:
        writer = RecordWriter(RecordStore(f"sqlite:///{Path(folder) / 'records.db'}"), audio=True,
                              queue_size=1_000_000, audio_queue_bytes=1 << 40)
        writer.start()
        writer.put(SessionStarted("sess_bench", "default", "websocket", None, time.time()))
        clock = [0]
        recorder = AudioRecorder(writer, "sess_bench", lambda: clock[0])
        for n in range(turns):
            reply = ConversationItem(f"item_a{n}", "assistant", "output_audio")
            start = time.perf_counter()
            for at in range(0, len(heard), 320):
                recorder.caller(heard[at:at + 320])
            recorder.turn(f"item_u{n}", heard, clock[0])
            for at in range(0, len(speech), 960):
                recorder.agent(reply.id, speech[at:at + 960])
            recorder.observe(ReplyItemDone(Place(f"resp_{n}", reply.id, 0), reply, None))
            took.append(time.perf_counter() - start)
            clock[0] += len(heard) // 16
        recorder.end()
        writer.flush(120)
        writer.close()
    return round(float(np.median(took)) * 1e6, 1)
