"""Phone calls end to end, the same tests for each carrier (Twilio Media Streams, Telnyx media streaming): the
carrier's side simulated exactly (testing/phone_simulator.py) against the real agent server on a loopback port.

Each call rings the voice webhook signed as the carrier signs it (the `twilio` library; Ed25519 for Telnyx),
opens the media WebSocket at the URL the TwiML/TeXML names (with Twilio's upgrade signature), and talks in real
espeak-ng speech, coded to 8 kHz mu-law and sent in 20 ms `media` messages at real time; the agent hears it
through the real webrtcvad and Whisper tiny.en and answers with the tiny Higgs model. The simulated phone plays the agent's frames by its own clock, echoes each
mark once the audio before it has played, and on `clear` drops what it holds and echoes pending marks at
once, as both carriers document.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import json
import logging
import time
import warnings
import weakref
from dataclasses import replace
from xml.etree import ElementTree

import numpy as np
import pytest
import websockets
from speech import synthesize, word_error_rate
from starlette.applications import Starlette
from starlette.routing import Mount
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from higgs_agent import SAMPLE_RATE
from higgs_agent.agent.conversation import heard_text
from higgs_agent.agent.responders.echo import EchoResponder
from higgs_agent.agent.responders.llm import LLMResponder
from higgs_agent.agent.services import AgentServices
from higgs_agent.audio import resample
from higgs_agent.logs import session_id
from higgs_agent.model.sampling import SamplingSettings
from higgs_agent.server import serve_app_in_background
from higgs_agent.bench.codec_quality import snr_db
from higgs_agent.streaming.engine import StreamingEngine
from higgs_agent.testing.fake_llm import FakeLLM
from higgs_agent.transport.app import create_agent_app
from higgs_agent.transport.phone.call import CallLog, CallSettings
from higgs_agent.transport.phone.routes import PhoneLine
from higgs_agent.testing.phone_simulator import FRAME_BYTES, SimulatedCall
from higgs_agent.transport.phone.telnyx import TelnyxSettings
from higgs_agent.transport.phone.twiml import LineSettings, TwilioSettings

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop  # an independent G.711 decoder for what the phone receives

pytestmark = pytest.mark.timeout(120)
AUTH_TOKEN = "12345678901234567890123456789012"
TELNYX_KEY = Ed25519PrivateKey.generate()
TELNYX_PUBLIC_KEY = base64.b64encode(TELNYX_KEY.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()
PUBLIC_URL = "https://agent.example.com"
SENTENCE = "my name is john and I am calling about my order"  # clean through 8 kHz mu-law + Whisper tiny.en
GREETING = "Hi there."
LLM_REPLY = ("Sure thing. I booked a table for two at seven tonight, by the window. You will get a text with "
             "the details in a minute. Is there anything else I can do for you today?")
FRAME_MS = 20
TOLERANCE_S = 0.1  # scheduling jitter of two event loops on a loaded 2-core machine


@pytest.fixture(scope="module")
def llm():
    with FakeLLM(reply=LLM_REPLY) as server:
        yield server


@pytest.fixture(scope="module")
def services(bundle, transcriber, llm):
    responders = {"echo": EchoResponder(), "llm": LLMResponder(llm.base_url, model="fake")}
    services = AgentServices(engine=StreamingEngine(bundle, slots=2), transcriber=transcriber,
                             responders=responders, default_responder="echo",
                             sampling=SamplingSettings(greedy=True, max_frames=75))
    yield services
    services.engine.close()


def line_settings(carrier: str, **options) -> LineSettings:  # noqa: ANN003
    if carrier == "telnyx":
        return TelnyxSettings(public_url=PUBLIC_URL, public_key=TELNYX_PUBLIC_KEY, **options)
    return TwilioSettings(public_url=PUBLIC_URL, auth_token=AUTH_TOKEN, **options)


def simulated(base: str, line: PhoneLine) -> SimulatedCall:
    return SimulatedCall(base, line.line, telnyx_key=TELNYX_KEY)


@pytest.fixture(scope="module", params=["twilio", "telnyx"])
def carrier(request) -> str:  # noqa: ANN001
    return request.param


@pytest.fixture(scope="module")
def echo_line(services, carrier):
    """A number whose agent greets and echoes what it hears."""
    return PhoneLine(services, line_settings(carrier, parameters={"line": "support"}), CallSettings(greeting=GREETING))


@pytest.fixture(scope="module")
def llm_line(services, carrier):
    """A number whose agent answers from an LLM (the local fake), without a greeting."""
    settings = line_settings(carrier, voice_path="/llm/voice", media_path="/llm/media")
    return PhoneLine(replace(services, default_responder="llm"), settings)


@pytest.fixture(scope="module")
def server(services, echo_line, llm_line):
    """Both numbers' routes in front of the whole agent app, on a real socket, as `serve` runs them."""
    app = Starlette(routes=[*echo_line.routes(), *llm_line.routes(), Mount("/", app=create_agent_app(services))])
    with serve_app_in_background(app) as base:
        yield base


