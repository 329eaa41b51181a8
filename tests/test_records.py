"""Conversations on record (`serve --records-url`), with real things only: a real `serve` in a subprocess, a real
SQLite file, a real PostgreSQL (initdb + pg_ctl), real speech. A spoken and a typed turn are read back per tenant
(GET /v1/sessions), deleted on request, survive a SIGKILL of the server mid-conversation, and a database that is
down does not stop a reply (the failure is counted)."""

from __future__ import annotations

import asyncio
import io
import re
import signal
import time
import wave

import httpx
import numpy as np
import pytest
from agent_server import Client, spoken_turn, typed_turn
from postgres import running_postgres
from speech import speech_with_silence

from sqlalchemy import func, select

from higgs_agent.records.store import (
    AudioWrite,
    ItemWrite,
    LatencyWrite,
    RecordStore,
    SessionEnded,
    SessionStarted,
    audio,
    items,
    latencies,
)
from higgs_agent.records.writer import RecordWriter
from higgs_agent.testing.serve_process import running_serve

KEYS = {"acme": "sk-acme-1", "globex": "sk-globex-2"}
SPOKEN = "hello, can you tell me the weather forecast for tomorrow"


def started_writer(tmp_path, audio: bool = False) -> tuple[RecordStore, RecordWriter]:  # noqa: ANN001
    """A SQLite file to record to (`audio`: both sides' audio too), and its writer thread running."""
    store = RecordStore(f"sqlite:///{tmp_path / 'records.db'}")
    writer = RecordWriter(store, audio=audio)
    writer.start()
    return store, writer


async def ended_sessions(store: RecordStore, writer: RecordWriter, tenant: str, timeout_s: float = 30.0) -> list:
    """The tenant's sessions on record, once the newest one's end is written (or the time is up)."""
    deadline = time.monotonic() + timeout_s
    while True:
        assert writer.flush()
        rows, _ = store.list_sessions(tenant, 10)
        if (rows and rows[0]["ended_at"] is not None) or time.monotonic() >= deadline:
            return rows
        await asyncio.sleep(0.1)


def echo_services(bundle, transcriber, writer: RecordWriter):  # noqa: ANN001, ANN201 - AgentServices
    """An echo agent (one engine slot) that records through `writer`."""
    from higgs_agent.agent.responders.echo import EchoResponder
    from higgs_agent.agent.services import AgentServices
    from higgs_agent.model.sampling import SamplingSettings
    from higgs_agent.streaming.engine import StreamingEngine

    return AgentServices(engine=StreamingEngine(bundle, slots=1), transcriber=transcriber,
                         responders={"echo": EchoResponder()}, default_responder="echo",
                         sampling=SamplingSettings(greedy=True, max_frames=40), records=writer)


def auth(tenant: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[tenant]}"}


@pytest.fixture(scope="module")
def keys_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("keys") / "keys.txt"
    path.write_text("".join(f"{tenant}: {key}\n" for tenant, key in KEYS.items()))
    return path


def serve_args(tiny_dir, keys_file, records_url: str, *more: str) -> list[str]:
    return ["--model", str(tiny_dir), "--no-understanding", "--max-frames", "40", "--api-keys", str(keys_file),
            "--records-url", records_url, *more]


# -- a conversation -------------------------------------------------------------------------------------------

async def converse(base: str, tenant: str = "acme") -> str:
    """A spoken turn, then a typed one; the session's id."""
    client = await Client.connect(base, additional_headers=auth(tenant))
    try:
        session_id = client.events[0]["session"]["id"]
        await spoken_turn(client, SPOKEN)
        await typed_turn(client, "And the day after?")
        return session_id
    finally:
        await client.close()


def record_of(base: str, session_id: str, tenant: str = "acme", until: callable = bool, timeout_s: float = 10):
    """GET /v1/sessions/{id}, asked again until `until(body)` (writes are committed a moment after they happen)."""
    deadline = time.monotonic() + timeout_s
    while True:
        response = httpx.get(f"{base}/v1/sessions/{session_id}", headers=auth(tenant), timeout=10)
        if response.status_code == 200 and until(response.json()) or time.monotonic() > deadline:
            return response
        time.sleep(0.1)


def check_conversation(record: dict) -> None:
    """A spoken turn and a typed one, on record in order with their replies and latencies."""
    messages = [item for item in record["items"] if item["type"] == "message"]
    assert [item["role"] for item in messages] == ["user", "assistant", "user", "assistant"], messages
    heard, echo, typed, echo2 = messages
    assert "weather" in heard["text"].lower() and heard["content_type"] == "input_audio", heard
    assert heard["language"] in (None, "en")
    assert echo["text"] and "weather" in echo["text"].lower() and echo["response_id"], echo
    assert typed["text"] == "And the day after?" and typed["content_type"] == "input_text"
    assert echo2["text"] == "And the day after?" and echo2["status"] == "completed"
    latencies = {latency["response_id"]: latency["stages_ms"] for latency in record["latencies"]}
    assert set(latencies) == {echo["response_id"], echo2["response_id"]}
    assert latencies[echo["response_id"]]["transcript"] is not None, latencies


