"""`higgs-agent bench agent --sessions N`: N callers ending their turns at the same moment.

The server runs in a process of its own (so the callers' work does not share its interpreter lock) with a
probe in its event loop that wakes every 5 ms and records how late it woke: the loop's lag, which is what
every session waits on before its next audio goes out. N clients stream the same espeak-ng sentence at
real-time pace, starting together, so their turns end together; each plays its reply at real time from the
first audio byte and counts every underrun (a delta that arrives after the audio before it has finished
playing). One round with a single session first, then the N-session round, so the JSON holds the
single-session baseline of the same run.
"""

from __future__ import annotations

import asyncio
import base64
import json
import multiprocessing
import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from higgs_agent import SAMPLE_RATE
from higgs_agent.audio import float_to_pcm16

PROBE_INTERVAL_S = 0.005
CHUNK_MS = 20


@dataclass
class CallerResult:
    ttfa_ms: float | None = None
    underruns: list[float] = field(default_factory=list)  # ms of silence each time playback ran dry
    audio_s: float = 0.0
    status: str | None = None
    transcript: str | None = None


def _server_main(conn: Any, model_dir: str, threads: int | None, max_frames: int, slots: int) -> None:
    """Child process: the agent app on a free port, plus the loop-lag probe; answers the parent's commands."""
    import logging

    import uvicorn

    from higgs_agent.agent.responders.echo import EchoResponder
    from higgs_agent.agent.services import AgentServices
    from higgs_agent.model import load_higgs
    from higgs_agent.model.asr import Transcriber
    from higgs_agent.model.sampling import SamplingSettings
    from higgs_agent.streaming.engine import StreamingEngine
    from higgs_agent.transport.app import create_agent_app

    logging.basicConfig(level=logging.WARNING)
    bundle = load_higgs(model_dir, device="cpu", threads=threads)
    transcriber = Transcriber.load()
    transcriber.warmup()
    services = AgentServices(engine=StreamingEngine(bundle, slots=slots), transcriber=transcriber,
                             responders={"echo": EchoResponder()}, default_responder="echo",
                             sampling=SamplingSettings(greedy=True, max_frames=max_frames))
    server = uvicorn.Server(uvicorn.Config(create_agent_app(services), host="127.0.0.1", port=0,
                                           log_level="warning", lifespan="off", ws_max_size=16 << 20))
    lags: list[float] = []

    async def probe() -> None:
        while True:
            due = time.perf_counter() + PROBE_INTERVAL_S
            await asyncio.sleep(PROBE_INTERVAL_S)
            lags.append(max(0.0, (time.perf_counter() - due) * 1000.0))

    async def main() -> None:
        asyncio.get_running_loop().create_task(probe())
        await server.serve()

    def commands() -> None:
        while not server.started:
            time.sleep(0.05)
        conn.send(server.servers[0].sockets[0].getsockname()[1])
        while True:
            command = conn.recv()
            if command == "reset":
                lags.clear()
                conn.send(True)
            elif command == "lags":
                conn.send(list(lags))
            else:
                server.should_exit = True
                return

    threading.Thread(target=commands, daemon=True).start()
    asyncio.run(main())


