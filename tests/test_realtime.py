"""The voice agent end to end over a real socket: real speech (espeak-ng), real ASR (Whisper tiny.en), the
tiny Higgs model speaking, the OpenAI Realtime event schema on the wire."""

from __future__ import annotations

import asyncio
import base64
import json
import time

import httpx
import numpy as np
import pytest
import websockets
from agent_server import Client, running_server, ws_url
from higgs_agent.testing.fake_llm import FakeLLM
from speech import normalize_text, pad, synthesize, word_error_rate

from higgs_agent.agent.responders.echo import EchoResponder
from higgs_agent.agent.responders.llm import LLMResponder
from higgs_agent.agent.services import AgentServices
from higgs_agent.agent.speaker import frame_budget
from higgs_agent.audio_formats import PCMU, encode_audio
from higgs_agent.model.prompts import SpeechPrompt, build_inputs
from higgs_agent.model.sampling import SamplingSettings
from higgs_agent.bench.codec_quality import snr_db
from higgs_agent.streaming.codec_stream import whole_decode
from higgs_agent.streaming.engine import StreamingEngine
from higgs_agent.streaming.scheduler import BatchScheduler, run_to_end

pytestmark = pytest.mark.timeout(300)
SENTENCE = "hello, can you tell me the weather forecast for tomorrow"
GREEDY = SamplingSettings(greedy=True, max_frames=200)


@pytest.fixture(scope="module")
def llm():
    with FakeLLM(reply="Sure thing. I booked a table for two at seven tonight, by the window.") as server:
        yield server


@pytest.fixture(scope="module")
def services(bundle, transcriber, llm):
    responders = {"echo": EchoResponder(), "llm": LLMResponder(llm.base_url, model="fake")}
    return AgentServices(engine=StreamingEngine(bundle), transcriber=transcriber, responders=responders,
                         default_responder="echo", sampling=GREEDY)


@pytest.fixture(scope="module")
def server(services):
    with running_server(services) as base:
        yield base


def spoken(text: str, rate: int, lead_ms: int = 300, tail_ms: int = 1200) -> np.ndarray:
    audio, _ = synthesize(text, sample_rate=rate)
    return pad(audio, rate, lead_ms=lead_ms, tail_ms=tail_ms)


def expected_reply(bundle, text: str, voice=None) -> np.ndarray:
    """What the server must stream for `text`: the greedy generation, decoded whole."""
    scheduler = BatchScheduler(bundle, slots=1)
    inputs = build_inputs(bundle.processor, SpeechPrompt(text, voice=voice))
    settings = SamplingSettings(greedy=True, max_frames=frame_budget(text, GREEDY.max_frames))
    frames = [out.frame for out in run_to_end(scheduler, scheduler.start(inputs, settings)) if out.frame is not None]
    return whole_decode(bundle.codec, np.stack([f.numpy() for f in frames], axis=1))


async def test_spoken_turn_gets_transcribed_and_echoed_in_streamed_audio(server, bundle):
    client = await Client.connect(server)
    await client.send_audio(spoken(SENTENCE, 24000))
    done = await client.until("response.done")
    await client.close()
    types = client.types()

    assert done["response"]["status"] == "completed"
    order = ["input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped",
             "input_audio_buffer.committed", "conversation.item.input_audio_transcription.completed",
             "response.created", "response.output_audio.delta", "higgs.turn.latency", "response.done"]
    assert [types.index(kind) for kind in order] == sorted(types.index(kind) for kind in order)
    transcript = next(e for e in client.events if e["type"].endswith("transcription.completed"))
    assert word_error_rate(SENTENCE, transcript["transcript"]) <= 0.25, transcript["transcript"]
    assert transcript["languages"] == [{"code": "en"}]

    said = "".join(e["delta"] for e in client.events if e["type"] == "response.output_audio_transcript.delta")
    assert normalize_text(said) == normalize_text(transcript["transcript"])  # echo says what it heard
    audio = client.reply_audio()
    assert len(audio) > 0 and len(audio) % 960 == 0  # whole 24 kHz codec frames
    expected = expected_reply(bundle, said)
    assert len(audio) == len(expected)
    assert snr_db(expected, audio) >= 40  # streamed, in order, equal to the whole decode

    latency = next(e for e in client.events if e["type"] == "higgs.turn.latency")["latency_ms"]
    stages = [latency[k] for k in ("transcript", "first_text", "first_audio_frame", "first_audio_sent")]
    assert None not in stages and stages == sorted(stages)


