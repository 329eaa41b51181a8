"""`higgs-agent bench soak`: several sessions talking to one `serve` process for minutes, some of them badly.

The server is the real `higgs-agent serve` in a process of its own (its memory is measured from outside, as
an operator would). Each session loops until the time is up: a spoken turn (espeak-ng speech, sent faster
than real time, ended by the server's VAD) and its reply; every 4th turn it first sends a malformed event
(which must come back as an `error`, never `server_error`); every 5th turn it talks over the reply
(barge-in); every 6th turn it hangs up without a close handshake and dials again. Reported: turns
completed, responses by status, every error by code, the server's own `server_error` count (from
/metrics), and the server's RSS after the warm-up turn, at the end and at its highest; `rss_end_vs_start`
is the ratio against the start of the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import base64
import json
import re
import tempfile
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from higgs_agent import SAMPLE_RATE
from higgs_agent.audio import float_to_pcm16
from higgs_agent.testing.serve_process import running_serve

SAMPLE_EVERY_S = 15.0  # the server's RSS is read this often: growth that levels off is warm-up, not a leak
REPLY_TIMEOUT_S = 120.0  # a turn with no event for this long is a failure (the server dropped it)
SPEEDUP = 4.0  # turns are sent this much faster than real time: more turns per minute of soak
MALFORMED = ['{"type": "session.update", "session": {"output_modalities": 5}}', "{not json",
             '{"type": "no.such.event"}', '{"type": "input_audio_buffer.append", "audio": "***"}']


@dataclass
class SessionTally:
    statuses: Counter = field(default_factory=Counter)
    errors: Counter = field(default_factory=Counter)
    reconnects: int = 0
    failures: list[str] = field(default_factory=list)  # what went wrong on the client's side, if anything


def _audio_events(audio: np.ndarray, chunk_ms: int = 100) -> list[str]:
    step = SAMPLE_RATE * chunk_ms // 1000
    return [json.dumps({"type": "input_audio_buffer.append",
                        "audio": base64.b64encode(float_to_pcm16(audio[i:i + step])).decode()})
            for i in range(0, len(audio), step)]


async def _send_paced(ws: Any, events: list[str], chunk_s: float) -> None:  # noqa: ANN401 - a websocket
    for event in events:
        await ws.send(event)
        await asyncio.sleep(chunk_s / SPEEDUP)


async def _session(url: str, turn: list[str], deadline: float, tally: SessionTally,
                   max_turns: int | None = None) -> None:
    """Turns until `deadline` (or `max_turns`): every 4th after a malformed event, every 5th talked over, every
    6th followed by a hang-up without a word and a new connection."""
    import websockets

    n = 0

    def going_on() -> bool:
        return time.monotonic() < deadline and (max_turns is None or n < max_turns)

    while going_on():
        ws = await websockets.connect(url, max_size=16 << 20)
        seen: deque[str] = deque(maxlen=12)  # the last events of this connection, for a failure's report
        try:
            await ws.recv()  # session.created
            while going_on():
                n += 1
                if n % 4 == 0:
                    await ws.send(MALFORMED[n // 4 % len(MALFORMED)])
                await _send_paced(ws, turn, 0.1)
                status = await _reply(ws, tally, seen, barge_in=turn if n % 5 == 0 else None)
                tally.statuses[status] += 1
                if n % 6 == 0:
                    ws.transport.abort()  # hang up without a word; dial again
                    tally.reconnects += 1
                    break
        except (OSError, asyncio.TimeoutError, websockets.ConnectionClosed) as exc:
            kind = "barge-in" if n % 5 == 0 else "malformed first" if n % 4 == 0 else "plain"
            tally.failures.append(f"{type(exc).__name__}: {exc} (turn {n}, {kind}; last events: {', '.join(seen)})")
        finally:
            ws.transport.abort()


async def _reply(ws: Any, tally: SessionTally, seen: deque[str],  # noqa: ANN401 - a websocket
                 barge_in: list[str] | None) -> str:
    """Read until this turn's response is done; with `barge_in`, talk over it at its first audio."""
    talking: asyncio.Task | None = None
    while True:
        event = json.loads(await asyncio.wait_for(ws.recv(), REPLY_TIMEOUT_S))
        kind = event["type"]
        if not seen or seen[-1] != kind:
            seen.append(kind)
        if kind == "error":
            tally.errors[event["error"]["code"]] += 1
        elif kind == "response.output_audio.delta" and barge_in is not None and talking is None:
            talking = asyncio.create_task(_send_paced(ws, barge_in, 0.1))
        elif kind == "response.done":
            if talking is not None:  # the barge-in's own turn is answered too: read that reply as well
                await talking
                tally.statuses[event["response"]["status"]] += 1
                barge_in, talking = None, None
                continue
            return event["response"]["status"]


def _rss_mb(pid: int) -> float:
    import psutil

    return psutil.Process(pid).memory_info().rss / 2**20