def dropped(base: str) -> float:
    text = httpx.get(f"{base}/metrics", headers=auth("acme")).text
    found = re.findall(r'^higgs_records_dropped_total\{reason="database_error"\} (\S+)$', text, re.M)
    return float(found[0]) if found else 0.0


# -- the store and its writer thread, without a server ------------------------------------------------------------

def test_writer_commits_and_the_store_reads_back_per_tenant(tmp_path):
    store, writer = started_writer(tmp_path)
    now = time.time()
    writer.put(SessionStarted("sess_old", "acme", "phone", "m", now - 10 * 86400))
    writer.put(SessionStarted("sess_a", "acme", "websocket", "m", now))
    writer.put(SessionStarted("sess_b", "globex", "webrtc", "m", now + 1))
    writer.put(ItemWrite("sess_a", "item_2", 1, now, {"role": "assistant", "status": "in_progress"}))
    writer.put(ItemWrite("sess_a", "item_1", 0, now, {"role": "user", "text": "hi"}))
    writer.put(ItemWrite("sess_a", "item_2", 1, now, {"text": "hello", "status": "completed"}))
    writer.put(LatencyWrite("sess_a", "resp_1", "item_1", "item_2", now, {"transcript": 12.5, "first_text": None}))
    writer.put(SessionEnded("sess_a", now + 5))
    assert writer.flush()
    record = store.get_session("acme", "sess_a")
    assert [(i["item_id"], i["role"], i["text"], i["status"]) for i in record["items"]] == [
        ("item_1", "user", "hi", None), ("item_2", "assistant", "hello", "completed")]
    assert record["latencies"][0]["stages_ms"] == {"transcript": 12.5, "first_text": None}
    assert record["ended_at"] == now + 5
    assert store.get_session("globex", "sess_a") is None  # another tenant's session reads as missing
    rows, more = store.list_sessions("acme", limit=1)
    assert [r["id"] for r in rows] == ["sess_a"] and more
    assert [r["id"] for r in store.list_sessions("acme", 5, after="sess_a")[0]] == ["sess_old"]
    assert store.prune(days=7) == 1 and store.get_session("acme", "sess_old") is None
    assert not store.delete_session("globex", "sess_a") and store.delete_session("acme", "sess_a")
    assert store.get_session("acme", "sess_a") is None
    # writes of a deleted session still on their way (it was live) leave nothing behind
    writer.put(ItemWrite("sess_a", "item_3", 2, now, {"role": "user", "text": "still talking"}))
    writer.put(LatencyWrite("sess_a", "resp_2", "item_3", None, now, {}))
    assert writer.flush()
    with store.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(items)).scalar() == 0
        assert conn.execute(select(func.count()).select_from(latencies)).scalar() == 0
    writer.close()


def test_a_full_queue_or_a_dead_database_drops_and_counts_and_never_raises(tmp_path):
    drops: list[tuple[str, int]] = []
    store = RecordStore(f"sqlite:///{tmp_path / 'no-such-dir' / 'records.db'}")  # cannot be opened
    writer = RecordWriter(store, on_drop=lambda reason, count: drops.append((reason, count)), queue_size=2)
    for n in range(5):  # the thread is not started: the queue fills
        writer.put(SessionStarted(f"sess_{n}", "acme", "websocket", None, 0.0))
    assert drops == [("queue_full", 1)] * 3
    writer.start()
    assert writer.flush()
    assert ("database_error", 2) in drops
    writer.close()


def test_retention_deletes_old_sessions_when_the_writer_starts(tmp_path):
    store = RecordStore(f"sqlite:///{tmp_path / 'records.db'}")
    now = time.time()
    store.write([SessionStarted("sess_old", "acme", "phone", None, now - 8 * 86400),
                 ItemWrite("sess_old", "item_1", 0, now, {"text": "long ago"}),
                 AudioWrite("sess_old", "caller", None, 0, 16_000, bytes(3200)),
                 SessionStarted("sess_new", "acme", "phone", None, now - 86400)])
    writer = RecordWriter(store, days=7)
    writer.start()
    assert writer.flush()
    assert [row["id"] for row in store.list_sessions("acme", 10)[0]] == ["sess_new"]
    with store.engine.connect() as conn:  # its audio went with it
        assert conn.execute(select(func.count()).select_from(audio)).scalar() == 0
    writer.close()


def test_serve_checks_the_records_flags(tmp_path):
    from higgs_agent.cli import build_parser
    from higgs_agent.server import check_serve_args, records_store

    def args(*more: str):  # noqa: ANN202
        return build_parser().parse_args(["serve", *more])

    assert "--records-url" in check_serve_args(args("--records-days", "7"))
    assert "N > 0" in check_serve_args(args("--records-url", "x.db", "--records-days", "0"))
    assert check_serve_args(args("--records-url", "x.db", "--records-days", "30")) is None
    assert "--records-url" in check_serve_args(args("--records-audio"))
    assert check_serve_args(args("--records-url", "x.db", "--records-audio")) is None
    assert records_store(args()) is None
    assert records_store(args("--records-url", str(tmp_path / "r.db"))).engine.dialect.name == "sqlite"
    with pytest.raises(ValueError, match="cannot be used"):
        records_store(args("--records-url", "nosuchdb://host/x"))


