"""Each answered turn as an OpenTelemetry trace (`serve --otlp-endpoint`): a real `serve` in a subprocess exports
over OTLP/HTTP to a real receiver in the test (testing/otlp_receiver.py), for a real spoken turn and a typed
one; once nothing listens at the endpoint, calls go on. The spans' shape for replies that fail or are left
unfinished is checked on the observer itself, with the SDK's in-memory exporter."""

from __future__ import annotations

import asyncio
import time

import pytest
from agent_server import Client, spoken_turn, typed_turn

from higgs_agent.agent.events import Failure, ReplyFinished, ReplyState, TurnTimed
from higgs_agent.agent.tracing import TurnTracer
from higgs_agent.otlp import traces_url
from higgs_agent.testing.otlp_receiver import Collector, ReceivedSpan
from higgs_agent.testing.serve_process import running_serve

SPOKEN = "hello, can you tell me the weather forecast for tomorrow"
TYPED = "And the day after?"
SPOKEN_STAGES = ["end_of_turn", "asr", "responder", "engine_queue", "first_audio", "transport"]
TYPED_STAGES = ["responder", "engine_queue", "first_audio", "transport"]
FAST_EXPORT = {"OTEL_BSP_SCHEDULE_DELAY": "50", "OTEL_SERVICE_NAME": "higgs-test"}  # ms between batch exports


def serve_args(tiny_dir, endpoint: str) -> list[str]:  # noqa: ANN001
    return ["--model", str(tiny_dir), "--no-understanding", "--max-frames", "40", "--otlp-endpoint", endpoint]


async def converse(base: str) -> tuple[dict, list[dict]]:
    """A spoken turn, then a typed one: (session.created, [their response.done])."""
    client = await Client.connect(base)
    try:
        return client.events[0], [await spoken_turn(client, SPOKEN), await typed_turn(client, TYPED)]
    finally:
        await client.close()


def roots(spans: list[ReceivedSpan]) -> list[ReceivedSpan]:
    return [span for span in spans if not span.parent_id]


def children(spans: list[ReceivedSpan], root: ReceivedSpan) -> list[ReceivedSpan]:
    return sorted((span for span in spans if span.parent_id == root.span_id), key=lambda span: span.start_ns)


def check_turn(spans: list[ReceivedSpan], root: ReceivedSpan, stages: list[str]) -> None:
    """The root's stages, in time order, each its child in its trace, tiling the root from its start."""
    inner = children(spans, root)
    assert [span.name for span in inner] == stages, inner
    assert all(span.trace_id == root.trace_id for span in inner)
    assert inner[0].start_ns == root.start_ns and inner[-1].end_ns <= root.end_ns
    for before, after in zip(inner, inner[1:]):
        assert before.start_ns <= before.end_ns == after.start_ns, (before, after)
    assert all(span.attributes == {"higgs.engine": "local"} for span in inner)
    # the root carries the latency figures; the transport stage ends at the first audio byte sent
    zero_ns = inner[0].end_ns if stages[0] == "end_of_turn" else root.start_ns
    sent_ms = (inner[-1].end_ns - zero_ns) / 1e6
    assert sent_ms == pytest.approx(root.attributes["higgs.latency.first_audio_sent_ms"], abs=1.0)


@pytest.fixture(scope="module")
def traced_server(tiny_dir):
    """A real server exporting to a real receiver: (the server, the receiver)."""
    env = {**FAST_EXPORT, "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT": "1"}  # seconds an export may retry (collector down)
    with Collector() as collector, running_serve(serve_args(tiny_dir, collector.url), env=env) as serve:
        yield serve, collector


def test_each_answered_turn_is_one_trace_with_its_stages(traced_server):
    serve, collector = traced_server
    created, (spoken, typed) = asyncio.run(converse(serve.base))
    spans = collector.wait_for(lambda spans: len(roots(spans)) >= 2
                               and len(spans) >= 2 + len(SPOKEN_STAGES) + len(TYPED_STAGES))
    assert set(collector.paths) == {"/v1/traces"}
    by_response = {root.attributes["higgs.response.id"]: root for root in roots(spans)}
    assert list(by_response) == [spoken["response"]["id"], typed["response"]["id"]], roots(spans)
    assert len({root.trace_id for root in roots(spans)}) == 2  # one trace a turn
    for done, stages in ((spoken, SPOKEN_STAGES), (typed, TYPED_STAGES)):
        root = by_response[done["response"]["id"]]
        assert root.name == "turn" and root.status != 2
        assert root.resource["service.name"] == "higgs-test"
        attributes = root.attributes
        assert attributes["higgs.session.id"] == created["session"]["id"]
        assert (attributes["higgs.tenant"], attributes["higgs.transport"]) == ("default", "websocket")
        assert attributes["higgs.reply.status"] == done["response"]["status"] == "completed"
        assert attributes["higgs.reply.item.id"] == done["response"]["output"][0]["id"]
        assert attributes["higgs.engine"] == "local"
        check_turn(spans, root, stages)
    assert by_response[spoken["response"]["id"]].attributes["higgs.user.item.id"].startswith("item")