async def _caller(url: str, audio: np.ndarray, speech_end_s: float, start_at: float,
                  timeout_s: float) -> CallerResult:
    """One session: sends `audio` at real-time pace while a reader plays the reply as it arrives (reading only
    after sending would hold every early delta in the socket and make the first audio look late)."""
    import websockets

    result = CallerResult()
    async with websockets.connect(url, max_size=16 << 20) as ws:
        await ws.recv()  # session.created
        await asyncio.sleep(max(0.0, start_at - time.perf_counter()))
        t0 = time.perf_counter()
        speech_end = t0 + speech_end_s

        async def send() -> None:
            step = SAMPLE_RATE * CHUNK_MS // 1000
            for i, start in enumerate(range(0, len(audio), step)):  # real-time pace, like a microphone
                await asyncio.sleep(max(0.0, t0 + i * CHUNK_MS / 1000 - time.perf_counter()))
                pcm = float_to_pcm16(audio[start:start + step])
                await ws.send(json.dumps({"type": "input_audio_buffer.append",
                                          "audio": base64.b64encode(pcm).decode()}))

        async def listen() -> None:
            first: float | None = None
            played_until = 0.0
            while True:
                event = json.loads(await ws.recv())
                now = time.perf_counter()
                if event["type"] == "response.output_audio.delta":
                    seconds = len(base64.b64decode(event["delta"])) / 2 / SAMPLE_RATE
                    if first is None:
                        first, played_until = now, now
                        result.ttfa_ms = (now - speech_end) * 1000.0
                    if now > played_until:  # the listener heard silence since the last chunk ran out
                        if result.audio_s > 0:
                            result.underruns.append((now - played_until) * 1000.0)
                        played_until = now
                    played_until += seconds
                    result.audio_s += seconds
                elif event["type"] == "conversation.item.input_audio_transcription.completed":
                    result.transcript = event["transcript"]
                elif event["type"] == "response.done":
                    result.status = event["response"]["status"]
                    return

        listener = asyncio.create_task(listen())
        await send()
        await asyncio.wait_for(listener, timeout_s)
    return result


async def _round(url: str, speech: np.ndarray, sessions: int, timeout_s: float) -> list[CallerResult]:
    """Every caller sends `speech` then 1.5 s of silence (so the server's VAD ends the turn)."""
    audio = np.concatenate([speech, np.zeros(SAMPLE_RATE * 3 // 2, dtype=np.float32)])
    start_at = time.perf_counter() + 1.0  # everyone connected first, then all start together
    return list(await asyncio.gather(*(_caller(url, audio, len(speech) / SAMPLE_RATE, start_at, timeout_s)
                                       for _ in range(sessions))))


def _percentile(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 2) if values else None


def _summary(callers: list[CallerResult], lags: list[float]) -> dict[str, Any]:
    ttfa = [c.ttfa_ms for c in callers if c.ttfa_ms is not None]
    underruns = [u for c in callers for u in c.underruns]
    return {
        "sessions": len(callers),
        "completed": sum(c.status == "completed" for c in callers),
        "ttfa_ms": [round(t, 1) for t in ttfa],
        "ttfa_ms_p50": round(statistics.median(ttfa), 1) if ttfa else None,
        "underruns": len(underruns),
        "underrun_ms_total": round(sum(underruns), 1),
        "underrun_ms_max": round(max(underruns), 1) if underruns else 0.0,
        "reply_audio_s": [round(c.audio_s, 2) for c in callers],
        "loop_lag_ms_p50": _percentile(lags, 50),
        "loop_lag_ms_p99": _percentile(lags, 99),
        "loop_lag_ms_max": _percentile(lags, 100),
        "loop_lag_samples": len(lags),
    }


def run_concurrency(model_dir: str, speech: np.ndarray, sessions: int, threads: int | None, max_frames: int,
                    slots: int, repeats: int = 1, timeout_s: float = 300.0) -> dict[str, Any]:
    """Rounds of 1 and of `sessions` simultaneous callers against one server process; the JSON summary."""
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    process = ctx.Process(target=_server_main, args=(child, model_dir, threads, max_frames, slots), daemon=True)
    process.start()
    try:
        if not parent.poll(600):
            raise RuntimeError("the benchmark server did not start")
        url = f"ws://127.0.0.1:{parent.recv()}/v1/realtime"
        rounds: dict[str, Any] = {}
        asyncio.run(_round(url, speech, 1, timeout_s))  # warm-up: first-turn costs out of the figures
        for count in (1, sessions):
            callers: list[CallerResult] = []
            lags: list[float] = []
            for _ in range(repeats):
                parent.send("reset")
                parent.recv()
                callers += asyncio.run(_round(url, speech, count, timeout_s))
                parent.send("lags")
                lags += parent.recv()
            rounds[f"n{count}"] = _summary(callers, lags)
        parent.send("stop")
        return rounds
    finally:
        process.join(timeout=30)
        if process.is_alive():
            process.kill()
