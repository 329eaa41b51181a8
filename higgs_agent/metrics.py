"""Prometheus metrics for the agent server, in a registry of their own (one per app, so tests and embedders
can run several apps in one process)."""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

# Turn latencies of interest run from ~50 ms (transcript) to a few seconds (first audio on CPU).
LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)


class AgentMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.turn_latency = Histogram(
            "higgs_turn_latency_seconds", "Time from the end of the user's speech to each stage of the reply",
            ["stage"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.sessions_active = Gauge("higgs_sessions_active", "Open realtime sessions", registry=self.registry)
        self.sessions_total = Counter("higgs_sessions", "Realtime sessions opened", registry=self.registry)
        self.responses = Counter("higgs_responses", "Responses by final status", ["status"],
                                 registry=self.registry)
        self.errors = Counter("higgs_client_errors", "Error events sent to clients, by code", ["code"],
                              registry=self.registry)
        self.reply_stalls = Counter("higgs_reply_stalls", "Replies (or steps a reply could do without) that "
                                    "stopped waiting at a stage that did not finish within its bound", ["stage"],
                                    registry=self.registry)
        self.records_written = Counter("higgs_records_written", "Record writes committed (serve --records-url)",
                                       registry=self.registry)
        self.records_dropped = Counter("higgs_records_dropped", "Record writes dropped, by why: queue_full (the "
                                       "database is slow), audio_queue_full (audio chunks over their budget: "
                                       "the same), database_error (it is down or refused)", ["reason"],
                                       registry=self.registry)
        self.engine_up = Gauge("higgs_engine_up", "1 while a remote speech engine answers its health check",
                               ["engine"], registry=self.registry)
        self.engine_in_flight = Gauge("higgs_engine_in_flight", "Replies a remote speech engine is speaking now",
                                      ["engine"], registry=self.registry)
        self.engine_requests = Counter("higgs_engine_requests", "Phrases asked of a remote speech engine, by "
                                       "outcome: ok, cancelled (a barge-in closed it), error, at_capacity",
                                       ["engine", "outcome"], registry=self.registry)
        self.engine_first_audio = Histogram("higgs_engine_first_audio_seconds", "From a phrase's request to its "
                                            "first audio from the remote engine", ["engine"],
                                            buckets=LATENCY_BUCKETS, registry=self.registry)
        self.audio_seconds_out = Counter("higgs_audio_out_seconds", "Reply audio sent", registry=self.registry)

    def observe_turn(self, latency_ms: dict[str, float | None]) -> None:
        for stage, value in latency_ms.items():
            if value is not None:
                self.turn_latency.labels(stage=stage).observe(value / 1000.0)

    def render(self) -> bytes:
        return generate_latest(self.registry)