# -- a real server on a SQLite file ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def records_db(tmp_path_factory):
    return tmp_path_factory.mktemp("records") / "records.db"


@pytest.fixture(scope="module")
def server(tiny_dir, keys_file, records_db):
    with running_serve(serve_args(tiny_dir, keys_file, str(records_db))) as serve:
        yield serve


def test_a_conversation_is_on_record_for_its_tenant_only_and_can_be_deleted(server):
    base = server.base
    session_id = asyncio.run(converse(base))
    response = record_of(base, session_id, until=lambda body: body["ended_at"] is not None)
    assert response.status_code == 200, response.text
    record = response.json()
    assert record["object"] == "realtime.session.record" and record["transport"] == "websocket"
    check_conversation(record)
    listed = httpx.get(f"{base}/v1/sessions", headers=auth("acme")).json()
    assert listed["object"] == "list" and listed["data"][0]["id"] == session_id
    # another tenant's key sees nothing of it
    assert httpx.get(f"{base}/v1/sessions", headers=auth("globex")).json()["data"] == []
    other = httpx.get(f"{base}/v1/sessions/{session_id}", headers=auth("globex"))
    assert other.status_code == 404 and other.json()["error"]["code"] == "session_not_found"
    assert httpx.delete(f"{base}/v1/sessions/{session_id}", headers=auth("globex")).status_code == 404
    assert httpx.get(f"{base}/v1/sessions/{session_id}").status_code == 401  # and no key, nothing
    # deleted on request
    deleted = httpx.delete(f"{base}/v1/sessions/{session_id}", headers=auth("acme"))
    assert deleted.status_code == 200 and deleted.json() == {
        "id": session_id, "object": "realtime.session.record.deleted", "deleted": True}
    assert httpx.get(f"{base}/v1/sessions/{session_id}", headers=auth("acme")).status_code == 404
    assert httpx.get(f"{base}/v1/sessions?limit=0", headers=auth("acme")).status_code == 400


def committed(base: str, client: Client, timeout_s: float = 60) -> None:
    """Until the writer has committed both turns, their replies, and the first reply's audio (the event that
    proves a kill now loses nothing the test then looks for)."""
    session_id = client.events[0]["session"]["id"]

    def whole(record: dict) -> bool:
        replies = [item for item in record["items"] if item.get("role") == "assistant"]
        if len(replies) < 2 or replies[-1]["status"] != "completed" or len(record["latencies"]) < 2:
            return False
        audio = httpx.get(f"{base}/v1/sessions/{session_id}/items/{replies[0]['id']}/audio", headers=auth("acme"))
        return audio.status_code == 200 and len(wav_of(audio)[0]) == len(client.reply_audio(replies[0]["response_id"]))

    assert whole(record_of(base, session_id, until=whole, timeout_s=timeout_s).json())


def test_a_killed_server_loses_nothing_already_said(tiny_dir, keys_file, tmp_path):
    """SIGKILL mid-conversation (the WebSocket still open, no shutdown of any kind), then a new server on the same
    file: everything said up to the kill is on record, and the audio of it (all but the chunk being gathered)."""
    db = tmp_path / "records.db"

    async def talk_then_kill(serve) -> Client:  # noqa: ANN001 - a ServeProcess
        client = await Client.connect(serve.base, additional_headers=auth("acme"))
        await spoken_turn(client, SPOKEN)
        await typed_turn(client, "And the day after?")
        await asyncio.to_thread(committed, serve.base, client)  # what the checks below read is on record
        serve.process.send_signal(signal.SIGKILL)
        serve.process.wait(10)
        return client

    with running_serve(serve_args(tiny_dir, keys_file, f"sqlite:///{db}", "--records-audio")) as first:
        client = asyncio.run(talk_then_kill(first))
    session_id = client.events[0]["session"]["id"]
    with running_serve(serve_args(tiny_dir, keys_file, f"sqlite:///{db}")) as second:
        response = record_of(second.base, session_id)
        assert response.status_code == 200, response.text
        record = response.json()
        assert record["ended_at"] is None  # it never closed: the server died under it
        check_conversation(record)
        heard = resampled_as_heard(speech_with_silence(SPOKEN, lead_ms=300, tail_ms=1200, rate=24_000)[0])
        caller, _ = wav_of(httpx.get(f"{second.base}/v1/sessions/{session_id}/audio?side=caller",
                                     headers=auth("acme")))
        assert len(heard) - 16_000 < len(caller) <= len(heard)  # at most the last second's chunk is lost
        assert np.abs(caller - heard[:len(caller)].astype(int)).max() <= 1
        spoken = next(item for item in record["items"] if item["role"] == "assistant")
        reply, _ = wav_of(httpx.get(f"{second.base}/v1/sessions/{session_id}/items/{spoken['id']}/audio",
                                    headers=auth("acme")))
        assert np.array_equal(reply, as_int16(client.reply_audio(spoken["response_id"])))


