"""Each answered turn as an OpenTelemetry trace (serve --otlp-endpoint): the session's observer turns a reply's
latency (`TurnTimed`) and its end (`ReplyFinished`) into one root span and a child span per stage.

The spans are made when the reply ends, with the moments the turn measured as their explicit start and end
times, so no span is ever left open. The root runs from the end of the user's speech (the last word: the zero
of the latency figures less `end_of_turn`; for a commit or response.create, the moment it came) to the
reply's end: what the caller waits for and then hears, the span operators compare turns by. The caller's
own speaking time is not the agent's work, and a typed turn has none. Its children tile that time, each from
the moment the stage before it reached to its own:

    end_of_turn   the last word -> the turn was called (VAD turns only)
    asr           -> the transcript was ready
    responder     -> the reply's first phrase of text
    engine_queue  -> the engine began that phrase (to the model's worker, waiting behind its steps and prompts)
    first_audio   -> its first codec frame (the prompt's prefill, the steps to a whole frame)
    transport     -> the first audio byte sent (the frame decoded to PCM, handed to the transport)

A stage the turn skipped (no transcript for typed text, no audio for a text reply) has no span; its time
falls to the next. Spans reach the exporter through the SDK's batch processor (its own thread): the event
loop only builds them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode

from higgs_agent.agent.events import DomainEvent, ReplyFinished, TurnTimed

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer

# (span, the moment it ends), in order; each starts where the last reached moment before it was
_STAGES = (("asr", "transcript"), ("responder", "first_text"), ("engine_queue", "engine_start"),
           ("first_audio", "first_audio_frame"), ("transport", "first_audio_sent"))
_SESSION_ENDED = "the session ended before the reply did"


class TurnTracer:
    """One session's traces: `observe` is its observer (`Session.observe`), `end` closes what is still open."""

    def __init__(self, tracer: Tracer, session_id: str, tenant: str, transport: str) -> None:
        self.tracer = tracer
        self.attributes = {"higgs.session.id": session_id, "higgs.tenant": tenant, "higgs.transport": transport}
        self._timed: dict[str, TurnTimed] = {}  # response id -> its latency, until the reply ends

    def observe(self, event: DomainEvent) -> None:
        match event:
            case TurnTimed():
                self._timed[event.response_id] = event
            case ReplyFinished(response_id, status, item_id, _, state):
                if (timed := self._timed.pop(response_id, None)) is not None:
                    failure = state.failure if state is not None else None
                    error = f"{failure.code}: {failure.message}" if failure is not None else \
                        "the reply failed" if status == "failed" else None
                    self._trace(timed, status, item_id or timed.reply_item_id,
                                state.reason if state is not None else None, error)

    def end(self) -> None:
        """The session is over: a reply timed but never finished (its client left mid-reply) ends failed."""
        for timed in list(self._timed.values()):
            self._trace(timed, "failed", timed.reply_item_id, "client_gone", _SESSION_ENDED)
        self._timed.clear()

    def _trace(self, timed: TurnTimed, status: str, item_id: str | None, reason: str | None,
               error: str | None) -> None:
        moments = _moments(timed)
        ns = _wall_ns(timed.at)
        first = moments[0][1]
        end_ns = max(time.time_ns(), ns(moments[-1][1]))
        root = self.tracer.start_span("turn", start_time=ns(first), attributes=self._turn_attributes(
            timed, status, item_id, reason))
        if error is not None:
            root.set_status(Status(StatusCode.ERROR, error))
        context = trace.set_span_in_context(root)
        stage = {"higgs.engine": timed.engine}  # the rest is the root's: a trace is found by its root
        for (_, start), (name, end) in zip(moments, moments[1:]):
            span = self.tracer.start_span(name, context=context, start_time=ns(min(start, end)), attributes=stage)
            span.end(end_time=ns(end))
        root.end(end_time=end_ns)

    def _turn_attributes(self, timed: TurnTimed, status: str, item_id: str | None,
                         reason: str | None) -> dict[str, str | float]:
        attributes: dict[str, str | float] = {**self.attributes, "higgs.response.id": timed.response_id,
                                              "higgs.engine": timed.engine, "higgs.reply.status": status}
        for key, value in (("higgs.user.item.id", timed.user_item_id), ("higgs.reply.item.id", item_id),
                           ("higgs.reply.reason", reason)):
            if value:
                attributes[key] = value
        for stage, ms in timed.stages_ms.items():  # the latency figures, for queries over many traces
            if ms is not None:
                attributes[f"higgs.latency.{stage}_ms"] = ms
        return attributes


def _moments(timed: TurnTimed) -> list[tuple[str, float]]:
    """(the stage that ends there, ms from the turn's zero) for each moment the turn reached, in order, led by
    its start: the last word (then `end_of_turn` ends at zero) or zero itself."""
    stages: Mapping[str, float | None] = {**timed.stages_ms, "engine_start": timed.engine_start_ms}
    end_of_turn = stages.get("end_of_turn")
    moments = [("", -end_of_turn), ("end_of_turn", 0.0)] if end_of_turn is not None else [("", 0.0)]
    moments += [(name, at) for name, mark in _STAGES if (at := stages.get(mark)) is not None]
    return moments


def _wall_ns(zero_s: float) -> Callable[[float], int]:
    """ms from the turn's zero -> nanoseconds since the epoch (OpenTelemetry's timestamps)."""
    zero_ns = int(zero_s * 1e9)
    return lambda ms: zero_ns + int(ms * 1e6)
