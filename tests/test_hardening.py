"""Misbehaving clients, hostile input and contention, each against the real server on a real socket (#10):
peers whose kernel buffers really fill because they really stop reading, a one-slot server with a second
client retrying in a loop, real HTTP bodies, a real `serve` process shut down mid-reply.
(tests/test_fuzz.py throws generated malformed events and bodies at the same server kind.)"""

from __future__ import annotations

import asyncio
import base64
import json
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import websockets
from agent_server import Client, running_server, ws_url
from raw_peer import RawWebSocket, server_side_state, stalled_socket
from speech import pad, synthesize

from higgs_agent.agent.responders.echo import EchoResponder
from higgs_agent.agent.responders.llm import LLMResponder
from higgs_agent.agent.services import AgentServices
from higgs_agent.audio import float_to_pcm16
from higgs_agent.model.prompts import SpeechPrompt
from higgs_agent.model.sampling import SamplingSettings
from higgs_agent.streaming.engine import StreamingEngine
from higgs_agent.testing.fake_llm import FakeLLM
from higgs_agent.testing.serve_process import running_serve

pytestmark = pytest.mark.timeout(300)
ROOT = Path(__file__).resolve().parents[1]
SLOW_CLIENT_S = 2.0
FIRST_PHRASE = "The first phrase is here. "
REPLY = FIRST_PHRASE + "The second phrase comes after a pause. And the third one ends it."


@pytest.fixture(scope="module")
def llm():
    with FakeLLM(reply=REPLY, chunk_chars=4) as server:
        yield server


@pytest.fixture(scope="module")
def services(bundle, transcriber, llm):
    """One slot (contention is easy to make), a short slow-client timeout, HTTP streams whose reader stalls
    for a second cancelled."""
    engine = StreamingEngine(bundle, slots=1, stall_timeout_s=1.0, max_unread_s=0.2)
    return AgentServices(engine=engine, transcriber=transcriber, default_responder="echo",
                         responders={"echo": EchoResponder(), "llm": LLMResponder(llm.base_url, model="fake")},
                         sampling=SamplingSettings(greedy=True, max_frames=1500), slow_client_timeout_s=SLOW_CLIENT_S)


@pytest.fixture(scope="module")
def server(services):
    with running_server(services) as base:
        yield base


def sessions_active(services: AgentServices) -> float:
    return services.metrics.sessions_active._value.get()


def server_errors(services: AgentServices) -> float:
    return services.metrics.errors.labels(code="server_error")._value.get()