def test_a_database_that_cannot_be_written_does_not_stop_the_call(tiny_dir, keys_file, tmp_path):
    url = f"sqlite:///{tmp_path / 'no-such-dir' / 'records.db'}"
    with running_serve(serve_args(tiny_dir, keys_file, url)) as serve:
        async def talk() -> dict:
            client = await Client.connect(serve.base, additional_headers=auth("acme"))
            try:
                return await typed_turn(client, "Still here?")
            finally:
                await client.close()

        done = asyncio.run(talk())
        assert done["response"]["status"] == "completed"
        deadline = time.monotonic() + 10
        while dropped(serve.base) == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert dropped(serve.base) > 0
        unavailable = httpx.get(f"{serve.base}/v1/sessions", headers=auth("acme"))
        assert unavailable.status_code == 503 and unavailable.json()["error"]["code"] == "records_unavailable"
        assert "writing to" in serve.log() and "failed" in serve.log()


# -- a real PostgreSQL ---------------------------------------------------------------------------------------------

def test_postgres_keeps_the_record_and_a_stopped_postgres_does_not_stop_the_call(tiny_dir, keys_file):
    with running_postgres() as postgres, running_serve(serve_args(tiny_dir, keys_file, postgres.url,
                                                                  "--records-audio")) as serve:
        session_id = asyncio.run(converse(serve.base))
        response = record_of(serve.base, session_id, until=lambda body: body["ended_at"] is not None)
        assert response.status_code == 200, response.text
        check_conversation(response.json())
        heard = resampled_as_heard(speech_with_silence(SPOKEN, lead_ms=300, tail_ms=1200, rate=24_000)[0])
        caller, _ = wav_of(httpx.get(f"{serve.base}/v1/sessions/{session_id}/audio?side=caller",
                                     headers=auth("acme")))
        assert np.abs(caller - heard.astype(int)).max() <= 1  # the same audio, in the same database
        assert httpx.get(f"{serve.base}/v1/sessions", headers=auth("globex")).json()["data"] == []

        postgres.stop()  # the database goes down under a live server
        before = dropped(serve.base)

        async def talk() -> dict:
            client = await Client.connect(serve.base, additional_headers=auth("acme"))
            try:
                return await typed_turn(client, "Still here?")
            finally:
                await client.close()

        assert asyncio.run(talk())["response"]["status"] == "completed"
        deadline = time.monotonic() + 15
        while dropped(serve.base) == before and time.monotonic() < deadline:
            time.sleep(0.2)
        assert dropped(serve.base) > before

        postgres.start()  # back up: the next session is on record again
        session_id = asyncio.run(converse(serve.base))
        response = record_of(serve.base, session_id, until=lambda body: body["ended_at"] is not None, timeout_s=20)
        assert response.status_code == 200, response.text
        check_conversation(response.json())


# -- a phone call (Twilio, simulated exactly) on record ---------------------------------------------------------

async def test_a_phone_call_is_on_record(bundle, transcriber, tmp_path):
    from speech import synthesize
    from starlette.applications import Starlette
    from starlette.routing import Mount

    from higgs_agent.server import serve_app_in_background
    from higgs_agent.testing.phone_simulator import SimulatedCall
    from higgs_agent.transport.app import create_agent_app
    from higgs_agent.transport.phone.call import CallSettings
    from higgs_agent.transport.phone.routes import PhoneLine
    from higgs_agent.transport.phone.twiml import TwilioSettings

    store, writer = started_writer(tmp_path, audio=True)
    services = echo_services(bundle, transcriber, writer)
    settings = TwilioSettings(public_url="https://agent.example.com", auth_token="1" * 32)
    line = PhoneLine(services, settings, CallSettings(greeting="Hi there.", tenant="acme"))  # --phone-tenant acme
    app = Starlette(routes=[*line.routes(), Mount("/", app=create_agent_app(services))])
    try:
        with serve_app_in_background(app) as base:
            call = SimulatedCall(base, settings)
            await call.dial()
            await call.wait_frames(1, timeout=60)
            await call.wait_quiet()
            audio, _ = synthesize("my name is john and I am calling about my order", sample_rate=16_000)
            speech_end = await call.say(audio, 16_000)
            await call.wait_frames(1, since=speech_end, timeout=60)
            await call.wait_quiet()
            await call.hang_up()
            rows = await ended_sessions(store, writer, "acme")
        assert [row["transport"] for row in rows] == ["phone"] and store.list_sessions("default", 10)[0] == []
        record = store.get_session("acme", rows[0]["id"])
        messages = [(item["role"], item["text"]) for item in record["items"] if item["kind"] == "message"]
        messages_ids = [item["item_id"] for item in record["items"] if item["kind"] == "message"]
        assert messages[0] == ("assistant", "Hi there.")
        assert messages[1][0] == "user" and "order" in messages[1][1].lower(), messages
        assert messages[2][0] == "assistant" and "order" in messages[2][1].lower(), messages
        assert any(latency["user_item_id"] for latency in record["latencies"])
        # the call's audio: the caller's 8 kHz heard at 16 kHz, the greeting as the agent's first reply
        from higgs_agent.records.audio import call_sound, item_sound

        found = store.get_audio("acme", rows[0]["id"])
        caller = call_sound(found, "caller").samples
        assert len(caller) >= len(audio) and np.abs(caller).max() > 1000, len(caller)  # all it said, at least
        greeting = item_sound(found, messages_ids[0])
        assert greeting.rate == 24_000 and len(greeting.samples) > 0
        said = item_sound(store.get_audio("acme", rows[0]["id"], messages_ids[1]), messages_ids[1])
        assert said.rate == 16_000 and len(said.samples) > 0
    finally:
        services.engine.close()
        writer.close()


