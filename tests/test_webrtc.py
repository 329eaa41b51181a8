"""The agent over WebRTC, OpenAI's way (`POST /v1/realtime/calls`), with aiortc as the client in place of a
browser: real espeak-ng speech on the client's microphone track, Opus both ways, Whisper tiny.en hearing it,
the tiny Higgs model answering through the echo responder, the events on the `oai-events` data channel and
the reply heard on the client's incoming track. Also: the multipart form and client secrets through the
official openai SDK, sideband control, bad offers, capacity, and calls that end when the client goes away."""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import numpy as np
import pytest
import websockets
from agent_server import running_server, ws_url
from aiortc import RTCConfiguration, RTCPeerConnection
from aiortc.mediastreams import MediaStreamError
from openai import AsyncOpenAI
from speech import silence, synthesize, word_error_rate
from third_party import server_event_shape_errors

from higgs_agent import SAMPLE_RATE
from higgs_agent.agent.responders.echo import EchoResponder
from higgs_agent.agent.services import AgentServices
from higgs_agent.audio import resample
from higgs_agent.model.sampling import SamplingSettings
from higgs_agent.bench.codec_quality import snr_db
from higgs_agent.streaming.engine import StreamingEngine
from higgs_agent.transport.auth import Authenticator
from higgs_agent.transport.webrtc import WebRTCSettings, add_webrtc_args, webrtc_settings
from higgs_agent.transport.webrtc.client_secrets import ClientSecrets
from higgs_agent.transport.webrtc.output import CallOutput
from higgs_agent.testing.webrtc_caller import FRAME, RATE, SOUND_RMS, Caller
from higgs_agent.transport.webrtc.tracks import ReplyAudioTrack, frame_to_mono

pytestmark = pytest.mark.timeout(180)

GREEDY = SamplingSettings(greedy=True, max_frames=200)
STORY = "please read me the news about the weather, the traffic and the football scores"
INTERRUPTION = "wait, stop"
SECRET_KEY = b"test-client-secret-key-0123456789"
KEYS = {"acme-key": "acme", "globex-key": "globex"}  # API key -> tenant


@pytest.fixture(scope="module")
def services(bundle, transcriber):
    services = AgentServices(engine=StreamingEngine(bundle), transcriber=transcriber,
                             responders={"echo": EchoResponder()}, default_responder="echo", sampling=GREEDY)
    yield services
    services.engine.close()


@pytest.fixture(scope="module")
def server(services):
    with running_server(services) as base:
        yield base


@pytest.fixture(scope="module")
def keyed(services):
    """Two tenants, and client secrets signed with a key the test knows."""
    with running_server(services, authenticator=Authenticator(KEYS),
                        webrtc=WebRTCSettings(client_secret_key=SECRET_KEY)) as base:
        yield base


# --- the client: aiortc in the test's event loop, as a browser does it ----------------------------------


@contextlib.asynccontextmanager
async def calling(base: str, key: str | None = None) -> AsyncIterator[Caller]:
    caller = await Caller.call(base, key)
    assert caller.call_id.startswith("rtc_")  # its location: /v1/realtime/calls/{call_id}
    try:
        yield caller
    finally:
        await caller.hang_up()


def windows(audio: np.ndarray) -> np.ndarray:
    """RMS of each whole 20 ms window."""
    whole = len(audio) // FRAME * FRAME
    return np.sqrt(np.mean(audio[:whole].reshape(-1, FRAME).astype(np.float64) ** 2, axis=1))


def audible_span_ms(audio: np.ndarray) -> float:
    """From the first to the last 20 ms window with sound in it."""
    loud = np.flatnonzero(windows(audio) > SOUND_RMS)
    return 0.0 if len(loud) == 0 else (loud[-1] - loud[0] + 1) * 20.0


def reply_ms(done: dict) -> float:
    """The reply audio the server says it sent: codec frames (25 a second) as response.done counts them."""
    return done["response"]["usage"]["output_token_details"]["audio_tokens"] * 40.0


def spoken(text: str, lead_ms: int = 300, tail_ms: int = 1200) -> np.ndarray:
    audio, _ = synthesize(text, sample_rate=RATE)
    return np.concatenate([silence(lead_ms, RATE), audio, silence(tail_ms, RATE)])