async def test_manual_commit_with_mulaw_input(server):
    client = await Client.connect(server)
    await client.send({"type": "session.update", "session": {"type": "realtime", "audio": {"input": {
        "format": {"type": "audio/pcmu"}, "turn_detection": None}}}})
    updated = await client.until("session.updated")
    assert updated["session"]["audio"]["input"]["turn_detection"] is None
    assert updated["session"]["audio"]["input"]["format"] == {"type": "audio/pcmu"}

    mulaw = encode_audio(spoken(SENTENCE, 8000, tail_ms=300), PCMU)
    for start in range(0, len(mulaw), 160):  # 20 ms phone frames
        await client.send({"type": "input_audio_buffer.append",
                           "audio": base64.b64encode(mulaw[start:start + 160]).decode()})
    await client.send({"type": "input_audio_buffer.commit"})
    transcript = await client.until("conversation.item.input_audio_transcription.completed")
    assert word_error_rate(SENTENCE, transcript["transcript"]) <= 0.25, transcript["transcript"]
    assert "input_audio_buffer.speech_started" not in client.types()  # no VAD in manual mode
    assert "response.created" not in client.types()  # manual mode answers on request only

    await client.send({"type": "response.create"})
    done = await client.until("response.done")
    assert done["response"]["status"] == "completed"
    assert len(client.reply_audio()) > 0

    # commit + response.create back to back: the reply waits for that turn's transcript.
    for start in range(0, len(mulaw), 160):
        await client.send({"type": "input_audio_buffer.append",
                           "audio": base64.b64encode(mulaw[start:start + 160]).decode()})
    await client.send({"type": "input_audio_buffer.commit"})
    await client.send({"type": "response.create"})
    done = await client.until("response.done")
    heard = [e for e in client.events if e["type"].endswith("transcription.completed")][-1]["transcript"]
    assert done["response"]["output"][0]["content"][0]["transcript"] == heard
    await client.close()


async def test_text_item_and_16k_input(server):
    client = await Client.connect(server)
    await client.send({"type": "session.update", "session": {"audio": {"input": {
        "format": {"type": "audio/pcm", "rate": 16000}}}}})
    await client.until("session.updated")
    await client.send({"type": "conversation.item.create", "item": {
        "type": "message", "role": "user", "content": [{"type": "input_text", "text": "Good morning."}]}})
    added = await client.until("conversation.item.added")
    assert added["item"]["content"][0]["text"] == "Good morning."
    await client.send({"type": "response.create"})
    done = await client.until("response.done")
    assert done["response"]["output"][0]["content"][0]["transcript"] == "Good morning."

    await client.send_audio(spoken(SENTENCE, 16000), rate=16000)
    transcript = await client.until("conversation.item.input_audio_transcription.completed")
    assert word_error_rate(SENTENCE, transcript["transcript"]) <= 0.25, transcript["transcript"]
    await client.until("response.done")
    await client.close()


async def test_llm_reply_streams_by_phrase_and_barge_in_truncates_and_cancels(server, services, llm):
    llm.hold_at = len("Sure thing. I booked")  # the LLM stalls mid-reply: the response stays in progress
    client = await Client.connect(server)
    await client.send({"type": "session.update", "session": {"responder": "llm", "instructions": "Be brief."}})
    await client.until("session.updated")
    await client.send_audio(spoken(SENTENCE, 24000))
    first_audio = await client.until("response.output_audio.delta")
    response_id = first_audio["response_id"]
    assert not llm.completed.is_set()  # speech started before the LLM finished: phrase-level start

    sent = llm.requests[-1]["messages"]
    assert sent[0] == {"role": "system", "content": "Be brief."}
    assert sent[-1]["role"] == "user" and word_error_rate(SENTENCE, sent[-1]["content"]) <= 0.25

    await client.send_audio(spoken("wait, stop", 24000, lead_ms=0, tail_ms=0))  # the user talks over it
    done = await client.until("response.done")
    assert done["response"]["id"] == response_id
    assert done["response"]["status"] == "cancelled"
    assert done["response"]["status_details"]["reason"] == "turn_detected"
    types = client.types()
    assert types.index("input_audio_buffer.speech_started", types.index("response.output_audio.delta")) < \
        types.index("response.done")
    truncated = next(e for e in client.events if e["type"] == "conversation.item.truncated")
    sent_ms = len(client.reply_audio(response_id)) / 24.0
    assert 0 <= truncated["audio_end_ms"] <= sent_ms + 1
    heard = done["response"]["output"][0]["content"][0]["transcript"]
    assert "Sure thing.".startswith(heard) or heard == ""  # only words that were played
    assert done["response"]["output"][0]["status"] == "incomplete"
    assert await asyncio.to_thread(llm.disconnected.wait, 10)  # the LLM request was dropped, not left streaming
    llm.hold_at = None
    llm.release()

    # The client's own playback position wins over the server's estimate.
    item_id = done["response"]["output"][0]["id"]
    await client.send({"type": "conversation.item.truncate", "item_id": item_id, "content_index": 0,
                       "audio_end_ms": 0})
    assert (await client.until("conversation.item.truncated"))["audio_end_ms"] == 0

    # The interrupting turn is answered next.
    await client.send_audio(np.zeros(24000, dtype=np.float32))
    nxt = await client.until("response.done")
    assert nxt["response"]["id"] != response_id and nxt["response"]["status"] == "completed"
    await client.close()