# -- a WebRTC call (aiortc, as a browser) on record, for its key's tenant ------------------------------------------

async def test_a_webrtc_call_is_on_record_for_its_tenant(bundle, transcriber, tmp_path):
    from agent_server import running_server

    from higgs_agent.testing.webrtc_caller import Caller
    from higgs_agent.transport.auth import Authenticator

    store, writer = started_writer(tmp_path)
    services = echo_services(bundle, transcriber, writer)
    try:
        with running_server(services, authenticator=Authenticator({"acme-key": "acme"})) as base:
            caller = await Caller.call(base, "acme-key")
            try:
                caller.send({"type": "conversation.item.create", "item": {
                    "type": "message", "role": "user", "content": [{"type": "input_text", "text": "Ahoy there."}]}})
                caller.send({"type": "response.create"})
                done = await caller.until("response.done", timeout=120)
            finally:
                await caller.hang_up()
            assert done["response"]["status"] == "completed"
            rows = await ended_sessions(store, writer, "acme")
        assert [row["transport"] for row in rows] == ["webrtc"]
        assert store.list_sessions("default", 10)[0] == []
        record = store.get_session("acme", rows[0]["id"])
        messages = [(item["role"], item["text"]) for item in record["items"] if item["kind"] == "message"]
        assert messages == [("user", "Ahoy there."), ("assistant", "Ahoy there.")], messages
        assert [latency["response_id"] for latency in record["latencies"]] == [done["response"]["id"]]
    finally:
        services.engine.close()
        writer.close()


# -- a tool round (text mode: the real Session, typed turns) and a cut reply on record -------------------------

async def test_a_tool_round_is_on_record_with_its_call_and_result(bundle, transcriber, llm, tmp_path):
    from mcp_server import ORDER_TOOL

    from higgs_agent.agent.responders.llm import LLMResponder
    from higgs_agent.agent.services import AgentServices
    from higgs_agent.streaming.engine import StreamingEngine
    from higgs_agent.testing.fake_llm import ToolCall, Turn
    from higgs_agent.testing.text_mode import TextConversation

    store, writer = started_writer(tmp_path)
    engine = StreamingEngine(bundle)
    services = AgentServices(engine=engine, transcriber=transcriber, default_responder="llm",
                             responders={"llm": LLMResponder(llm.base_url, model="fake")}, records=writer)
    llm.turns = [Turn(text="Let me check.", tool_calls=[ToolCall("lookup_order", '{"order_number": "A1001"}')]),
                 Turn(text="It shipped on Monday.")]
    try:
        async with TextConversation(services, session={"tools": [ORDER_TOOL]}) as chat:
            session_id = chat.session.config.id
            asked = await chat.run("Where is my order A1001?")
            await chat.answer(asked.calls[0]["call_id"], '{"status": "shipped Monday"}')
        assert writer.flush()
    finally:
        engine.close()
        writer.close()
    record = store.get_session("default", session_id)
    rows = [(item["kind"], item["role"], item["text"], (item["call"] or {}).get("name"),
             (item["call"] or {}).get("output")) for item in record["items"]]
    assert rows == [("message", "user", "Where is my order A1001?", None, None),
                    ("message", "assistant", "Let me check.", None, None),
                    ("function_call", "assistant", None, "lookup_order", None),
                    ("function_call_output", "user", None, None, '{"status": "shipped Monday"}'),
                    ("message", "assistant", "It shipped on Monday.", None, None)], rows
    call = record["items"][2]["call"]
    assert call["arguments"] == '{"order_number": "A1001"}' and call["call_id"] == asked.calls[0]["call_id"]
    assert record["ended_at"] is not None and len(record["latencies"]) == 2