async def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout} s"
        await asyncio.sleep(0.05)


def live_calls(base: str, key: str | None = None) -> int:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.get(f"{base}/health", headers=headers).json()["webrtc_calls"]


async def typed_turn(send: Callable[[dict], Any], text: str) -> None:  # noqa: ANN401
    """A user message and a response to it, as a client (or a sideband) asks for them."""
    for event in ({"type": "conversation.item.create",
                   "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}},
                  {"type": "response.create"}):
        result = send(event)
        if asyncio.iscoroutine(result):
            await result


# --- the reply's track on its own -----------------------------------------------------------------------


class PlaybackListener:
    """A sideband listener that keeps the call's playback events."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def offer(self, text: str) -> None:
        event = json.loads(text)
        if event["type"].startswith("output_audio_buffer."):
            self.events.append((event["type"].rsplit(".", 1)[1], event["response_id"]))

    def call_ended(self, reason: str) -> None:
        pass


async def test_the_reply_track_plays_the_calls_audio_sink_and_counts_only_what_it_handed_to_the_encoder():
    output = CallOutput(lambda reason: None)
    listener = PlaybackListener()
    output.add_listener(listener)
    track = ReplyAudioTrack(output)
    tone = (0.5 * np.sin(2 * np.pi * 440 * np.arange(SAMPLE_RATE) / SAMPLE_RATE)).astype(np.float32)  # 1 s
    assert await output.push("resp_1", "item_1", tone)
    frames = [await track.recv() for _ in range(10)]
    assert listener.events == [("started", "resp_1")]
    assert output.playback("item_1").sent_ms == 200.0  # ten 20 ms frames went to the encoder: that much left
    assert 160.0 <= output.heard_ms("item_1") <= 200.0  # ... and plays at real time from then on (a frame or so)
    assert [(f.sample_rate, f.samples, f.pts) for f in frames] == [(RATE, FRAME, n * FRAME) for n in range(10)]
    sent = np.concatenate([frame_to_mono(f) for f in frames])
    assert snr_db(resample(tone, SAMPLE_RATE, RATE)[:len(sent)], sent) >= 40  # the reply, resampled as one stream

    # A barge-in drops the rest (less the few ms inside the resampler's filter) and refuses what still comes.
    heard = output.heard_ms("item_1")
    assert SAMPLE_RATE - 4800 - SAMPLE_RATE // 20 <= output.discard_audio("item_1") <= SAMPLE_RATE - 4800
    assert listener.events[-1] == ("cleared", "resp_1")
    assert not await output.push("resp_1", "item_1", tone)
    assert not frame_to_mono(await track.recv()).any()  # silence: nothing is queued
    assert output.heard_ms("item_1") <= max(heard, 200.0)  # nothing more of it plays after the barge-in

    # A response that ends: its last part-frame goes out padded, `stopped` once all of it has been sent.
    assert await output.push("resp_2", "item_2", tone[:1000])  # 41.7 ms: two frames and a part
    await output.flush_audio("resp_2")
    for _ in range(3):
        await track.recv()
    assert listener.events[-2:] == [("started", "resp_2"), ("stopped", "resp_2")]
    assert output.playback("item_2").sent_ms == pytest.approx(1000 / SAMPLE_RATE * 1000, abs=0.1)
    track.stop()
    with pytest.raises(MediaStreamError):
        await track.recv()


# --- a spoken conversation ------------------------------------------------------------------------------


async def test_a_spoken_turn_is_answered_on_the_audio_track_and_talking_over_it_cuts_it(server, services):
    sessions_before = services.metrics.sessions_active._value.get()
    async with calling(server) as caller:
        # Opus only, and candidates a client on this machine reaches without STUN.
        audio_section = caller.answer.split("m=audio")[1].split("m=application")[0]
        assert "opus/48000/2" in audio_section and "PCMU" not in audio_section
        assert "127.0.0.1" in caller.answer
        assert caller.events[0][1]["type"] == "session.created"  # the first message on the channel

        caller.microphone.say(spoken(STORY, tail_ms=1500), RATE)
        first = (await caller.until("response.created"))["response"]["id"]
        await caller.until(lambda e: e["type"] == "output_audio_buffer.started" and e["response_id"] == first)
        started = caller.at("output_audio_buffer.started", response_id=first)
        await wait_for(lambda: audible_span_ms(caller.audio(started)) >= 1500, 20, "1.5 s of the reply heard")

        # The user talks over the reply: the server drops what it had not sent and cuts the turn to what was.
        mark = len(caller.events)
        caller.microphone.say(spoken(INTERRUPTION, tail_ms=1500), RATE)
        await caller.until("input_audio_buffer.speech_started", after=mark)
        cleared = await caller.until("output_audio_buffer.cleared", after=mark)
        assert cleared["response_id"] == first
        truncated = await caller.until("conversation.item.truncated", after=mark)
        second = (await caller.until("response.created", after=mark))["response"]["id"]
        done = await caller.until(lambda e: e["type"] == "response.done" and e["response"]["id"] == second)
        await caller.until(lambda e: e["type"] == "output_audio_buffer.stopped" and e["response_id"] == second,
                           timeout=30)

    events = [event for _, event in caller.events]
    first_done = next(e for e in events if e["type"] == "response.done" and e["response"]["id"] == first)
    first_item = first_done["response"]["output"][0]["id"]

    # The event flow is the WebSocket protocol's, in OpenAI's shapes; audio went on the track, not the channel.
    types = caller.types()
    order = ["session.created", "input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped",
             "input_audio_buffer.committed", "conversation.item.input_audio_transcription.completed",
             "response.created", "output_audio_buffer.started", "response.done"]
    assert [types.index(kind) for kind in order] == sorted(types.index(kind) for kind in order)
    assert "response.output_audio.delta" not in types
    assert not [e for e in events if e["type"] == "error"], [e for e in events if e["type"] == "error"]
    shape_errors = [error for e in events if not e["type"].startswith("higgs.")
                    for error in server_event_shape_errors(e)]
    assert not shape_errors, shape_errors

    # Both turns were heard.
    heard = [e["transcript"] for e in events if e["type"] == "conversation.item.input_audio_transcription.completed"]
    assert len(heard) == 2, heard
    assert word_error_rate(STORY, heard[0]) <= 0.25, heard[0]
    assert word_error_rate(INTERRUPTION, heard[1]) <= 0.5, heard[1]

    # The cut: at what the client had really received of the first reply when the server dropped the rest.
    cleared_at = caller.at("output_audio_buffer.cleared", response_id=first)
    received_ms = len(caller.audio(started, cleared_at)) / RATE * 1000
    assert truncated["item_id"] == first_item and truncated["content_index"] == 0
    assert 1500 <= truncated["audio_end_ms"] < reply_ms(first_done)
    assert truncated["audio_end_ms"] == pytest.approx(received_ms, abs=250)
    # ... and nothing of it came after that, until the next reply.
    second_started = caller.at("output_audio_buffer.started", response_id=second)
    leaked = windows(caller.audio(cleared_at + 0.2, second_started))
    assert (leaked <= SOUND_RMS).all(), f"{(leaked > SOUND_RMS).sum() * 20} ms of the cut reply came after the cut"
    assert "output_audio_buffer.stopped" not in [e["type"] for e in events if e.get("response_id") == first]

    # The second reply was received whole: as long as the audio the server says it sent.
    stopped = caller.at("output_audio_buffer.stopped", response_id=second)
    expected = reply_ms(done)
    assert expected >= 400
    assert audible_span_ms(caller.audio(second_started - 0.1, stopped + 0.5)) == pytest.approx(
        expected, abs=max(300, 0.15 * expected))
    stopped_speaking = caller.at("input_audio_buffer.speech_stopped")
    first_sound = next(t for t, samples in caller.heard if t > stopped_speaking and windows(samples).max() > SOUND_RMS)
    print(f"\nwebrtc: cut at {truncated['audio_end_ms']} ms (client received {received_ms:.0f} ms); second reply "
          f"{expected:.0f} ms sent, {audible_span_ms(caller.audio(second_started - 0.1, stopped + 0.5)):.0f} ms heard; "
          f"first reply audio at the client {1000 * (first_sound - stopped_speaking):.0f} ms after speech_stopped")

    # Hung up: the call and its session are gone.
    await wait_for(lambda: live_calls(server) == 0, 10, "the call ending")
    await wait_for(lambda: services.metrics.sessions_active._value.get() == sessions_before, 10, "the session closing")


# --- the multipart form, client secrets, sideband: through the official openai SDK ----------------------


async def test_the_openai_sdk_calls_with_the_multipart_form_and_its_session_config_is_applied(server):
    caller, offer = await Caller.offer()
    try:
        async with AsyncOpenAI(base_url=f"{server}/v1", api_key="unused") as sdk:
            answer = await sdk.realtime.calls.create(
                sdp=offer, session={"type": "realtime", "instructions": "Speak like a pirate.",
                                    "audio": {"input": {"turn_detection": None}}})
        assert answer.response.status_code == 201
        await caller.connect(answer.text, answer.response.headers["location"])
        session = caller.events[0][1]["session"]
        assert session["instructions"] == "Speak like a pirate."
        assert session["audio"]["input"]["turn_detection"] is None

        # A typed turn on the data channel: the reply is heard on the track, as long as the server says.
        await typed_turn(caller.send, "the ship sails at dawn")
        done = await caller.until("response.done")
        response = done["response"]["id"]
        await caller.until(lambda e: e["type"] == "output_audio_buffer.stopped", timeout=30)
        started = caller.at("output_audio_buffer.started", response_id=response)
        stopped = caller.at("output_audio_buffer.stopped", response_id=response)
        assert done["response"]["status"] == "completed"
        assert audible_span_ms(caller.audio(started - 0.1, stopped + 0.5)) == pytest.approx(
            reply_ms(done), abs=max(300, 0.15 * reply_ms(done)))
    finally:
        await caller.hang_up()


async def test_a_client_secret_stands_in_for_the_key_until_it_expires(keyed, server):
    async with AsyncOpenAI(base_url=f"{keyed}/v1", api_key="acme-key") as sdk:
        secret = await sdk.realtime.client_secrets.create(
            expires_after={"anchor": "created_at", "seconds": 60},
            session={"type": "realtime", "instructions": "Speak like a pirate.",
                     "audio": {"input": {"turn_detection": None}}})
    assert secret.value.startswith("ek_")
    assert secret.expires_at == pytest.approx(time.time() + 60, abs=5)
    assert secret.session.instructions == "Speak like a pirate."

    # The browser calls with it, and its session starts with the config baked into the secret.
    async with calling(keyed, key=secret.value) as caller:
        session = caller.events[0][1]["session"]
        assert session["instructions"] == "Speak like a pirate."
        assert session["audio"]["input"]["turn_detection"] is None
        assert live_calls(keyed, "acme-key") == 1  # the call is the minting key's tenant's ...
        assert live_calls(keyed, "globex-key") == 1  # (health counts every call)
        with pytest.raises(websockets.InvalidStatus):  # ... so another tenant cannot attach to it
            await websockets.connect(ws_url(keyed, f"call_id={caller.call_id}"),
                                     additional_headers={"Authorization": "Bearer globex-key"})
    # ... or the WebSocket, as OpenAI's browser SDK passes a key.
    async with websockets.connect(ws_url(keyed), subprotocols=["realtime", f"openai-insecure-api-key.{secret.value}"]
                                  ) as socket:
        assert json.loads(await socket.recv())["type"] == "session.created"

    async with httpx.AsyncClient() as http:
        async def status(path: str, key: str | None, base: str = keyed, headers: dict | None = None,
                         **request: Any) -> httpx.Response:  # noqa: ANN401
            headers = {**(headers or {}), **({"Authorization": f"Bearer {key}"} if key else {})}
            return await http.post(f"{base}{path}", headers=headers, **request)

        # A secret opens sessions only: it cannot mint another, nor read the metrics.
        assert (await status("/v1/realtime/client_secrets", secret.value, json={})).status_code == 401
        assert (await http.get(f"{keyed}/metrics", headers={"Authorization": f"Bearer {secret.value}"})
                ).status_code == 401
        # The default lifetime is OpenAI's (600 s); out-of-range lifetimes and bad configs are refused.
        minted = (await status("/v1/realtime/client_secrets", "acme-key")).json()
        assert minted["expires_at"] - time.time() == pytest.approx(600, abs=5)
        assert minted["session"]["type"] == "realtime"
        for seconds in (5, 7201):
            refused = await status("/v1/realtime/client_secrets", "acme-key",
                                   json={"expires_after": {"anchor": "created_at", "seconds": seconds}})
            assert refused.status_code == 400 and refused.json()["error"]["param"] == "expires_after.seconds"
        refused = await status("/v1/realtime/client_secrets", "acme-key",
                               json={"session": {"type": "realtime", "max_output_tokens": 0}})
        assert refused.status_code == 400 and refused.json()["error"]["param"] == "session.max_output_tokens"
        assert (await status("/v1/realtime/client_secrets", None)).status_code == 401

        # Expired, forged (another tenant written into it), signed with another key: refused like a wrong key,
        # on a keyed server and on an open one alike.
        signer = ClientSecrets(SECRET_KEY)
        expired = signer.mint("acme", 60, created_at=int(time.time()) - 120).value
        body, signature = signer.mint("acme", 60).value.split(".")
        payload = json.loads(base64.urlsafe_b64decode(body[3:] + "=" * (-len(body[3:]) % 4)))
        forged_body = base64.urlsafe_b64encode(json.dumps({**payload, "tenant": "globex"}).encode()).rstrip(b"=")
        forged = f"ek_{forged_body.decode()}.{signature}"
        foreign = ClientSecrets(b"some-other-server-key-0123456789").mint("acme", 60).value
        caller, offer = await Caller.offer()
        try:
            for bad in (expired, forged, foreign):
                for base in (keyed, server):
                    refused = await status("/v1/realtime/calls", bad, base=base, content=offer,
                                           headers={"Content-Type": "application/sdp"})
                    assert refused.status_code == 401, (bad, refused.text)
                    assert refused.json()["error"]["code"] == "invalid_api_key"
        finally:
            await caller.pc.close()


async def test_a_sideband_attaches_to_a_call_and_steers_it(keyed):
    async with calling(keyed, key="acme-key") as caller:
        # Only the call's own tenant, with its API key, may attach; to anyone else the call does not exist.
        secret = ClientSecrets(SECRET_KEY).mint("acme", 60).value
        for key, call_id in (("globex-key", caller.call_id), ("acme-key", "rtc_unknown"), (secret, caller.call_id),
                             (None, caller.call_id)):
            with pytest.raises(websockets.InvalidStatus):
                await websockets.connect(ws_url(keyed, f"call_id={call_id}"),
                                         additional_headers={"Authorization": f"Bearer {key}"} if key else {})
        # A plain sideband socket, to see how it is closed when the call ends.
        watcher = await websockets.connect(ws_url(keyed, f"call_id={caller.call_id}"),
                                           additional_headers={"Authorization": "Bearer acme-key"})

        async with AsyncOpenAI(base_url=f"{keyed}/v1", api_key="acme-key") as sdk, \
                sdk.realtime.connect(call_id=caller.call_id) as sideband:
            await sideband.session.update(session={"type": "realtime", "instructions": "Speak like a pirate."})
            updated = await caller.until("session.updated")
            assert updated["session"]["instructions"] == "Speak like a pirate."
            await typed_turn(sideband.send, "the ship sails at dawn")  # as a tool's result would come in
            seen = []
            async for event in sideband:  # the sideband hears the call's events ...
                seen.append(event.type)
                if event.type == "response.done":
                    break
            assert seen[0] == "session.updated" and "response.created" in seen
        done = await caller.until("response.done")  # ... and so does the client
        await caller.until("output_audio_buffer.stopped", timeout=30)
        started = caller.at("output_audio_buffer.started", response_id=done["response"]["id"])
        assert audible_span_ms(caller.audio(started - 0.1)) == pytest.approx(
            reply_ms(done), abs=max(300, 0.15 * reply_ms(done)))

        # The application hangs up (only the call's tenant may): the client's connection and the sideband close.
        async with httpx.AsyncClient() as http:
            hang_up = f"{keyed}/v1/realtime/calls/{caller.call_id}/hangup"
            assert (await http.post(hang_up, headers={"Authorization": "Bearer globex-key"})).status_code == 404
            assert (await http.post(hang_up, headers={"Authorization": "Bearer acme-key"})).status_code == 200
        await asyncio.wait_for(watcher.wait_closed(), 10)
        assert watcher.close_code == 1000 and "hung up" in watcher.close_reason, watcher.close_reason
        await wait_for(lambda: caller.channel.readyState == "closed", 10, "the client's event channel closing")
        assert live_calls(keyed, "acme-key") == 0


# --- what is refused ----------------------------------------------------------------------------------


async def test_an_offer_that_cannot_be_answered_gets_a_400_in_openais_shape(server, services):
    sessions_before = services.metrics.sessions_active._value.get()
    caller, offer = await Caller.offer()
    no_audio_peer = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    no_audio_peer.createDataChannel("oai-events")
    await no_audio_peer.setLocalDescription(await no_audio_peer.createOffer())
    opus = next(line.split(":")[1].split()[0] for line in offer.splitlines() if "opus/48000" in line)
    no_opus = "\r\n".join(line.replace(f" {opus} ", " ") if line.startswith("m=audio") else line
                          for line in offer.split("\r\n") if f":{opus} " not in line)
    raw = {
        "": "missing_required_parameter",
        "hello": "invalid_offer",
        "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n": "invalid_offer",
        no_audio_peer.localDescription.sdp: "invalid_offer",
        no_opus: "invalid_offer",
    }
    forms = {
        "session.max_output_tokens": ({"sdp": offer, "session": json.dumps({"max_output_tokens": 0})}, "invalid_value"),
        "session": ({"sdp": offer, "session": "{not json"}, "invalid_json"),
        "sdp": ({"session": "{}"}, "missing_required_parameter"),
    }
    try:
        async with httpx.AsyncClient() as http:
            url = f"{server}/v1/realtime/calls"
            answers = [(code, await http.post(url, content=sdp, headers={"Content-Type": "application/sdp"}))
                       for sdp, code in raw.items()]
            answers += [(code, await http.post(url, files={name: (None, value) for name, value in fields.items()}))
                        for fields, code in forms.values()]
        for (code, answer), param in zip(answers, ["sdp"] * len(raw) + list(forms), strict=True):
            assert answer.status_code == 400, answer.text
            error = answer.json()["error"]
            assert (error["code"], error["param"], error["type"]) == (code, param, "invalid_request_error"), error
            assert error["message"]
    finally:
        await caller.pc.close()
        await no_audio_peer.close()
    assert live_calls(server) == 0
    assert services.metrics.sessions_active._value.get() == sessions_before


async def test_a_call_is_refused_with_503_while_every_engine_slot_is_busy(server, services):
    engine = services.engine
    caller, offer = await Caller.offer()
    try:
        async with contextlib.AsyncExitStack() as held:
            for n in range(engine.slots):
                await held.enter_async_context(engine.lease(f"another caller {n}"))
            async with httpx.AsyncClient() as http:
                refused = await http.post(f"{server}/v1/realtime/calls", content=offer,
                                          headers={"Content-Type": "application/sdp"})
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        assert refused.json()["error"]["code"] == "at_capacity"
    finally:
        await caller.pc.close()


# --- calls end when the client goes away ----------------------------------------------------------------


@pytest.fixture(scope="module")
def impatient(services):
    """Calls end after 2 s without audio, or 2 s after the answer without a connection; a reply waits (holding
    its slot) while 0.5 s of it is queued."""
    settings = WebRTCSettings(media_timeout_s=2.0, connect_timeout_s=2.0, max_queued_audio_s=0.5)
    with running_server(services, webrtc=settings) as base:
        yield base


@pytest.mark.parametrize("leaving", ["hangs up", "closes its event channel", "goes silent"])
async def test_a_call_ends_and_frees_its_engine_slot_when_the_client_goes_away(leaving, impatient, services, caplog):
    caplog.set_level(logging.INFO, logger="higgs_agent.transport.webrtc")
    cancelled = services.metrics.responses.labels(status="cancelled")
    cancelled_before = cancelled._value.get()
    sessions_before = services.metrics.sessions_active._value.get()
    caller = await Caller.call(impatient)
    await typed_turn(caller.send, STORY)  # an 8 s reply: it plays long after it could have been generated
    await caller.until("output_audio_buffer.started")
    await wait_for(lambda: services.engine.busy_slots == 1, 10, "the reply holding its slot")
    if leaving == "hangs up":
        await caller.hang_up()  # as a page that is closed
    elif leaving == "closes its event channel":
        caller.channel.close()
    else:
        caller.microphone.unplug()  # as a client that vanished: nothing more arrives from it

    # The call ends before its reply could have played out, and its slot is free again.
    await wait_for(lambda: services.engine.busy_slots == 0 and cancelled._value.get() == cancelled_before + 1, 8,
                   "the reply being cancelled and its slot freed")
    assert live_calls(impatient) == 0
    assert services.metrics.sessions_active._value.get() == sessions_before
    # ... for the right reason: a page that closes says so at once (its track and connection end); a client
    # that vanished is noticed by the silence.
    reasons = [r.getMessage() for r in caplog.records if r.getMessage().startswith("call ended")]
    assert len(reasons) == 1, reasons
    assert ("no audio from the client for 2 s" in reasons[0]) == (leaving == "goes silent"), reasons
    if leaving == "closes its event channel":
        assert "the event channel closed" in reasons[0]
    await caller.hang_up()


async def test_a_call_whose_client_never_connects_ends(impatient, services, caplog):
    caplog.set_level(logging.INFO, logger="higgs_agent.transport.webrtc")
    sessions_before = services.metrics.sessions_active._value.get()
    caller, offer = await Caller.offer()
    try:
        async with httpx.AsyncClient() as http:
            answer = await http.post(f"{impatient}/v1/realtime/calls", content=offer,
                                     headers={"Content-Type": "application/sdp"})
        assert answer.status_code == 201  # ... and the client never takes the answer
        await wait_for(lambda: live_calls(impatient) == 0, 10, "the call ending")
    finally:
        await caller.pc.close()
    assert services.metrics.sessions_active._value.get() == sessions_before
    assert any("did not connect within 2 s" in r.getMessage() for r in caplog.records)


def test_the_serve_flags_set_ice_servers_and_refuse_what_aiortc_cannot_use():
    parser = argparse.ArgumentParser()
    add_webrtc_args(parser)
    settings = webrtc_settings(parser.parse_args([
        "--ice-server", "stun:stun.example.com:3478", "--ice-server", "turn:turn.example.com?transport=tcp",
        "--turn-username", "user", "--turn-credential", "pass", "--client-secret-key", "k" * 32, "--no-ice-loopback"]))
    assert [(s.url, s.username) for s in settings.ice_servers] == [("stun:stun.example.com:3478", None),
                                                                   ("turn:turn.example.com?transport=tcp", "user")]
    assert settings.client_secret_key == b"k" * 32 and not settings.loopback
    assert webrtc_settings(parser.parse_args([])) == WebRTCSettings()  # no STUN unless asked: none reachable here
    for flags, problem in ((["--ice-server", "http://stun.example.com"], "not an ICE server URL"),
                           (["--ice-server", "turn:turn.example.com"], "needs a username and a credential"),
                           (["--ice-server", "stuns:stun.example.com"], "does not support stuns"),
                           (["--client-secret-key", "short"], "at least 16 characters")):
        with pytest.raises(ValueError, match=problem):
            webrtc_settings(parser.parse_args(flags))


async def test_a_call_that_ends_frees_its_session_without_the_cycle_collector(impatient):
    """Once a call ends, reference counting frees its session (and its audio), not a rare full collection
    (#20): nothing keeps the call in a cycle (the peer connection's and the channel's handlers, the output's
    callback, the caller-audio task's exception)."""
    import gc
    import weakref

    from higgs_agent.agent.session import Session

    gc.collect()
    gc.disable()  # from here only reference counting frees anything
    try:
        before = {id(obj) for obj in gc.get_objects() if type(obj) is Session}
        caller = await Caller.call(impatient)
        await typed_turn(caller.send, "hello")
        await caller.until("response.done")
        sessions = [weakref.ref(obj) for obj in gc.get_objects() if type(obj) is Session and id(obj) not in before]
        assert len(sessions) == 1  # the call's (the server runs in this process)
        await caller.hang_up()
        await wait_for(lambda: sessions[0]() is None, 30, "the ended call's session being freed (a reference "
                       "cycle would keep it until the cycle collector ran)")
    finally:
        gc.enable()
