"""What tracing (serve --otlp-endpoint) costs the event loop: a turn's trace made by the session's observer
(agent/tracing.py) and handed to the SDK's batch processor, whose thread exports meanwhile over OTLP/HTTP to
a receiver in this process, or fails to (nothing listening: the collector is down). Turns come a few ms apart,
so the exporting thread runs between them as it would between a server's turns."""

from __future__ import annotations

import os
import time

from higgs_agent.agent.events import ReplyFinished, ReplyState, TurnTimed
from higgs_agent.agent.tracing import TurnTracer
from higgs_agent.bench.common import median_ms
from higgs_agent.otlp import start_traces
from higgs_agent.testing.otlp_receiver import Collector
from higgs_agent.testing.serve_process import free_port

STAGES_MS = {"end_of_turn": 310.0, "transcript": 120.0, "first_text": 125.0, "first_audio_frame": 480.0,
             "first_audio_sent": 520.0}


def tracer_cost_us(turns: int = 1000) -> dict[str, float | int | None]:
    """Microseconds of event loop per traced turn (median and 99th percentile), collector up and down."""
    with Collector() as receiver:
        up = _cost_us(receiver.url, turns)
        spans = len(receiver.spans)
    down = _cost_us(f"http://127.0.0.1:{free_port()}", turns)
    return {**{f"collector_up_{k}": v for k, v in up.items()}, "spans_received": spans,
            **{f"collector_down_{k}": v for k, v in down.items()}}


def _cost_us(endpoint: str, turns: int, gap_s: float = 0.005) -> dict[str, float | None]:
    os.environ.setdefault("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "1")  # a dead collector: the shutdown is quick
    traces = start_traces(endpoint)
    assert traces is not None
    tracer = TurnTracer(traces.tracer, "sess_bench", "default", "websocket")
    took = []
    try:
        for n in range(turns):
            response_id, item_id = f"resp_{n}", f"item_a{n}"
            timed = TurnTimed(response_id, f"item_u{n}", item_id, STAGES_MS, at=time.time() - 1,
                              engine_start_ms=400.0)
            finished = ReplyFinished(response_id, "completed", item_id, "hello", ReplyState(response_id, "completed"))
            began = time.perf_counter()
            tracer.observe(timed)
            tracer.observe(finished)
            took.append((time.perf_counter() - began) * 1e6)
            time.sleep(gap_s)
    finally:
        traces.shutdown()
    took.sort()
    return {"us_p50": median_ms(took), "us_p99": round(took[int(len(took) * 0.99)], 1)}