def test_a_cut_reply_and_the_callers_context_are_on_record(tmp_path):
    from higgs_agent.agent.config import SessionConfig
    from higgs_agent.agent.conversation import ConversationItem
    from higgs_agent.agent.events import CallerUnderstood, ItemAdded, ReplyCut, ReplyFinished, SessionOpened
    from higgs_agent.agent.recording import SessionRecorder
    from higgs_agent.agent.tools.spec import ToolConfig
    from higgs_agent.understanding.context import EmotionReading, TurnContext
    from higgs_agent.understanding.emotion import EmotionState, Prosody

    store, writer = started_writer(tmp_path)
    recorder = SessionRecorder(writer, "sess_1", "acme", "phone")
    user = ConversationItem("item_u", "user", "input_audio", text="Wait, stop!", status="completed")
    reply = ConversationItem("item_a", "assistant", "output_audio", status="in_progress")
    context = TurnContext(None, EmotionReading(EmotionState.UPSET, Prosody(210.0, 40.0, -20.0, 3.1), None), "en")
    for event in (SessionOpened(SessionConfig(model="m"), ToolConfig()), ItemAdded(reply, None),
                  ItemAdded(user, reply.id), CallerUnderstood(user.id, context), ReplyCut(reply.id, 1234.56),
                  ReplyFinished("resp_1", "cancelled", reply.id, "The weather tomorrow")):
        recorder.observe(event)
    reply.text = "changed after the event"  # the live item moves on: the record keeps what was said
    assert writer.flush()
    writer.close()
    cut, said = store.get_session("acme", "sess_1")["items"]
    assert cut["truncated"] and cut["heard_ms"] == 1234.6 and cut["text"] == "The weather tomorrow"
    assert said["context"]["emotion"]["state"] == "upset" and said["context"]["language"] == "en"


# -- both sides' audio on record (serve --records-audio) -----------------------------------------------------------

def wav_of(response: httpx.Response) -> tuple[np.ndarray, int]:
    """A WAV body's int16 samples ((n,) or (n, channels)) and rate."""
    assert response.status_code == 200 and response.headers["content-type"] == "audio/wav", response.text
    with wave.open(io.BytesIO(response.content)) as wav:
        samples = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
        channels, rate = wav.getnchannels(), wav.getframerate()
    return (samples.reshape(-1, channels) if channels > 1 else samples), rate


def test_audio_is_recorded_in_chunks_cut_where_heard_and_deleted_with_its_session(tmp_path):
    from higgs_agent.agent.audio_recording import AudioRecorder
    from higgs_agent.agent.conversation import ConversationItem
    from higgs_agent.agent.events import Place, ReplyItemDone
    from higgs_agent.records.audio import call_sound, item_sound

    store, writer = started_writer(tmp_path)
    writer.put(SessionStarted("sess_a", "acme", "websocket", None, time.time()))
    clock = [0]
    recorder = AudioRecorder(writer, "sess_a", lambda: clock[0])
    rng = np.random.default_rng(0)
    heard = rng.uniform(-0.5, 0.5, 16_000 * 3).astype(np.float32)  # 3 s of the caller, in 20 ms frames
    for at in range(0, len(heard), 320):
        recorder.caller(heard[at:at + 320])
        clock[0] = (at + 320) // 16
    recorder.turn("item_u", heard[8000:40000], start_ms=500)
    recorder.turn("item_c", heard[:20000], start_ms=None)  # an audio item the client created: its own audio
    said = rng.uniform(-0.5, 0.5, 24_000 * 2 + 100).astype(np.float32)  # 2 s of a reply, then it is cut
    for at in range(0, len(said), 960):
        recorder.agent("item_a", said[at:at + 960])
    recorder.observe(ReplyItemDone(Place("resp_1", "item_a", 0), ConversationItem("item_a", "assistant",
                                                                                  "output_audio"), None))
    writer.put(ItemWrite("sess_a", "item_a", 1, time.time(), {"truncated": True, "heard_ms": 1500.0}))
    recorder.end()
    assert writer.flush()
    rows = store.get_audio("acme", "sess_a").rows
    assert [row["samples"] for row in rows if row["track"] == "caller"] == [16_000] * 3  # one-second chunks
    assert all(row["codec"] == "flac" for row in rows if row["track"] != "turn")

    turn = item_sound(store.get_audio("acme", "sess_a", "item_u"), "item_u")
    assert turn.rate == 16_000 and np.abs(turn.samples / 32767 - heard[8000:40000]).max() < 1e-4  # lossless
    created = item_sound(store.get_audio("acme", "sess_a", "item_c"), "item_c")
    assert created.rate == 16_000 and np.abs(created.samples / 32767 - heard[:20000]).max() < 1e-4
    reply = item_sound(store.get_audio("acme", "sess_a", "item_a"), "item_a")
    assert reply.rate == 24_000 and len(reply.samples) == 36_000  # as far as it was heard
    assert np.abs(reply.samples / 32767 - said[:36_000]).max() < 1e-4
    call = call_sound(store.get_audio("acme", "sess_a"))
    assert call.rate == 24_000 and call.samples.shape == (72_000 + 36_000, 2)  # the reply began at 3 s
    assert np.array_equal(call.samples[72_000:, 1], reply.samples) and not call.samples[:72_000, 1].any()

    assert store.get_audio("globex", "sess_a") is None
    assert store.delete_session("acme", "sess_a")
    recorder.caller(heard)  # a deleted live session's audio still on its way leaves nothing behind
    recorder.end()
    assert writer.flush()
    with store.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(audio)).scalar() == 0
    writer.close()