async def test_bad_input_gets_error_events_and_the_session_goes_on(server, services):
    client = await Client.connect(server)

    async def error_for(message: str | bytes) -> dict:
        await client.socket.send(message)
        return (await client.until("error"))["error"]

    assert (await error_for("{not json"))["code"] == "invalid_json"
    assert (await error_for(json.dumps({"type": "no.such.event"})))["code"] == "unknown_event"
    assert (await error_for(json.dumps([1, 2])))["code"] == "invalid_event"
    bad = await error_for(json.dumps({"type": "input_audio_buffer.append", "audio": "***", "event_id": "e1"}))
    assert (bad["code"], bad["event_id"]) == ("invalid_base64", "e1")
    odd = base64.b64encode(b"\x00\x01\x02").decode()
    assert (await error_for(json.dumps({"type": "input_audio_buffer.append", "audio": odd})))["code"] == "invalid_audio"
    huge = json.dumps({"type": "input_audio_buffer.append", "audio": "A" * (services.max_event_bytes + 10)})
    assert (await error_for(huge))["code"] == "message_too_large"
    assert (await error_for(b"\x00binary"))["code"] == "invalid_event"
    fmt = await error_for(json.dumps({"type": "session.update", "session": {"audio": {"input": {
        "format": {"type": "audio/pcm", "rate": 44100}}}}}))
    assert fmt["code"] == "invalid_value" and "rate" in fmt["message"]
    assert (await error_for(json.dumps({"type": "input_audio_buffer.commit"})))["code"] == \
        "input_audio_buffer_commit_empty"
    assert (await error_for(json.dumps({"type": "response.cancel"})))["code"] == "response_cancel_not_active"
    assert (await error_for(json.dumps({"type": "conversation.item.truncate", "item_id": "nope",
                                        "content_index": 0, "audio_end_ms": 5})))["code"] == "item_not_found"
    responder = await error_for(json.dumps({"type": "session.update", "session": {"higgs": {"responder": "magic"}}}))
    assert responder["param"] == "session.higgs.responder"

    await client.send({"type": "session.update", "session": {"instructions": "still here"}})
    assert (await client.until("session.updated"))["session"]["instructions"] == "still here"
    await client.close()


async def test_disconnect_mid_response_frees_the_engine_at_once(server, services, llm):
    llm.hold_at = len("Sure thing. I booked")
    client = await Client.connect(server)
    await client.send({"type": "session.update", "session": {"responder": "llm"}})
    await client.until("session.updated")
    await client.send({"type": "conversation.item.create", "item": {
        "type": "message", "role": "user", "content": [{"type": "input_text", "text": "Book a table."}]}})
    await client.send({"type": "response.create"})
    await client.until("response.output_audio.delta")
    client.socket.transport.abort()  # vanish without a close handshake
    assert await asyncio.to_thread(llm.disconnected.wait, 10)  # (the loop must run to close the socket)
    deadline = time.monotonic() + 10
    while (services.metrics.sessions_active._value.get() > 0 or services.engine.active_streams) \
            and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert services.metrics.sessions_active._value.get() == 0
    assert services.engine.active_streams == 0
    llm.hold_at = None
    llm.release()


async def test_metrics_and_health(server):
    health = httpx.get(f"{server}/health").json()
    assert health["status"] == "ok" and "echo" in health["responders"]
    metrics = httpx.get(f"{server}/metrics").text
    assert 'higgs_turn_latency_seconds_count{stage="first_audio_sent"}' in metrics
    assert "higgs_sessions_active" in metrics


