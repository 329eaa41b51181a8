"""Transcription sessions (live captions, no replies), OpenAI's GA way: `/v1/realtime?intent=transcription` and
`session.type: "transcription"`, through the official `openai` SDK as its documentation shows, over WebRTC with
a client secret minted for a transcription session, and the web page's captions mode in real Chromium; real
espeak-ng speech, Whisper tiny.en hearing it. A captions session never makes a response: the engine and the
responder are never asked, and it goes on while every engine slot is held by others. Bad input gets an `error`
event naming what is wrong, and the session goes on."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import numpy as np
import pytest
import websockets
from agent_server import echo_services, running_server, ws_url
from browser import CHROMIUM, ChatPage, artifacts_folder, chromium, write_fake_microphone
from openai import AsyncOpenAI
from speech import silence, synthesize, word_error_rate
from third_party import paced_chunks, server_event_shape_errors, spoken_pcm16

from higgs_agent.testing.webrtc_caller import RATE as CALL_RATE
from higgs_agent.testing.webrtc_caller import Caller

pytestmark = pytest.mark.timeout(240)

SENTENCE = "please read me the news about the weather, the traffic and the football scores"
RATE = 24_000
COMPLETED = "conversation.item.input_audio_transcription.completed"
DELTA = "conversation.item.input_audio_transcription.delta"
# every way a session could ask the engine for work (the SpeechEngine protocol's, and the local engine's own)
ENGINE_CALLS = ("lease", "admit", "stream", "voice", "count_tokens", "encode", "run")


@pytest.fixture(scope="module")
def services(bundle, transcriber):
    services = echo_services(bundle, transcriber, max_frames=25)
    yield services
    services.engine.close()


@pytest.fixture(scope="module")
def server(services):
    with running_server(services) as base:
        yield base


@pytest.fixture
def engine_asked(services) -> Iterator[list[str]]:
    """What the engine and the responder were asked for while the test runs (their methods' names; spies on the
    instances)."""
    asked: list[str] = []
    spied = [(services.engine, name) for name in ENGINE_CALLS] + [(services.responder("echo"), "reply")]
    for target, name in spied:
        original = getattr(target, name)

        def spy(*args: Any, _name: str = name, _original: Any = original, **kwargs: Any) -> Any:  # noqa: ANN401
            asked.append(_name)
            return _original(*args, **kwargs)

        setattr(target, name, spy)
    yield asked
    for target, name in spied:
        delattr(target, name)


@pytest.fixture(scope="module")
def speech() -> bytes:
    return spoken_pcm16(SENTENCE, RATE)


def assert_heard(transcript: str, text: str = SENTENCE) -> None:
    assert word_error_rate(text, transcript) <= 0.25, f"heard {transcript!r} for {text!r}"


def busy(base: str) -> tuple[int, int]:
    health = httpx.get(f"{base}/health").json()
    return health["busy_slots"], health["leases"]


# --- 1. the official openai SDK, as its documentation shows a transcription session ----------------------------


async def test_the_openai_sdk_gets_live_captions_and_no_response(server, speech, engine_asked):
    async with AsyncOpenAI(base_url=f"{server}/v1", api_key="sk-captions") as client:
        async with client.realtime.connect(extra_query={"intent": "transcription"}) as connection:
            await connection.session.update(session={"type": "transcription", "audio": {"input": {
                "format": {"type": "audio/pcm", "rate": RATE},
                "transcription": {"model": "gpt-4o-transcribe", "language": "en"},
                "turn_detection": {"type": "server_vad", "silence_duration_ms": 500},
                "noise_reduction": {"type": "near_field"}}}})

            async def stream() -> None:
                async for chunk in paced_chunks(speech, RATE):
                    await connection.input_audio_buffer.append(audio=base64.b64encode(chunk).decode())

            sending = asyncio.create_task(stream())
            events: list[Any] = []
            slots_while_speaking = None
            async def until_completed() -> None:
                nonlocal slots_while_speaking
                async for event in connection:
                    events.append(event)
                    if event.type == "input_audio_buffer.speech_stopped":
                        slots_while_speaking = busy(server)
                    if event.type == COMPLETED:
                        return

            await asyncio.wait_for(until_completed(), 120)
            await sending
            # A round trip after the transcript: a voice session would have created its reply (and asked the
            # responder) by the time this is answered, so what the checks below look for would be here.
            await connection.input_audio_buffer.clear()

            async def until_cleared() -> None:
                async for event in connection:
                    events.append(event)
                    if event.type == "input_audio_buffer.cleared":
                        return

            await asyncio.wait_for(until_cleared(), 60)
            slots_after = busy(server)

    kinds = [event.type for event in events]
    assert "error" not in kinds, [e for e in events if e.type == "error"]
    created, updated = events[0], next(e for e in events if e.type == "session.updated")
    assert created.type == "session.created"
    for session in (created.session, updated.session):  # the SDK parsed them as its transcription session
        assert type(session).__name__ == "RealtimeTranscriptionSessionCreateRequest", session
        assert session.type == "transcription" and session.model_extra["object"] == "realtime.transcription_session"
    assert updated.session.audio.input.format.rate == RATE
    assert updated.session.audio.input.turn_detection.type == "server_vad"
    assert updated.session.audio.input.turn_detection.silence_duration_ms == 500
    assert updated.session.audio.input.transcription.language == "en"
    assert updated.session.audio.input.noise_reduction.type == "near_field"

    # The same events as a voice session's turn, and the words right; deltas (live, while the words come) after
    # the speech started and before the completed transcript.
    order = ["input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped",
             "input_audio_buffer.committed", COMPLETED]
    assert [kinds.index(kind) for kind in order] == sorted(kinds.index(kind) for kind in order), kinds
    completed = next(e for e in events if e.type == COMPLETED)
    assert_heard(completed.transcript)
    deltas = [e for e in events if e.type == DELTA]
    assert deltas and kinds.index(DELTA) > kinds.index("input_audio_buffer.speech_started")
    assert {e.item_id for e in deltas} == {completed.item_id} and "".join(e.delta for e in deltas).strip()

    # Never a response: no response event, the engine and the responder never asked, no slot busy.
    assert not [kind for kind in kinds if kind.startswith("response.")]
    assert engine_asked == []
    assert slots_while_speaking == slots_after == (0, 0)

    # (The spies do see a voice session's response: the same server, a typed turn.)
    async with websockets.connect(ws_url(server)) as socket:
        await socket.send(json.dumps({"type": "conversation.item.create", "item": {
            "type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hello there."}]}}))
        await socket.send(json.dumps({"type": "response.create"}))
        while json.loads(await asyncio.wait_for(socket.recv(), 120))["type"] != "response.done":
            pass
    assert "stream" in engine_asked and engine_asked.count("reply") == 1


# --- 2. WebRTC: a client secret minted for a transcription session, while every engine slot is held ------------


async def test_a_webrtc_call_with_a_transcription_client_secret_gets_captions_on_the_data_channel(
        server, services, engine_asked):
    async with AsyncOpenAI(base_url=f"{server}/v1", api_key="sk-captions") as sdk:
        secret = await sdk.realtime.client_secrets.create(session={
            "type": "transcription", "audio": {"input": {"turn_detection": {"type": "semantic_vad"}}}})
    assert secret.value.startswith("ek_") and secret.session.type == "transcription"
    audio, _ = synthesize(SENTENCE, sample_rate=CALL_RATE)
    async with contextlib.AsyncExitStack() as held:
        for n in range(services.engine.slots):  # a voice call would be refused now (503): captions are not
            await held.enter_async_context(services.engine.lease(f"another caller {n}"))
        engine_asked.clear()
        async with calling(server, secret.value) as caller:
            session = caller.events[0][1]["session"]
            assert session["type"] == "transcription" and session["object"] == "realtime.transcription_session"
            assert session["audio"]["input"]["turn_detection"]["type"] == "semantic_vad"
            caller.microphone.say(np.concatenate([silence(300, CALL_RATE), audio, silence(2500, CALL_RATE)]),
                                  CALL_RATE)
            completed = await caller.until(COMPLETED, timeout=120)
            caller.send({"type": "response.create"})
            refused = await caller.until("error", timeout=30)
    assert_heard(completed["transcript"])
    assert any(e["type"] == DELTA and e["item_id"] == completed["item_id"] for _, e in caller.events)
    assert refused["error"]["code"] == "invalid_request_error"
    assert "transcription session" in refused["error"]["message"]
    assert engine_asked == []
    assert not [t for t in caller.types() if t.startswith("response.") or t.startswith("output_audio_buffer.")]
    shapes = sorted({problem for _, event in caller.events for problem in server_event_shape_errors(event)})
    assert not shapes, shapes


@contextlib.asynccontextmanager
async def calling(base: str, key: str | None = None) -> AsyncIterator[Caller]:
    caller = await Caller.call(base, key)
    try:
        yield caller
    finally:
        await caller.hang_up()


# --- 3. bad input: an error event that says what is wrong, and the session goes on ------------------------------


class Socket:
    def __init__(self, socket: websockets.ClientConnection) -> None:
        self.socket = socket

    async def send(self, event: dict[str, Any]) -> dict[str, Any]:
        """Send one event; the next error or session.updated the server answers with."""
        await self.socket.send(json.dumps(event))
        while True:
            answer = json.loads(await asyncio.wait_for(self.socket.recv(), 30))
            if answer["type"] in ("error", "session.updated"):
                return answer


@contextlib.asynccontextmanager
async def transcription_socket(base: str, query: str = "intent=transcription") -> AsyncIterator[tuple[Socket, dict]]:
    async with websockets.connect(ws_url(base, query)) as socket:
        created = json.loads(await socket.recv())
        yield Socket(socket), created


async def test_bad_input_in_a_transcription_session_gets_clear_errors(server):
    async with transcription_socket(server) as (socket, created):
        assert created["session"]["type"] == "transcription" and server_event_shape_errors(created) == []

        error = (await socket.send({"type": "response.create"}))["error"]
        assert error["code"] == "invalid_request_error" and "never responds" in error["message"]
        error = (await socket.send({"type": "session.update", "session": {
            "type": "transcription", "instructions": "Be brief.", "audio": {"output": {"voice": "marin"}}}}))["error"]
        assert error["param"] == "session.instructions" and "session.audio.output" in error["message"]
        assert "not part of a transcription session" in error["message"]
        error = (await socket.send({"type": "session.update", "session": {"type": "realtime"}}))["error"]
        assert error["param"] == "session.type" and "cannot change" in error["message"]
        error = (await socket.send({"type": "session.update", "session": {"type": "captions"}}))["error"]
        assert error["code"] == "invalid_value" and error["param"] == "session.type"
        error = (await socket.send({"type": "session.update", "session": {"include": ["everything"]}}))["error"]
        assert error["param"] == "session.include"

        # Nothing of those was applied; a good update still is, and shows what is in force.
        updated = await socket.send({"type": "session.update", "session": {"type": "transcription", "audio": {
            "input": {"turn_detection": None, "transcription": {"prompt": "weather"}}}}})
        assert updated["type"] == "session.updated" and server_event_shape_errors(updated) == []
        assert updated["session"]["audio"]["input"]["turn_detection"] is None
        assert updated["session"]["audio"]["input"]["transcription"]["prompt"] == "weather"
        assert "instructions" not in updated["session"] and "output" not in updated["session"]["audio"]

    # A voice session cannot become a transcription session either; an unknown intent is named.
    async with transcription_socket(server, query="") as (socket, created):
        assert created["session"]["type"] == "realtime"
        error = (await socket.send({"type": "session.update", "session": {"type": "transcription"}}))["error"]
        assert error["param"] == "session.type" and "intent=transcription" in error["message"]
    async with websockets.connect(ws_url(server, "intent=dictation")) as raw:
        created, error = json.loads(await raw.recv()), json.loads(await raw.recv())
        assert created["session"]["type"] == "realtime" and error["error"]["param"] == "intent"
    async with httpx.AsyncClient() as http:
        refused = await http.post(f"{server}/v1/realtime/calls?intent=dictation", content="v=0",
                                  headers={"Content-Type": "application/sdp"})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "intent"


async def test_manual_commits_are_transcribed_and_clear_drops_the_buffer(server, utterance):
    text, audio16 = utterance
    async with websockets.connect(ws_url(server, "intent=transcription")) as socket:
        async def send(event: dict[str, Any]) -> None:
            await socket.send(json.dumps(event))

        async def until(kind: str) -> dict[str, Any]:
            while (event := json.loads(await asyncio.wait_for(socket.recv(), 120)))["type"] != kind:
                assert event["type"] != "error", event
            return event

        await until("session.created")
        await send({"type": "session.update", "session": {"type": "transcription", "audio": {"input": {
            "format": {"type": "audio/pcm", "rate": 16_000}, "turn_detection": None}}}})
        await until("session.updated")
        pcm = (np.clip(audio16, -1, 1) * 32767).astype("<i2").tobytes()
        await send({"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm[:32000]).decode()})
        await send({"type": "input_audio_buffer.clear"})
        await until("input_audio_buffer.cleared")
        await send({"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm).decode()})
        await send({"type": "input_audio_buffer.commit"})
        committed = await until("input_audio_buffer.committed")
        completed = await until(COMPLETED)
    assert completed["item_id"] == committed["item_id"]
    assert_heard(completed["transcript"], text)


# --- 4. the web page's captions mode, in real Chromium ----------------------------------------------------------


@pytest.mark.parametrize("transport", ["websocket", "webrtc"])
async def test_the_web_pages_captions_mode_shows_the_words_live(transport, server, tmp_path, engine_asked):
    if CHROMIUM is None:
        pytest.fail("chromium is not installed: run scripts/install.sh --test as root (apt-get install chromium)")
    spoken, _ = synthesize(SENTENCE, sample_rate=16_000)
    microphone = write_fake_microphone(tmp_path / "captions.wav", np.concatenate(
        [silence(1500, 16_000), spoken, silence(4000, 16_000)]), 16_000)
    async with chromium(microphone) as browser:
        chat = await ChatPage.open(browser, server, transport=transport)
        await chat.page.select_option("#mode", "captions")
        assert await chat.page.locator("#voice").is_hidden()  # a voice session's settings are not shown
        await chat.talk()
        await chat.wait_for("voiceChat.stats.sessionType === 'transcription'", timeout_s=30)
        await chat.wait_for("[...document.querySelectorAll('.turn.user')].some((t) => "
                            "!t.classList.contains('pending'))", timeout_s=90)
        captions = await chat.texts(".turn.user .text")
        stats = await chat.stats()
        print("screenshot:", await chat.screenshot(artifacts_folder(tmp_path), f"captions-{transport}"))
        await chat.talk()  # stop
    print(f"\n{transport}: captions {captions}")
    assert len(captions) == 1, (captions, chat.log())
    assert_heard(captions[0])
    assert stats["transport"] == transport and stats["responses"] == [] and stats["errors"] == []
    assert stats["deltas"] >= 1  # the words shown as they came, before the turn's final transcript
    assert engine_asked == []