def test_audio_waiting_over_its_budget_is_dropped_and_counted(tmp_path):
    drops: list[tuple[str, int]] = []
    store = RecordStore(f"sqlite:///{tmp_path / 'records.db'}")
    writer = RecordWriter(store, on_drop=lambda reason, count: drops.append((reason, count)), audio=True,
                          audio_queue_bytes=64_000)
    for start in range(0, 48_000, 16_000):  # the thread is not started: 32 kB each, two fit
        writer.put(AudioWrite("sess_a", "caller", None, start, 16_000, bytes(32_000)))
    assert drops == [("audio_queue_full", 1)]
    writer.start()
    assert writer.flush()
    writer.put(AudioWrite("sess_a", "caller", None, 48_000, 16_000, bytes(32_000)))  # taken: room again
    assert writer.flush() and drops == [("audio_queue_full", 1)]
    writer.close()


def resampled_as_heard(*sent: np.ndarray) -> np.ndarray:
    """What the server's caller track holds for audio the client sent (Client.send_audio: 100 ms PCM16 appends at
    24 kHz), as int16: decoded, resampled chunk by chunk to 16 kHz as the server does, and stored as PCM16."""
    from higgs_agent.audio import float_to_pcm16, pcm16_to_float
    from higgs_agent.audio_formats import StreamResampler

    resampler = StreamResampler(24_000, 16_000)
    parts = [resampler.push(pcm16_to_float(float_to_pcm16(audio[at:at + 2400])))
             for audio in sent for at in range(0, len(audio), 2400)]
    return np.frombuffer(float_to_pcm16(np.concatenate(parts)), dtype="<i2")


def as_int16(audio: np.ndarray) -> np.ndarray:
    from higgs_agent.audio import float_to_pcm16

    return np.frombuffer(float_to_pcm16(audio), dtype="<i2")


@pytest.fixture(scope="module")
def audio_server(tiny_dir, keys_file, tmp_path_factory):
    db = tmp_path_factory.mktemp("audio") / "records.db"
    with running_serve(serve_args(tiny_dir, keys_file, str(db), "--records-audio")) as serve:
        yield serve