def speech(text: str) -> np.ndarray:
    audio, _ = synthesize(text, sample_rate=16_000)
    return audio


def call_log(line: PhoneLine, call: SimulatedCall) -> CallLog:
    return next(log for log in line.finished if log.call_sid == call.call_sid)


async def until(condition, timeout: float = 10.0) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def until_played(call: SimulatedCall, since: float, ms: int) -> None:
    await until(lambda: call.played_ms(call.frames_since(since), time.monotonic()) >= ms, timeout=30)


def reply_of(mark_name: str) -> str:
    return mark_name.rpartition(".")[0]  # the phone output names marks "<reply item>.<n>"


def mark_positions_ms(call: SimulatedCall, reply_id: str) -> dict[str, int]:
    """Each of a reply's marks -> how much of the reply the phone had received before it."""
    marks = [m for m in call.marks if reply_of(m.name) == reply_id]
    first_frame = max((m.frames_before for m in call.marks if m.arrived < marks[0].arrived
                       and reply_of(m.name) != reply_id), default=0)
    return {m.name: (m.frames_before - first_frame) * FRAME_MS for m in marks}


class StampCall(logging.Filter):
    """Notes the call a log line was written for (the `session_id` context variable), as the log format does."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.call_sid = session_id.get()
        return True


async def test_a_call_is_greeted_heard_answered_in_paced_frames_and_takes_keypad_digits(
        server, services, echo_line, carrier, caplog):
    caplog.set_level(logging.INFO, logger="higgs_agent")
    caplog.handler.addFilter(StampCall())
    sessions_before = services.metrics.sessions_active._value.get()
    call = simulated(server, echo_line)
    await call.dial()
    assert call.stream_url.startswith(f"wss://agent.example.com/{carrier}/media/")
    assert call.parameters == {"line": "support", "From": "+14155550100", "To": "+14155550199"}

    greeting = await call.wait_frames(1)
    active = echo_line.active[call.call_sid]
    await call.wait_quiet()
    greeting_ms = (greeting[0].arrived - call.started_at) * 1000

    # Messages the carrier would never send: each is logged and skipped, and the call goes on.
    malformed = ["{not json", json.dumps(call.event("telepathy")),
                 json.dumps(call.event("media", media={"payload": "***"})),
                 json.dumps(call.event("media", stream="someone-else",
                                       media={"payload": base64.b64encode(b"\xff" * FRAME_BYTES).decode()})),
                 json.dumps(call.event("dtmf", dtmf={"digit": "Z"})),
                 json.dumps({"event": "start"}), b"\x00\x01 binary"]
    for message in malformed:
        await call.send(message)

    speech_end = await call.say(speech(SENTENCE), 16_000)
    await call.wait_frames(1, since=speech_end, timeout=60)
    await call.wait_quiet()
    reply = call.frames_since(speech_end)

    await call.press("4")
    pressed = time.monotonic()
    await call.wait_frames(1, since=pressed, timeout=60)
    await call.wait_quiet()
    await call.hang_up()
    await until(lambda: any(log.call_sid == call.call_sid for log in echo_line.finished))
    record = call_log(echo_line, call)

    # The greeting came first, as soon as the call started (measured from `start` to the first frame).
    agent = [line for line in record.lines if line.speaker == "agent"]
    assert agent[0].text == GREETING and record.first_frame_ms is not None and greeting_ms > 0
    # What the caller said, transcribed.
    heard = [line.text for line in record.lines if line.speaker == "caller"]
    assert len(heard) == 1 and word_error_rate(SENTENCE, heard[0]) <= 0.25, heard
    assert record.skipped_messages == len(malformed)
    # The echo, in whole 160-byte mu-law frames that decode to sound, and nothing the carrier would reject.
    assert call.violations == []
    assert len(reply) >= 25 and all(len(frame.payload) == FRAME_BYTES for frame in reply)
    pcm = np.frombuffer(audioop.ulaw2lin(b"".join(f.payload for f in reply), 2), dtype="<i2") / 32768.0
    assert np.sqrt(np.mean(pcm ** 2)) > 0.01
    # Paced at real time: never more than the lead ahead of the phone's playout, and as long as its audio.
    lead_s = echo_line.settings.lead_ms / 1000
    start = reply[0].arrived
    assert all(frame.arrived - start >= k * FRAME_MS / 1000 - lead_s - TOLERANCE_S for k, frame in enumerate(reply))
    media_s = len(reply) * FRAME_MS / 1000
    assert media_s - lead_s - TOLERANCE_S <= reply[-1].arrived - start <= media_s + 1.5
    # Marks: about every mark_interval_ms of audio (finer than the engine's chunks, up to 1.6 s; the resampler
    # holds a few frames back now and then), each echoed once played, and the agent took the echoes as what
    # the caller heard: all of the reply.
    echo_item = agent[1].item_id
    positions = sorted(mark_positions_ms(call, echo_item).values())
    assert max(np.diff([0, *positions])) <= echo_line.settings.mark_interval_ms + 100
    assert all(m.echoed_at is not None and not m.flushed for m in call.marks)
    assert active.output.heard_ms(echo_item) == len(reply) * FRAME_MS == positions[-1]
    # The digit reached the responder: the echo says it back.
    assert [line.text for line in record.lines if line.speaker == "keypad"] == ["4"]
    assert "4" in agent[2].text.split()

    # `stop` ended the session at once.
    assert record.end_reason == "stop" and active.session.closed
    await until(lambda: services.metrics.sessions_active._value.get() == sessions_before)
    assert services.engine.busy_slots == 0
    # The call's transcript and latency went to the log, every line naming the call.
    ours = [r.getMessage() for r in caplog.records if getattr(r, "call_sid", None) == call.call_sid]
    assert any(heard[0] in line and line.startswith("caller:") for line in ours)
    assert any("first reply frame on the wire" in line for line in ours)
    assert any(line.startswith("call ended (stop)") for line in ours)
    spoken = next(t for t in record.turns if t.first_frame_ms is not None)
    print(f"\nphone call: start -> first greeting frame {greeting_ms:.0f} ms; caller's last speech frame -> "
          f"first reply frame {(reply[0].arrived - speech_end) * 1000:.0f} ms (server: speech_stopped -> "
          f"first frame on the wire {spoken.first_frame_ms:.0f} ms)")


async def test_barge_in_after_the_reply_was_made_clears_the_phone_and_cuts_the_turn_to_the_marks(
        server, llm_line):
    call = simulated(server, llm_line)
    await call.dial()
    await call.press("3")
    pressed = time.monotonic()
    await call.wait_frames(1, since=pressed, timeout=60)
    active = llm_line.active[call.call_sid]
    # The response is over (all of it made), but the phone has played only part of it.
    await until(lambda: any(line.speaker == "agent" for line in active.call_log.lines), timeout=30)
    await until_played(call, pressed, 1000)  # the caller has heard a second of it ...
    interrupted = time.monotonic()
    talking = asyncio.create_task(call.say(speech("stop please"), 16_000))  # ... and talks over it
    cleared_at = await call.wait_clear(since=interrupted)
    await talking
    await call.wait_frames(1, since=cleared_at + 0.3, timeout=60)  # the interruption is answered in turn
    await call.hang_up()
    await until(lambda: any(log.call_sid == call.call_sid for log in llm_line.finished))
    record = call_log(llm_line, call)

    cut = next(line for line in record.lines if line.speaker == "agent")
    assert cut.status == "completed" and cut.heard_ms is not None
    marks = {m.name: m for m in call.marks}
    positions = mark_positions_ms(call, cut.item_id)
    played = {pos for name, pos in positions.items() if marks[name].echoed_at < cleared_at and not marks[name].flushed}
    reply_frames = [f for f in call.frames_since(pressed) if f.arrived < cleared_at]
    # What the agent says the caller heard is exactly the position of a mark the phone echoed as played,
    # at least the second waited for less one mark interval, and no more than the phone played.
    assert cut.heard_ms in played
    assert 1000 - 2 * llm_line.settings.mark_interval_ms <= cut.heard_ms
    assert cut.heard_ms <= call.played_ms(reply_frames, cleared_at)
    # The phone dropped what it held, and no audio of the cut reply came after the clear.
    assert any(f.dropped for f in reply_frames)
    assert all(reply_of(m.name) != cut.item_id for m in call.marks if m.arrived > cleared_at)
    assert call.violations == []
    # The history holds only what was heard.
    item = active.session.conversation.get(cut.item_id)
    assert item.status == "incomplete"
    assert item.text == heard_text(item.phrases, cut.heard_ms)
    assert len(item.text.split()) < len(LLM_REPLY.split())
    # The interruption was heard.
    assert word_error_rate("stop please", [line.text for line in record.lines if line.speaker == "caller"][-1]) == 0


async def test_barge_in_during_generation_cancels_it_and_stop_frees_the_slot(server, services, llm_line, llm):
    llm.hold_at = len("Sure thing. I booked")  # the LLM stalls mid-reply: the response holds its slot
    try:
        call = simulated(server, llm_line)
        await call.dial()
        await call.press("1")
        pressed = time.monotonic()
        await call.wait_frames(1, since=pressed, timeout=60)
        assert services.engine.busy_slots == 1
        await until_played(call, pressed, 400)
        interrupted = time.monotonic()
        talking = asyncio.create_task(call.say(speech("stop please"), 16_000))
        cleared_at = await call.wait_clear(since=interrupted)
        await talking
        await call.wait_frames(1, since=cleared_at + 0.3, timeout=60)  # the interruption's own reply
        assert await asyncio.to_thread(llm.holding.wait, 10) and services.engine.busy_slots == 1
        active = llm_line.active[call.call_sid]
        await call.hang_up()
        await until(lambda: services.engine.busy_slots == 0)
        assert await asyncio.to_thread(llm.disconnected.wait, 10)  # the LLM request was dropped too
    finally:
        llm.hold_at = None
        llm.release()
    await until(lambda: any(log.call_sid == call.call_sid for log in llm_line.finished))
    record = call_log(llm_line, call)
    assert record.end_reason == "stop" and active.session.closed
    cut = next(line for line in record.lines if line.speaker == "agent")
    assert cut.status == "cancelled" and cut.heard_ms is not None
    positions = mark_positions_ms(call, cut.item_id)
    assert cut.heard_ms in {0, *(pos for name, pos in positions.items()
                                 if not next(m for m in call.marks if m.name == name).flushed)}
    assert "Sure thing.".startswith(cut.text) or cut.text == ""
    assert call.violations == []


async def test_a_dropped_socket_ends_the_call_and_frees_its_slot(server, services, llm_line, llm):
    llm.hold_at = len("Sure thing. I booked")
    try:
        call = simulated(server, llm_line)
        await call.dial()
        await call.press("2")
        await call.wait_frames(1, timeout=60)
        assert services.engine.busy_slots == 1
        call.drop()  # gone without a close handshake
        await until(lambda: services.engine.busy_slots == 0)
        assert await asyncio.to_thread(llm.disconnected.wait, 10)
    finally:
        llm.hold_at = None
        llm.release()
    await until(lambda: any(log.call_sid == call.call_sid for log in llm_line.finished))
    assert call_log(llm_line, call).end_reason == "dropped"
    assert call.call_sid not in llm_line.active


async def test_at_capacity_the_caller_hears_the_busy_message_and_is_hung_up(server, services, echo_line):
    # The message was spoken at a webhook, while a slot was free; saying it needs none.
    assert (await simulated(server, echo_line).post_webhook()).status_code == 200
    assert echo_line.busy_message.ready
    message = resample(echo_line.busy_message.pcm, SAMPLE_RATE, 8000)
    sessions_before = services.metrics.sessions_total._value.get()
    async with contextlib.AsyncExitStack() as held:
        for n in range(services.engine.slots):
            await held.enter_async_context(services.engine.lease(f"test-{n}"))
        call = simulated(server, echo_line)
        await call.dial()
        code = await call.wait_closed(timeout=60)
    await until(lambda: any(log.call_sid == call.call_sid for log in echo_line.finished))
    record = call_log(echo_line, call)

    assert record.busy and record.end_reason == "busy"
    assert services.metrics.sessions_total._value.get() == sessions_before  # no session: no slot needed
    assert code == 1000  # hung up cleanly (nothing follows <Connect>: Twilio ends the call)
    assert call.violations == [] and not call.clears
    assert abs(len(call.frames) - len(message) / FRAME_BYTES) <= 1
    assert call.closed_at >= call.frames[-1].played_by - TOLERANCE_S  # after the whole message played
    assert all(m.echoed_at is not None and not m.flushed for m in call.marks)
    received = SimulatedCall.decode(call.frames)[:len(message)]
    assert snr_db(message[:len(received)], received) >= 20  # the message itself, through G.711
    await call.close()


async def test_unsigned_forged_and_stray_requests_are_refused(server, services, echo_line, carrier):
    call = simulated(server, echo_line)
    assert (await call.post_webhook(headers={})).status_code == 403
    forged = call.webhook_headers({**call.form, "From": "+19995550000"})  # signed over other fields
    assert (await call.post_webhook(headers=forged)).status_code == 403

    answer = await call.post_webhook()
    assert answer.status_code == 200
    stream = ElementTree.fromstring(answer.text).find("./Connect/Stream")
    stream_url = stream.attrib["url"]
    if carrier == "twilio":  # Twilio signs the media socket's upgrade too
        with pytest.raises(websockets.InvalidStatus) as unsigned:
            await websockets.connect(call.local_stream_url(stream_url))
        assert unsigned.value.response.status_code == 403
    else:  # Telnyx signs none: the stream is asked for two-way, in the coding the serializer speaks
        assert {key: stream.attrib[key] for key in ("bidirectionalMode", "bidirectionalCodec", "codec")} == {
            "bidirectionalMode": "rtp", "bidirectionalCodec": "PCMU", "codec": "PCMU"}
    made_up = PUBLIC_URL.replace("https", "wss") + f"/{carrier}/media/made-up-token"
    with pytest.raises(websockets.InvalidStatus) as stranger:  # signed, but no call of ours
        await websockets.connect(call.local_stream_url(made_up), additional_headers=call.stream_signature(made_up))
    assert stranger.value.response.status_code == 403

    # Admitted, but its `start` names another call than the one the token was issued to.
    sessions_before = services.metrics.sessions_total._value.get()
    call.stream_url = stream_url
    await call.connect(start=False)
    await call.start(call_sid="someone-else")
    assert await call.wait_closed() == 1008
    assert services.metrics.sessions_total._value.get() == sessions_before
    with pytest.raises(websockets.InvalidStatus):  # and its token is spent
        await websockets.connect(call.local_stream_url(stream_url), additional_headers=call.stream_signature())
    await call.close()


async def test_a_call_that_ends_frees_its_session_without_the_cycle_collector(server, echo_line):
    """A session holds audio (the input tape, the caller's speech): once its call ends, reference counting
    must free it, not a full collection that a big process runs rarely (#20)."""
    gc.collect()
    gc.disable()  # from here only reference counting frees anything
    try:
        call = simulated(server, echo_line)
        await call.dial()
        await call.wait_frames(1)  # the greeting: the session is live
        session = weakref.ref(echo_line.active[call.call_sid].session)
        await call.hang_up()
        await until(lambda: session() is None, timeout=30)  # never, if a cycle holds it
    finally:
        gc.enable()


async def test_serve_puts_the_phone_line_beside_the_keyed_api(services):
    """`serve --twilio-public-url ... --api-key K`: Twilio, which has no key, rings through on its signature;
    the Realtime API still wants the key."""
    import argparse

    from higgs_agent.transport.phone.cli import add_phone_args, phone_settings

    parser = argparse.ArgumentParser()
    add_phone_args(parser)
    with pytest.raises(ValueError, match="auth token"):
        phone_settings(parser.parse_args(["--twilio-public-url", PUBLIC_URL]))
    with pytest.raises(ValueError, match="public key"):
        phone_settings(parser.parse_args(["--telnyx-public-url", PUBLIC_URL]))
    phone = phone_settings(parser.parse_args(["--twilio-public-url", PUBLIC_URL, "--twilio-auth-token", AUTH_TOKEN,
                                              "--telnyx-public-url", PUBLIC_URL, "--telnyx-public-key",
                                              TELNYX_PUBLIC_KEY, "--phone-greeting", GREETING]))
    assert [line.carrier for line in phone.lines] == ["Twilio", "Telnyx"]
    app = create_agent_app(services, api_key="sesame", phone=phone)
    with serve_app_in_background(app) as base:
        for line in phone.lines:  # both numbers on one server, each on its own paths
            call = SimulatedCall(base, line, telnyx_key=TELNYX_KEY)
            await call.dial()
            assert (await call.wait_frames(1))  # the greeting
            await call.hang_up()
        with pytest.raises(websockets.InvalidStatus) as refused:
            await websockets.connect(base.replace("http://", "ws://") + "/v1/realtime")
        assert refused.value.response.status_code == 403  # a WebSocket refused before its accept