def wait_until(predicate: Callable[[], bool], timeout: float) -> float | None:
    """Seconds until `predicate()` held, or None if it did not within `timeout`."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        time.sleep(0.02)
    return None


@pytest.fixture(autouse=True)
def every_test_leaves_the_server_idle(services):
    before = server_errors(services)
    yield
    assert wait_until(lambda: services.engine.active_streams == 0 and sessions_active(services) == 0, 30) \
        is not None, "a session or a stream outlived its test"
    assert server_errors(services) == before, "a client's mistake was reported as server_error"


def text_item(text: str) -> dict:
    return {"type": "conversation.item.create", "item": {"type": "message", "role": "user",
                                                         "content": [{"type": "input_text", "text": text}]}}


# -- 1. a client that stops reading --------------------------------------------------------------------------

def test_a_client_that_stops_reading_mid_reply_is_cut_off_and_its_session_and_slot_freed(server, services, caplog):
    caplog.set_level("INFO")
    peer = RawWebSocket(server)
    peer.until("session.created")
    peer.send(text_item("word " * 300))  # a reply of a minute of audio: far more than every buffer holds
    peer.send({"type": "response.create"})
    assert wait_until(lambda: services.engine.active_streams == 1, 10) is not None
    # From here the peer reads nothing: its 4 KiB window, then the server's socket buffers fill, then the
    # outbox; the server must cut the connection and free the session and the slot by itself.
    assert wait_until(lambda: sessions_active(services) == 0 and services.engine.active_streams == 0, 60) \
        is not None, "the session of a client that stopped reading was never closed"
    assert f"client read nothing for {SLOW_CLIENT_S:g} s" in caplog.text
    # The server's end of the connection is gone within the promised 10 s, while the peer still reads nothing
    # (a socket left closing would wait for ever to flush to a peer that does not read).
    assert wait_until(lambda: server_side_state(peer.ports) in (None, "CLOSE", "TIME_WAIT"), 10) is not None, \
        f"the server still holds the connection: {server_side_state(peer.ports)}"
    assert peer.drain(10), "the TCP connection stayed open"  # what was in flight, then the end
    assert "response.done" not in [event["type"] for event in peer.texts()]  # cut mid-reply: it never finished
    peer.close()


def test_a_client_that_floods_without_reading_is_cut_off_too(server, services, caplog):
    caplog.set_level("INFO")
    peer = RawWebSocket(server)
    peer.until("session.created")
    flood = json.dumps({"type": "x" * 60_000})  # each answered by an `unknown_event` error quoting it
    sent = 0
    with pytest.raises((ConnectionError, TimeoutError)):
        for sent in range(1, 1001):  # 60 MB of errors to send back: past every buffer
            peer.send(flood)
    assert sent < 1000, "the server kept reading from a client that read nothing"
    assert wait_until(lambda: sessions_active(services) == 0, 30) is not None
    assert f"client read nothing for {SLOW_CLIENT_S:g} s" in caplog.text
    assert "handling a client message failed" not in caplog.text  # not the catch-all, not a server_error
    assert peer.drain(10)
    peer.close()


# -- 2. capacity is decided once, when a response starts --------------------------------------------------

async def test_a_started_response_keeps_its_slot_while_another_client_retries_in_a_loop(server, services, llm):
    llm.hold_at = len(FIRST_PHRASE)  # the LLM pauses between the phrases: the slot would be free meanwhile
    a = await Client.connect(server)
    b = await Client.connect(server)
    await a.send({"type": "session.update", "session": {"higgs": {"responder": "llm"}}})
    await a.until("session.updated")
    await a.send(text_item("Tell me three things."))
    await a.send({"type": "response.create"})
    assert await asyncio.to_thread(llm.holding.wait, 30)
    assert await asyncio.to_thread(wait_until, lambda: services.engine.active_streams == 0, 30) is not None

    refused = 0
    stop = asyncio.Event()

    async def contender() -> str:
        """Client B asks for a reply again and again, as a client at capacity would."""
        nonlocal refused
        while True:
            await b.send(text_item("Me too, please."))
            await b.send({"type": "response.create"})
            done = (await b.until("response.done"))["response"]
            if done["status"] == "completed":
                return "completed"
            assert done["status_details"]["error"]["code"] == "at_capacity", done
            refused += 1
            if stop.is_set():
                return "refused"
            await asyncio.sleep(0.02)

    b_task = asyncio.create_task(contender())
    async with asyncio.timeout(60):
        while refused < 5 and not b_task.done():  # B retries through A's pause ...
            await asyncio.wait({b_task}, timeout=0.05)
    assert not b_task.done(), "client B took the slot of a response that had started"
    llm.hold_at = None
    llm.release()  # ... and A's reply goes on with its next phrases, in the slot it started with
    done = (await a.until("response.done"))["response"]
    assert done["status"] == "completed", done
    assert done["output"][0]["content"][0]["transcript"] == REPLY
    assert refused >= 5
    assert await asyncio.wait_for(b_task, 60) == "completed"  # once A is done, B gets its turn
    await a.close()
    await b.close()


# -- 3. /v1/audio/speech: every mistake a 4xx naming it ------------------------------------------------------

@pytest.mark.parametrize("body,param,needle", [
    ('{"input": "Hi.", "instructions": "%s"}' % ("x" * 60_000), "instructions", "4096"),  # past the context
    ('{"input": "Hi.", "seed": %d}' % 2**64, "seed", "less than or equal"),  # the sampler's seed overflows
    ('{"input": "Hi.", "seed": %d}' % (-2**63 - 1), "seed", "greater than or equal"),
    ('{"input": "Hi.", "seed": %s}' % ("9" * 5000), None, "JSON"),  # past Python's int-digit limit
    ('{"input": "Hi.", "voice": "nobody-we-know"}', "voice", "nobody-we-know"),
    ('{"input": "Hi.", "voices": ["alloy", "nobody-we-know"]}', "voices", "nobody-we-know"),
])
def test_a_bad_speech_request_is_a_4xx_with_an_openai_error_body(server, body, param, needle):
    response = httpx.post(f"{server}/v1/audio/speech", content=body, headers={"content-type": "application/json"},
                          timeout=60)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param, error
    assert needle in error["message"], error
    assert httpx.get(f"{server}/health").status_code == 200


# -- 4-6. wrong types are refused, never coerced; the event limit counts bytes --------------------------------

@pytest.mark.parametrize("event,param", [
    ({"type": "session.update", "session": {"output_modalities": 5}}, "session.output_modalities"),
    ({"type": "session.update", "session": {"output_modalities": True}}, "session.output_modalities"),
    ({"type": "session.update", "session": {"audio": {"input": {"turn_detection": {
        "type": "semantic_vad", "eagerness": []}}}}}, "session.audio.input.turn_detection.eagerness"),
    ({"type": "session.update", "session": {"audio": {"input": {"turn_detection": {
        "type": "semantic_vad", "eagerness": {}}}}}}, "session.audio.input.turn_detection.eagerness"),
    ({"type": "session.update", "session": {"audio": {"input": {"turn_detection": {
        "type": "server_vad", "create_response": "no"}}}}}, "session.audio.input.turn_detection.create_response"),
    ({"type": "session.update", "session": {"audio": {"input": {"turn_detection": {
        "type": "server_vad", "interrupt_response": "false"}}}}},
     "session.audio.input.turn_detection.interrupt_response"),
    ({"type": "conversation.item.truncate", "item_id": "x", "content_index": -1, "audio_end_ms": 0}, "content_index"),
])
async def test_a_wrong_type_is_an_invalid_value_naming_the_field_never_coerced(server, event, param):
    client = await Client.connect(server)
    await client.send(event)
    error = (await client.until("error"))["error"]
    assert (error["code"], error["param"], error["type"]) == ("invalid_value", param, "invalid_request_error"), error
    await client.send({"type": "session.update", "session": {}})
    session = (await client.until("session.updated"))["session"]  # nothing was changed by the bad event
    assert session["output_modalities"] == ["audio"]
    assert session["audio"]["input"]["turn_detection"]["type"] == "server_vad"
    assert session["audio"]["input"]["turn_detection"]["create_response"] is True
    await client.close()


async def test_truncating_a_content_part_that_does_not_exist_is_refused_not_echoed(server):
    client = await Client.connect(server)
    await client.send(text_item("Short one."))
    await client.send({"type": "response.create"})
    item_id = (await client.until("response.done"))["response"]["output"][0]["id"]
    for index in (10**9, 1):
        await client.send({"type": "conversation.item.truncate", "item_id": item_id, "content_index": index,
                           "audio_end_ms": 0})
        error = (await client.until("error"))["error"]
        assert (error["code"], error["param"]) == ("invalid_value", "content_index"), error
    assert "conversation.item.truncated" not in client.types()
    await client.close()


async def test_a_lone_surrogate_is_an_error_event_and_the_session_stays_open(server):
    """`{"type":"\\ud800"}` is valid JSON but not valid Unicode: echoing it back used to fail the send and end
    the session. It is refused with an error, and the session goes on."""
    client = await Client.connect(server)
    for raw in ('{"type":"\\ud800"}', '{"type":"session.update","event_id":"\\udfff","session":{}}',
                '{"type":"conversation.item.create","item":{"type":"message","role":"user","content":'
                '[{"type":"input_text","text":"a\\ud83d"}]}}'):
        await client.socket.send(raw)
        error = (await client.until("error"))["error"]
        assert error["code"] == "invalid_json" and "surrogate" in error["message"], error
    await client.send(text_item("still here"))
    await client.until("conversation.item.done")
    await client.close()


async def test_truncating_a_user_item_says_only_assistant_audio_can_be(server):
    client = await Client.connect(server)
    await client.send({**text_item("my words"), "item": {**text_item("")["item"], "id": "item_mine",
                                                         "content": [{"type": "input_text", "text": "mine"}]}})
    await client.until("conversation.item.done")
    await client.send({"type": "conversation.item.truncate", "item_id": "item_mine", "content_index": 0,
                       "audio_end_ms": 0})
    error = (await client.until("error"))["error"]
    assert error["code"] == "invalid_value" and "only assistant audio" in error["message"], error
    await client.close()


async def test_the_event_limit_counts_bytes_not_characters(server, services):
    client = await Client.connect(server)
    text = "é" * (services.max_event_bytes // 2 + 100_000)  # fewer characters than the limit, more bytes
    assert len(text) < services.max_event_bytes < len(text.encode())
    await client.send({"type": "session.update", "session": {"instructions": text}})
    error = (await client.until("error"))["error"]
    assert error["code"] == "message_too_large" and str(services.max_event_bytes) in error["message"]
    await client.send({"type": "session.update", "session": {"instructions": "é" * 1000}})  # under it: fine
    assert (await client.until("session.updated"))["session"]["instructions"] == "é" * 1000
    await client.close()


# -- 9. the turn queue is bounded ------------------------------------------------------------------------

async def test_commits_faster_than_turns_are_understood_are_refused_past_the_queue(server, services):
    speech, _ = synthesize("one two three", sample_rate=24000)
    chunk = base64.b64encode(float_to_pcm16(speech[:4800])).decode()  # 200 ms of real speech per turn
    client = await Client.connect(server)
    await client.send({"type": "session.update", "session": {"audio": {"input": {"turn_detection": None}}}})
    await client.until("session.updated")
    for _ in range(20):  # far faster than Whisper transcribes them
        await client.send({"type": "input_audio_buffer.append", "audio": chunk})
        await client.send({"type": "input_audio_buffer.commit"})
    await client.send({"type": "session.update", "session": {"instructions": "marker"}})
    await client.until("session.updated", timeout=120)
    errors = [e["error"] for e in client.events if e["type"] == "error"]
    committed = [e for e in client.events if e["type"] == "input_audio_buffer.committed"]
    assert errors and {e["code"] for e in errors} == {"turn_queue_full"}, errors
    assert len(committed) + len(errors) == 20 and len(committed) <= 20 - len(errors)
    transcribed = 0
    while transcribed < len(committed):  # every accepted turn is still understood, in order
        await client.until("conversation.item.input_audio_transcription.completed")
        transcribed += 1
    await client.close()


# -- 10. a barge-in while the reply waits for the caller's voice ---------------------------------------------

async def test_a_barge_in_while_the_reply_encodes_the_callers_voice_cancels_it(server, services, monkeypatch):
    gate = threading.Event()
    encode = services.engine.encode

    async def slow_encode(audio, rate):  # noqa: ANN001 - a busy model thread, made to last
        await asyncio.to_thread(gate.wait, 60)
        return await encode(audio, rate)

    monkeypatch.setattr(services.engine, "encode", slow_encode)
    turn, _ = synthesize("hello, can you tell me the weather forecast for tomorrow", sample_rate=24000)
    client = await Client.connect(server)
    await client.send({"type": "session.update", "session": {"audio": {"output": {"voice": "caller"}}}})
    await client.until("session.updated")
    try:
        await client.send_audio(pad(turn, 24000, lead_ms=300, tail_ms=1200))
        first = (await client.until("response.created"))["response"]["id"]  # it waits for the codes now
        await client.send_audio(pad(turn, 24000, lead_ms=0, tail_ms=200))  # the user talks over it
        await client.until("input_audio_buffer.speech_started")
        done = (await client.until("response.done"))["response"]
    finally:
        gate.set()
    assert done["id"] == first and done["status"] == "cancelled", done
    assert done["status_details"]["reason"] == "turn_detected"
    assert not [e for e in client.events if e["type"] == "response.output_audio.delta" and e["response_id"] == first]
    await client.close()


# -- 11. an HTTP body nobody reads; shutdown ---------------------------------------------------------------

@pytest.fixture(scope="module")
def narrow_server(services):
    """The same server behind a slow network path: 8 KiB socket send buffers (a peer that stops reading
    blocks it after ~2 s of audio, not the ~60 s a loopback connection's buffers hold)."""
    with running_server(services, send_buffer=8192) as base:
        yield base


def talkative_seed(services: AgentServices, text: str) -> tuple[int, int]:
    """A seed with which the tiny random model speaks `text` for long (it says EOS at random), and how many
    frames it then speaks."""
    lengths = {seed: len(services.engine.generate(SpeechPrompt(text), SamplingSettings(seed=seed, max_frames=400)))
               for seed in range(12)}
    seed = max(lengths, key=lengths.get)
    assert lengths[seed] >= 200, lengths
    return seed, lengths[seed]


def test_a_speech_body_nobody_reads_gives_its_slot_back(narrow_server, services, caplog, monkeypatch):
    caplog.set_level("INFO")
    text = "Read this long text aloud, slowly."
    seed, frames = talkative_seed(services, text)
    body = json.dumps({"input": text, "response_format": "pcm", "max_frames": 400, "seed": seed}).encode()
    step = services.engine.scheduler.step
    steps = 0

    def real_pace_step():  # a 5.8 B model on a GPU: ~20 ms a step, not the tiny model's 2 ms
        nonlocal steps
        steps += 1
        time.sleep(0.02)
        return step()

    monkeypatch.setattr(services.engine.scheduler, "step", real_pace_step)
    port = int(narrow_server.rsplit(":", 1)[1])
    with stalled_socket(narrow_server) as sock:  # sends the request, then reads nothing
        sock.sendall(b"POST /v1/audio/speech HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % (port, len(body)) + body)
        assert wait_until(lambda: services.engine.active_streams == 1, 10) is not None
        assert wait_until(lambda: services.engine.active_streams == 0, 60) is not None
        assert steps < frames, (steps, frames)  # cut before the reply's frames were all made
        assert "its reader took nothing for 1 s; cancelled to free its slot" in caplog.text
        response = httpx.post(f"{narrow_server}/v1/audio/speech", timeout=60,
                              json={"input": "Hi.", "response_format": "pcm", "max_frames": 10})
        assert response.status_code == 200 and len(response.content) > 0  # the one slot serves the next


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_serve_shuts_down_mid_reply_closing_sessions_and_the_engine(tiny_dir):
    with running_serve(["--model", str(tiny_dir), "--no-understanding", "--max-frames", "1500"],
                       env={"PYTHONPATH": str(ROOT)}) as serve:
        socket_ = await websockets.connect(ws_url(serve.base), max_size=None)
        await socket_.send(json.dumps(text_item("word " * 300)))
        await socket_.send(json.dumps({"type": "response.create"}))
        while json.loads(await socket_.recv())["type"] != "response.output_audio.delta":
            pass
        serve.process.send_signal(signal.SIGINT)  # Ctrl-C mid-reply
        with pytest.raises(websockets.ConnectionClosed) as closed:
            while True:
                await asyncio.wait_for(socket_.recv(), 20)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1012  # "service restart"
        code = await asyncio.to_thread(serve.process.wait, 30)
        log = serve.log()
    assert code == 130, log  # uvicorn re-raises the Ctrl-C once it has shut down: the shell's 128 + SIGINT
    assert "model worker stopped" in log, log


def _answers(base: str) -> bool:
    try:
        return httpx.get(f"{base}/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