def test_both_sides_audio_is_on_record_cut_at_a_barge_in_for_its_tenant_only(audio_server):
    """A spoken turn and its reply, then a second turn whose reply the caller talks over: the caller's side is
    what the client sent (resampled to 16 kHz), each reply is the audio the client got, the cut one as far as it
    was heard; another tenant gets 404; a delete removes it.

    The server cuts the second reply if it is still being made when it hears the caller; a reply already sent
    whole (a fast machine makes its 1.6 s before the caller's speech is heard) is the client's to cut, as an
    OpenAI WebSocket client does (`conversation.item.truncate`): either way the record keeps what was heard."""
    base = audio_server.base
    sent, _ = speech_with_silence(SPOKEN, lead_ms=300, tail_ms=1200, rate=24_000)
    stop, _ = speech_with_silence("wait, stop", lead_ms=0, tail_ms=300, rate=24_000)

    async def talk() -> Client:
        client = await Client.connect(base, additional_headers=auth("acme"))
        try:
            await client.send_audio(sent)
            await client.until("response.done", timeout=180)
            # the caller's "wait, stop" is heard, not answered: only the two replies are on record
            await client.send({"type": "session.update", "session": {"type": "realtime", "audio": {"input": {
                "turn_detection": {"type": "server_vad", "create_response": False}}}}})
            await client.until("session.updated")
            await client.send_audio(sent)
            await client.until("input_audio_buffer.committed", timeout=180)
            await client.send({"type": "response.create"})
            delta = await client.until("response.output_audio.delta", timeout=180)
            await client.send_audio(stop)  # talks over the second reply as soon as it is heard
            # Both the reply's end and the end of the caller's speech: a cut the server makes comes before
            # each (before response.done from the reply, right after speech_started from the turn).
            seen = {"response.done", "input_audio_buffer.speech_stopped"}
            while seen:
                seen.discard((await client.next(timeout=180))["type"])
            if not any(e["type"] == "conversation.item.truncated" for e in client.events):
                heard_ms = len(client.reply_audio(delta["response_id"])) * 1000 // 24_000 // 2
                await client.send({"type": "conversation.item.truncate", "item_id": delta["item_id"],
                                   "content_index": 0, "audio_end_ms": heard_ms})
                await client.until("conversation.item.truncated", timeout=60)
            return client
        finally:
            await client.close()

    client = asyncio.run(talk())
    session_id = client.events[0]["session"]["id"]
    record = record_of(base, session_id, until=lambda body: body["ended_at"] is not None).json()
    replies = [item for item in record["items"] if item["role"] == "assistant"]
    users = [item for item in record["items"] if item["role"] == "user"]
    assert len(replies) == 2 and not replies[0]["truncated"] and replies[1]["truncated"], replies

    def get(path: str, tenant: str = "acme") -> httpx.Response:
        return httpx.get(f"{base}/v1/sessions/{session_id}{path}", headers=auth(tenant), timeout=30)

    # the caller's side: every sample the client sent, as the server heard it
    caller, rate = wav_of(get("/audio?side=caller"))
    expected = resampled_as_heard(sent, sent, stop)
    assert rate == 16_000 and len(caller) == len(expected) and np.abs(caller - expected.astype(int)).max() <= 1
    started = [e for e in client.events if e["type"] == "input_audio_buffer.speech_started"]
    stopped = {e["item_id"]: e for e in client.events if e["type"] == "input_audio_buffer.speech_stopped"}
    turn, rate = wav_of(get(f"/items/{users[0]['id']}/audio"))  # a user turn: its span of the caller's side
    start = started[0]["audio_start_ms"] * 16
    assert rate == 16_000 and abs(len(turn) - (stopped[users[0]["id"]]["audio_end_ms"] * 16 - start)) <= 16
    assert np.array_equal(turn, caller[start:start + len(turn)])

    # the agent's side: what the client got, the cut reply as far as it was heard
    truncated = next(e for e in client.events if e["type"] == "conversation.item.truncated")  # only one
    assert truncated["item_id"] == replies[1]["id"]
    got = [as_int16(client.reply_audio(item["response_id"])) for item in replies]
    first, rate = wav_of(get(f"/items/{replies[0]['id']}/audio"))
    assert rate == 24_000 and np.array_equal(first, got[0])
    cut, _ = wav_of(get(f"/items/{replies[1]['id']}/audio"))
    assert len(cut) == round(replies[1]["heard_ms"] * 24) <= len(got[1])
    assert abs(len(cut) - truncated["audio_end_ms"] * 24) <= 24 and np.array_equal(cut, got[1][:len(cut)])

    # the whole call: stereo on the caller's clock, each reply placed once, after the turn it answers
    call, rate = wav_of(get("/audio"))
    assert rate == 24_000 and call.shape[1] == 2 and len(call) >= len(caller) * 3 // 2
    energy = np.square(call[:, 1].astype(np.int64)).sum()
    assert energy == sum(np.square(part.astype(np.int64)).sum() for part in (first, cut))
    assert not call[:started[0]["audio_start_ms"] * 24, 1].any()  # nobody spoke before the caller

    # another tenant's key: nothing; a delete takes the audio with the rest
    assert get("/audio", "globex").status_code == 404
    assert get(f"/items/{replies[0]['id']}/audio", "globex").status_code == 404
    assert httpx.delete(f"{base}/v1/sessions/{session_id}", headers=auth("acme")).status_code == 200
    assert get("/audio").status_code == 404 and get(f"/items/{users[0]['id']}/audio").status_code == 404


@pytest.mark.parametrize("noise", [None, "near_field"])
def test_a_vad_turns_audio_is_its_span_of_the_callers_side_with_or_without_noise_suppression(tmp_path, noise):
    """With noise suppression the VAD judges the suppressed audio and the turn keeps the original, delayed in step
    with it: the turn's times are still on the input clock, so its span of the caller's side is the turn's own
    audio, sample for sample."""
    from higgs_agent.agent.audio_recording import AudioRecorder
    from higgs_agent.agent.input_audio import InputAudio
    from higgs_agent.agent.noise import NoiseReduction
    from higgs_agent.agent.vad import SpeechStopped, VadSettings
    from higgs_agent.audio_formats import AudioFormat
    from higgs_agent.records.audio import item_sound

    store, writer = started_writer(tmp_path, audio=True)
    writer.put(SessionStarted("sess_a", "acme", "websocket", None, time.time()))
    heard = InputAudio(AudioFormat("audio/pcm", 16_000), VadSettings(),
                       noise=NoiseReduction(noise) if noise else None)
    recorder = AudioRecorder(writer, "sess_a", lambda: heard.audio_ms)
    heard.on_audio = recorder.caller
    said, _ = speech_with_silence(SPOKEN, lead_ms=700, tail_ms=1500, rate=16_000)
    stops = [event for at in range(0, len(said), 320) for event in heard.push(said[at:at + 320], 16_000)
             if isinstance(event, SpeechStopped)]
    assert len(stops) == 1
    recorder.turn("item_u", stops[0].audio, stops[0].audio_start_ms)  # as the session does
    recorder.end()
    assert writer.flush()
    turn = item_sound(store.get_audio("acme", "sess_a", "item_u"), "item_u")
    assert np.abs(turn.samples.astype(int) - as_int16(stops[0].audio).astype(int)).max() <= 1
    writer.close()