def _idle_health(base: str, timeout_s: float = 30.0) -> dict[str, Any]:
    """/health once the last sessions' teardown is over (no session, no slot busy), or as it is after `timeout_s`
    (then what it says is what leaked)."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while True:
        health = httpx.get(f"{base}/health", timeout=10).json()
        if (health.get("sessions") == 0 and health.get("busy_slots") == 0) or time.monotonic() > deadline:
            return health
        time.sleep(0.2)


def _server_errors(base: str) -> float:
    import httpx

    text = httpx.get(f"{base}/metrics", timeout=10).text
    found = re.search(r'^higgs_client_errors_total\{code="server_error"\} ([0-9.e+]+)$', text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def run_soak_bench(args: argparse.Namespace) -> dict[str, Any]:
    import httpx

    from higgs_agent.bench.agent import UTTERANCE, espeak
    from higgs_agent.bench.common import note
    from higgs_agent.model.tiny import make_tiny_model

    speech = espeak(UTTERANCE)
    turn = _audio_events(np.concatenate([speech, np.zeros(SAMPLE_RATE * 3 // 2, dtype=np.float32)]))
    with tempfile.TemporaryDirectory() as scratch:
        model_dir = args.model
        if model_dir is None:
            note("making a tiny model (random weights) ...")
            model_dir = str(make_tiny_model(Path(scratch) / "tiny", size="tiny", seed=0))
        flags = ["--model", model_dir, "--no-understanding", "--max-frames", str(args.max_frames),
                 "--slots", str(max(2, args.sessions))]
        env = {"LD_PRELOAD": args.preload} if args.preload else None  # another allocator, to compare
        with running_serve(flags, log_path=Path(scratch) / "serve.log", env=env) as server:
            base, url = server.base, server.ws_url
            warm = SessionTally()
            asyncio.run(_session(url, turn, time.monotonic() + 1, warm))  # first-turn costs out of the figures
            rss = [_rss_mb(server.process.pid)]
            note(f"soaking: {args.sessions} sessions for {args.minutes:g} min (server RSS {rss[0]:.0f} MB) ...")
            tallies = [SessionTally() for _ in range(args.sessions)]
            started = time.monotonic()
            deadline = started + (args.minutes * 60 if args.turns is None else 24 * 3600)

            async def soak() -> None:
                async def sample(done: asyncio.Event) -> None:
                    while not done.is_set():
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(done.wait(), SAMPLE_EVERY_S)
                        if not done.is_set():
                            rss.append(_rss_mb(server.process.pid))

                done = asyncio.Event()
                sampler = asyncio.create_task(sample(done))
                await asyncio.gather(*(_session(url, turn, deadline, t, args.turns) for t in tallies))
                done.set()
                await sampler

            asyncio.run(soak())
            soaked_s = time.monotonic() - started
            health = _idle_health(base)  # every session gone: nothing may still hold a slot
            rss.append(_rss_mb(server.process.pid))
            server_errors = _server_errors(base)
            alive = httpx.get(f"{base}/health", timeout=10).status_code == 200
            server_log = server.log()
        tracebacks = server_log.count("Traceback")
        if args.server_log:
            Path(args.server_log).write_text(server_log)
    at_10 = int(10 * 60 / SAMPLE_EVERY_S) if len(rss) > 10 * 60 / SAMPLE_EVERY_S + 1 else None
    statuses = sum((t.statuses for t in tallies), Counter())
    errors = sum((t.errors for t in tallies), Counter())
    turns = statuses["completed"]
    minutes = args.minutes if args.turns is None else soaked_s / 60
    return {
        "sessions": args.sessions, "minutes": round(minutes, 2), "turns_completed": turns,
        "turns_per_minute": round(turns / minutes, 1),
        "responses": dict(statuses), "client_errors": dict(errors),
        "reconnects": sum(t.reconnects for t in tallies),
        "client_failures": [f for t in tallies for f in t.failures][:10],
        "server_errors": server_errors, "server_tracebacks": tracebacks, "server_alive_after": alive,
        "rss_mb_start": round(rss[0], 1), "rss_mb_end": round(rss[-1], 1), "rss_mb_max": round(max(rss), 1),
        "rss_end_vs_start": round(rss[-1] / rss[0], 3),
        "rss_mb_every_15s": [round(value) for value in rss],
        "rss_mb_growth_last_half": round(rss[-1] - rss[len(rss) // 2], 1),
        # The goal's window: from minute 10 (warm-up and caches settled) to the end.
        "rss_mb_at_10_min": round(rss[at_10], 1) if at_10 is not None else None,
        "rss_end_vs_10_min": round(rss[-1] / rss[at_10], 3) if at_10 is not None else None,
        "stuck_turns": sum(1 for t in tallies for f in t.failures if f.startswith("TimeoutError")),
        "sessions_after": health.get("sessions"), "busy_slots_after": health.get("busy_slots"),
        "health_after": health,
        "model": args.model or "tiny (made on the fly)", "preload": args.preload,
    }