async def test_api_key_is_required_everywhere(services):
    with running_server(services, api_key="sesame") as base:
        assert httpx.get(f"{base}/health").json() == {"status": "ok"}  # liveness for anyone, nothing more
        assert httpx.get(f"{base}/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert httpx.post(f"{base}/v1/audio/speech", json={"input": "hi"}).status_code == 401
        details = httpx.get(f"{base}/health", headers={"Authorization": "Bearer sesame"}).json()
        assert details["status"] == "ok" and "echo" in details["responders"]
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            with pytest.raises(websockets.InvalidStatus):
                await websockets.connect(ws_url(base), additional_headers=headers)
        ok = await Client.connect(base, additional_headers={"Authorization": "Bearer sesame"})
        await ok.close()
        browser = await websockets.connect(ws_url(base, "api_key=sesame"))
        assert json.loads(await browser.recv())["type"] == "session.created"
        await browser.close()
        sdk = await websockets.connect(ws_url(base), subprotocols=["realtime", "openai-insecure-api-key.sesame"])
        assert sdk.subprotocol == "realtime"
        await sdk.close()
        # A browser offering only its key must get one of its subprotocols back, or it drops the socket.
        key_only = await websockets.connect(ws_url(base), subprotocols=["openai-insecure-api-key.sesame"])
        assert key_only.subprotocol == "openai-insecure-api-key.sesame"
        await key_only.close()



async def test_caller_voice_replies_in_the_voice_of_the_users_turn(server, bundle):
    """voice "caller": the caller's speech at its wire rate (24 kHz here, no 16 kHz round trip), encoded by the
    codec, is the voice reference of the reply."""
    from higgs_agent.model.prompts import VoiceReference, encode_voice
    from higgs_agent.voices.caller_voice import CallerVoice

    client = await Client.connect(server)
    await client.send({"type": "session.update", "session": {"audio": {
        "input": {"turn_detection": None}, "output": {"voice": "caller"}}}})
    await client.until("session.updated")
    audio = spoken(SENTENCE, 24000, tail_ms=200)
    await client.send_audio(audio)
    await client.send({"type": "input_audio_buffer.commit"})
    transcript = (await client.until("conversation.item.input_audio_transcription.completed"))["transcript"]
    await client.send({"type": "response.create"})
    done = await client.until("response.done")
    await client.close()
    assert done["response"]["status"] == "completed"

    gathered = CallerVoice()
    gathered.add_turn(audio, 24000, transcript)  # the speech of the turn, at 24 kHz
    clip = gathered.take_due_clip()
    assert clip is not None and clip.rate == 24000
    voice = VoiceReference(encode_voice(bundle.processor, clip.audio, 24000, "").codes, clip.transcript)
    expected = expected_reply(bundle, transcript, voice)
    received = client.reply_audio()
    assert len(received) == len(expected)
    assert snr_db(expected, received) >= 40


async def test_native_responder_hears_the_turn_and_speaks_its_own_text(text_bundle, transcriber):
    """native (experimental): the Higgs text head writes the reply from the user's audio codes + words,
    then the same model speaks it. Random weights write gibberish; the mechanics are what is tested."""
    from higgs_agent.agent.responders.native import NativeResponder

    engine = StreamingEngine(text_bundle)
    native = NativeResponder(text_bundle, max_new_tokens=24, greedy=True, min_chars=4, max_chars=40, run=engine.run)
    services = AgentServices(engine=engine, transcriber=transcriber,
                             responders={"echo": EchoResponder(), "native": native}, default_responder="native",
                             sampling=GREEDY)
    with running_server(services) as base:
        client = await Client.connect(base)
        audio = spoken(SENTENCE, 24000)
        await client.send_audio(audio)
        done = await client.until("response.done")
        await client.close()
    assert done["response"]["status"] == "completed"
    said = "".join(e["delta"] for e in client.events if e["type"] == "response.output_audio_transcript.delta")
    assert said.strip() and len(client.reply_audio()) > 0
    heard_frames = native.last_generation.inputs.prompt_frames  # the user's turn, as codec rows in the prompt
    turn_s = next(e for e in client.events if e["type"] == "input_audio_buffer.speech_stopped")["audio_end_ms"] / 1000
    assert heard_frames >= 0.8 * 25 * (turn_s - 0.3)  # 25 frames/s of the turn (minus the lead silence)


async def test_talk_command_against_the_real_server(server, tmp_path):
    """`higgs-agent talk`: a WAV in, transcripts and latencies printed, the reply saved as a 24 kHz WAV."""
    import subprocess
    import sys

    import soundfile as sf

    from higgs_agent.audio import write_wav

    question, reply = tmp_path / "question.wav", tmp_path / "reply.wav"
    write_wav(question, spoken(SENTENCE, 24000, tail_ms=0), 24000)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "higgs_agent", "talk", "--url", ws_url(server), "--wav", str(question),
        "-o", str(reply), "--fast", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err.decode()
    lines = dict(line.split(": ", 1) for line in out.decode().splitlines() if ": " in line)
    assert word_error_rate(SENTENCE, lines["user"]) <= 0.25
    assert "first_audio_sent" in lines["latency"]
    audio, rate = sf.read(reply)
    assert rate == 24000 and len(audio) > 0


def test_serve_refuses_an_llm_responder_without_an_endpoint(tiny_dir):
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "higgs_agent", "serve", "--model", str(tiny_dir),
                             "--responder", "llm"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "--llm-url" in result.stderr