def test_a_collector_that_is_down_does_not_stop_the_call(traced_server):
    """The collector goes away (nothing listens at the endpoint any more): the next turn's export fails, said
    in the log, and the turn after it is answered. (Last of the server's tests: the collector stays down.)"""
    serve, collector = traced_server
    collector.close()

    async def talk() -> list[dict]:
        client = await Client.connect(serve.base)
        try:
            first = await typed_turn(client, "Still here?")
            deadline = time.monotonic() + 60
            while "Failed to export" not in serve.log() and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            return [first, await typed_turn(client, "And now?")]
        finally:
            await client.close()

    done = asyncio.run(talk())
    assert "Failed to export" in serve.log()
    assert [d["response"]["status"] for d in done] == ["completed", "completed"]


# -- the observer alone -------------------------------------------------------------------------------------------

@pytest.fixture
def traced():
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield TurnTracer(provider.get_tracer("test"), "sess_1", "acme", "phone"), exporter
    provider.shutdown()


def test_a_failed_reply_is_an_error_and_a_skipped_stage_has_no_span(traced):
    from opentelemetry.trace import StatusCode

    tracer, exporter = traced
    at = time.time() - 5
    tracer.observe(TurnTimed("resp_1", "item_u", None, {"end_of_turn": 300.0, "transcript": 120.0,
                                                         "first_text": None, "first_audio_frame": None,
                                                         "first_audio_sent": None}, engine="wss://gpu-1", at=at))
    failure = Failure("responder_error", "the LLM is down")
    tracer.observe(ReplyFinished("resp_1", "failed", None, "", ReplyState("resp_1", "failed", failure=failure)))
    spans = {span.name: span for span in exporter.get_finished_spans()}
    assert sorted(spans) == ["asr", "end_of_turn", "turn"]
    root = spans["turn"]
    assert root.status.status_code == StatusCode.ERROR and root.status.description == "responder_error: the LLM is down"
    assert root.attributes["higgs.engine"] == spans["asr"].attributes["higgs.engine"] == "wss://gpu-1"
    assert root.attributes["higgs.transport"] == "phone" and "higgs.reply.item.id" not in root.attributes
    assert root.start_time == int(at * 1e9) - 300_000_000 == spans["end_of_turn"].start_time
    assert spans["asr"].end_time == int(at * 1e9) + 120_000_000 and root.end_time >= spans["asr"].end_time


def test_a_reply_the_session_never_saw_end_is_traced_at_the_session_end(traced):
    from opentelemetry.trace import StatusCode

    tracer, exporter = traced
    tracer.observe(TurnTimed("resp_2", None, "item_a", {"first_text": 5.0, "first_audio_sent": 400.0},
                             at=time.time(), engine_start_ms=20.0))
    assert exporter.get_finished_spans() == ()  # still being spoken
    tracer.end()
    spans = exporter.get_finished_spans()
    assert [span.name for span in spans] == ["responder", "engine_queue", "transport", "turn"]
    root = spans[-1]
    assert root.status.status_code == StatusCode.ERROR and root.attributes["higgs.reply.status"] == "failed"


def test_the_endpoint_flag_takes_a_collectors_base_url():
    from higgs_agent.cli import parse_args as parse
    from higgs_agent.server import check_serve_args

    assert traces_url("http://collector:4318") == traces_url("http://collector:4318/") == \
        "http://collector:4318/v1/traces" == traces_url("http://collector:4318/v1/traces")
    assert "--otlp-endpoint" in check_serve_args(parse(["serve", "--otlp-endpoint", "collector:4318"]))
    assert check_serve_args(parse(["serve", "--otlp-endpoint", "https://collector:4318"])) is None
