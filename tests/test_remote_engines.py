"""Reply speech from remote engines (serve --engine-url): real `serve` engine processes on real sockets, an
agent app that speaks through them, and a vLLM-Omni stand-in that checks the request fields exactly.

What a user relies on: the reply's audio arrives whole and in order from the engine; the least-loaded engine
is chosen; a barge-in frees the engine's slot; an engine that dies mid-reply fails that reply with a clear
error and the next reply goes to another; no engine left is an at_capacity error, never a hang."""

from __future__ import annotations

import asyncio
import base64
import io
import os
import signal
import time

import httpx
import numpy as np
import pytest
import soundfile

from higgs_agent.agent.responders.echo import EchoResponder
from higgs_agent.agent.services import AgentServices
from higgs_agent.audio import pcm16_to_float
from higgs_agent.metrics import AgentMetrics
from higgs_agent.model.prompts import SpeechPrompt
from higgs_agent.model.sampling import SamplingSettings
from higgs_agent.remote.engines import RemoteEngines
from higgs_agent.server import serve_app_in_background
from higgs_agent.testing.serve_process import running_serve
from tests.agent_server import Client, running_server
from tests.vllm_omni_standin import VllmOmniStandIn, decode_ref_audio

pytestmark = pytest.mark.asyncio(loop_scope="session")

# Three phrases: each is its own request to the engine, so a reply outlives any one of them.
THREE_PHRASES = ("The first phrase of this reply is here. The second phrase follows it right away. "
                 "And a third phrase closes the whole reply for good.")
# One phrase (no sentence ends inside it) with a frame budget of ~16 s of speech.
ONE_LONG_PHRASE = ("Please tell me everything about the long and winding road that leads from the old harbour "
                   "up the hill to the little house where my grandmother lived for more than sixty years")
ENGINE_ARGS = ["--no-understanding", "--slots", "2"]


def remote_services(urls: list[str], transcriber, kind: str = "higgs", model: str | None = None,  # noqa: ANN001
                    health_interval_s: float = 0.5) -> AgentServices:
    metrics = AgentMetrics()  # the engines' metrics are the server's (/metrics)
    engines = RemoteEngines(urls, kind=kind, model=model, metrics=metrics, health_interval_s=health_interval_s)
    return AgentServices(engine=engines,
                         transcriber=transcriber, responders={"echo": EchoResponder()}, default_responder="echo",
                         sampling=SamplingSettings(seed=7, max_frames=40), metrics=metrics)


def traced_in_memory():  # noqa: ANN201 - (OtlpTraces, InMemorySpanExporter)
    """Traces kept in this process, each span as soon as it ends."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from higgs_agent.otlp import OtlpTraces

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return OtlpTraces(provider), exporter


async def say(client: Client, text: str) -> dict:
    """A typed user turn and a spoken reply to it; returns response.created."""
    await client.send({"type": "conversation.item.create", "item": {
        "type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}})
    await client.send({"type": "response.create"})
    return await client.until("response.created")


async def spoken_reply(client: Client, text: str) -> np.ndarray:
    """A typed turn answered in full: the reply's audio as the client got it."""
    created = await say(client, text)
    response = await done(client, created["response"]["id"])
    assert response["status"] == "completed", response
    return client.reply_audio(created["response"]["id"])


async def done(client: Client, response_id: str) -> dict:
    while True:
        event = await client.until("response.done", timeout=180)
        if event["response"]["id"] == response_id:
            return event["response"]


@pytest.fixture(scope="module")
def engines(tiny_dir):
    with running_serve(["--model", str(tiny_dir), *ENGINE_ARGS]) as one, \
            running_serve(["--model", str(tiny_dir), *ENGINE_ARGS]) as two:
        yield [one, two]


async def test_a_reply_is_the_engines_own_speech_streamed_through(engines, transcriber):
    urls = [engine.base for engine in engines]
    services = remote_services(urls[:1], transcriber)
    with running_server(services) as base:
        client = await Client.connect(base)
        heard = await spoken_reply(client, "Hello there, how are you today?")
        health = httpx.get(f"{base}/health").json()
        await client.close()
    # the same phrase asked of that engine directly, as the agent asks it: the same samples
    direct = httpx.post(f"{urls[0]}/v1/audio/speech", timeout=120, json={
        "input": "Hello there, how are you today?", "response_format": "pcm", "stream": True, "seed": 7,
        "max_new_tokens": 40}).content
    expected = pcm16_to_float(direct)
    assert len(heard) == len(expected) > 0
    assert np.max(np.abs(heard - expected)) <= 2 / 32768
    assert health["device"] == "remote" and [e["url"] for e in health["engines"]] == urls[:1]
    assert health["engines"][0]["up"] and health["engines"][0]["slots"] == 2
    assert health["engines"][0]["first_audio_ms_p50"] is not None


async def test_each_response_leases_the_least_loaded_engine(engines):
    urls = [engine.base for engine in engines]
    pool = RemoteEngines(urls, health_interval_s=0.5)
    try:
        async with pool.lease("a") as first, pool.lease("b") as second, pool.lease("c") as third:
            assert first.remote is not second.remote  # one each
            assert third.remote.in_flight == 2  # then the two-slot engines fill evenly
            async with pool.lease("d") as fourth:
                assert {first.remote.in_flight, fourth.remote.in_flight} == {2}
                with pytest.raises(Exception, match="every speech engine is busy"):
                    async with pool.lease("e"):
                        pass
        assert [remote.in_flight for remote in pool.remotes] == [0, 0]
    finally:
        pool.close()


async def test_a_barge_in_closes_the_stream_and_the_engine_frees_its_slot(engines, transcriber):
    url = engines[1].base
    services = remote_services([url], transcriber)
    services.sampling = SamplingSettings(seed=7, max_frames=1500)  # long phrases: still speaking when cut
    with running_server(services) as base:
        client = await Client.connect(base)
        created = await say(client, ONE_LONG_PHRASE)  # one request: still open when the cancel lands
        await client.until("response.output_audio.delta")
        assert services.engine.remotes[0].streams == 1  # the engine is speaking it
        await client.send({"type": "response.cancel"})
        response = await done(client, created["response"]["id"])
        assert response["status"] == "cancelled"
        deadline = time.monotonic() + 60
        while httpx.get(f"{url}/health").json()["busy_slots"] != 0:  # the engine saw the stream close
            assert time.monotonic() < deadline, "the engine kept the slot after the barge-in"
            await asyncio.sleep(0.05)
        assert services.engine.remotes[0].in_flight == 0
        metrics = httpx.get(f"{base}/metrics").text
        assert f'higgs_engine_requests_total{{engine="{url}",outcome="cancelled"}} 1.0' in metrics
        await client.close()


async def test_an_engine_that_dies_mid_reply_fails_it_and_the_next_goes_to_another(tiny_dir, transcriber):
    with running_serve(["--model", str(tiny_dir), *ENGINE_ARGS]) as one, \
            running_serve(["--model", str(tiny_dir), *ENGINE_ARGS]) as two:
        processes = {one.base: one.process, two.base: two.process}
        services = remote_services([one.base, two.base], transcriber)
        services.sampling = SamplingSettings(seed=7, max_frames=1500)
        with running_server(services) as base:
            client = await Client.connect(base)
            created = await say(client, THREE_PHRASES)
            await client.until("response.output_audio.delta")
            speaking = next(remote for remote in services.engine.remotes if remote.in_flight)
            os.kill(processes[speaking.url].pid, signal.SIGKILL)  # mid-reply
            failed = await done(client, created["response"]["id"])
            assert failed["status"] == "failed"
            assert failed["status_details"]["error"]["code"] == "engine_error", failed
            assert speaking.url in failed["status_details"]["error"]["message"]
            error = next(e for e in client.events if e["type"] == "error")
            assert error["error"]["code"] == "engine_error"

            services.sampling = SamplingSettings(seed=7, max_frames=40)
            created = await say(client, "Are you still there?")  # the other engine speaks it
            response = await done(client, created["response"]["id"])
            assert response["status"] == "completed", response
            assert len(client.reply_audio(created["response"]["id"])) > 0
            survivor = next(remote for remote in services.engine.remotes if remote.url != speaking.url)
            health = {e["url"]: e for e in httpx.get(f"{base}/health").json()["engines"]}
            assert not health[speaking.url]["up"] and health[survivor.url]["up"]
            assert health[speaking.url]["errors"] >= 1

            os.kill(processes[survivor.url].pid, signal.SIGKILL)  # now none is left
            processes[survivor.url].wait()
            created = await say(client, "Hello?")
            refused = await done(client, created["response"]["id"])
            assert refused["status"] == "failed"
            assert refused["status_details"]["error"]["code"] in ("at_capacity", "engine_error")
            # from here on, without waiting for a health check: at once, at_capacity, saying why
            deadline = time.monotonic() + 30
            while any(remote.up for remote in services.engine.remotes):
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            created = await say(client, "Anyone?")
            refused = await done(client, created["response"]["id"])
            assert refused["status_details"]["error"]["code"] == "at_capacity"
            assert "no speech engine is reachable" in refused["status_details"]["error"]["message"]
            await client.close()


async def test_vllm_omni_gets_exactly_its_fields_and_the_voice_as_ref_audio(transcriber):
    standin = VllmOmniStandIn(seconds_per_phrase=1.0)
    with serve_app_in_background(standin.app) as engine_url:
        services = remote_services([engine_url], transcriber, kind="vllm-omni", model="higgs_audio_v2")
        services.traces, spans = traced_in_memory()
        with running_server(services) as base:
            client = await Client.connect(base)
            heard = await spoken_reply(client, "Good morning to you. I hope the day is kind.")
            await client.close()
            deadline = time.monotonic() + 30  # the trace is built when the reply has ended
            while not spans.get_finished_spans():
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
    # its trace names the remote engine that spoke it, and times the engine's part of the turn
    turn = next(span for span in spans.get_finished_spans() if span.name == "turn")
    assert turn.attributes["higgs.engine"] == engine_url
    assert {"engine_queue", "first_audio", "transport"} <= {span.name for span in spans.get_finished_spans()}
    assert len(standin.requests) == 2  # two phrases, one request each
    first, second = standin.requests
    for request in standin.requests:
        assert request.model == "higgs_audio_v2" and request.stream is True and request.response_format == "pcm"
        assert request.max_new_tokens is not None and request.max_new_tokens > 0
    assert first.input == "Good morning to you." and first.ref_audio is None  # the model's own voice ...
    # ... pinned by the first phrase: the second is cloned from what the first sounded like, as sound
    assert second.ref_text == "Good morning to you."
    clip, rate = decode_ref_audio(second.ref_audio)
    assert rate == 24_000 and np.max(np.abs(clip - standin.sent[0])) <= 2 / 32768
    # and the client heard what the engine sent, in order, at 24 kHz
    sent = np.concatenate(standin.sent)
    assert len(heard) == len(sent) and np.max(np.abs(heard - sent)) <= 2 / 32768


async def test_our_serve_takes_vllm_omnis_clone_fields(engines):
    url = engines[0].base
    clip = np.sin(2 * np.pi * 180 * np.arange(24_000) / 24_000).astype(np.float32) * 0.3
    wav = io.BytesIO()
    soundfile.write(wav, clip, 24_000, format="WAV", subtype="PCM_16")
    ref = "data:audio/wav;base64," + base64.b64encode(wav.getvalue()).decode()
    body = {"input": "Say it in my voice.", "response_format": "pcm", "stream": True, "seed": 3,
            "max_new_tokens": 30, "ref_audio": ref, "ref_text": "A tone."}
    cloned = httpx.post(f"{url}/v1/audio/speech", json=body, timeout=120)
    plain = httpx.post(f"{url}/v1/audio/speech", json={**body, "ref_audio": None, "ref_text": None}, timeout=120)
    assert cloned.status_code == plain.status_code == 200
    assert len(cloned.content) > 0 and cloned.content != plain.content  # the reference changed the speech
    for wrong, param in [({"ref_text": None}, "ref_text"), ({"ref_audio": "bm90IGF1ZGlv"}, "ref_audio"),
                         ({"voice": "alloy"}, "ref_audio")]:
        response = httpx.post(f"{url}/v1/audio/speech", json={**body, **wrong}, timeout=60)
        assert response.status_code == 400 and response.json()["error"]["param"] == param, response.text


async def test_an_agent_with_remote_engines_says_its_speech_endpoint_is_elsewhere(transcriber):
    services = remote_services(["http://127.0.0.1:9"], transcriber)
    with running_server(services) as base:
        response = httpx.post(f"{base}/v1/audio/speech", json={"input": "Hi."})
        assert response.status_code == 501 and response.json()["error"]["code"] == "no_local_engine"


async def test_each_kind_is_asked_only_what_it_takes():
    """Our serve: the scene as instructions, the seed, speaker tags; vLLM-Omni's Higgs adapter refuses those (and a
    voice without its words), so it gets the words and a voice whose words are known."""
    from higgs_agent.model.prompts import AudioClip, VoiceReference
    from higgs_agent.remote.speech_api import speech_body
    from tests.vllm_omni_standin import VllmOmniSpeechRequest

    voice = VoiceReference(codes=None, transcript="", audio=AudioClip(np.zeros(2400, np.float32), 24_000))
    prompt = SpeechPrompt("[SPEAKER0] Hi there.", scene="A quiet room.", voice=voice)
    settings = SamplingSettings(seed=1, max_frames=9)
    ours = speech_body(prompt, settings, "higgs", None)
    assert ours["instructions"] == "A quiet room." and ours["seed"] == 1 and ours["input"] == prompt.text
    assert ours["ref_text"] == "" and ours["ref_audio"].startswith("data:audio/wav;base64,")
    theirs = speech_body(prompt, settings, "vllm-omni", "higgs_audio_v2")
    assert theirs == {"input": "Hi there.", "response_format": "pcm", "stream": True, "stream_format": "audio",
                      "max_new_tokens": 9, "model": "higgs_audio_v2"}
    VllmOmniSpeechRequest.model_validate(theirs)  # the stand-in's rules (vLLM-Omni's) take it
    named = speech_body(SpeechPrompt("Hi.", voice=VoiceReference(codes=None, transcript="Words.", audio=voice.audio)),
                        settings, "vllm-omni", None)
    assert named["ref_text"] == "Words." and speech_body(
        SpeechPrompt("Hi.", voice=VoiceReference(codes=None, transcript="Words.", audio=voice.audio)), settings,
        "vllm-omni", None)["ref_audio"] is named["ref_audio"]  # made once per clip, not per phrase
    VllmOmniSpeechRequest.model_validate(named)


async def test_serve_with_engine_urls_loads_no_model_and_speaks_through_them(transcriber):
    """The command line's path: `serve --engine-url` (no --model at all) answering a typed turn."""
    standin = VllmOmniStandIn(seconds_per_phrase=0.5)
    with serve_app_in_background(standin.app) as engine_url, \
            running_serve(["--engine-url", engine_url, "--engine-kind", "vllm-omni", "--engine-model", "higgs",
                           "--no-understanding"]) as agent:
        health = httpx.get(f"{agent.base}/health").json()
        assert health["device"] == "remote" and health["engines"][0]["url"] == engine_url
        client = await Client.connect(agent.base)
        assert client.events[0]["session"]["model"] == "higgs"
        assert len(await spoken_reply(client, "Hello there.")) == len(np.concatenate(standin.sent))
        await client.close()


async def test_serve_refuses_what_remote_engines_cannot_do():
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "higgs_agent", "serve", "--engine-url", "http://127.0.0.1:9",
                             "--responder", "native"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "--engine-url" in result.stderr


async def test_an_engine_that_errs_or_refuses_before_any_audio_is_passed_over_within_the_reply(transcriber):
    """An engine gone since its last health check (its connection refused) and one answering 500, before the reply
    has any audio: the same reply moves on to the next engine, and the failing ones are down."""
    import contextlib

    gone, broken, good = VllmOmniStandIn(), VllmOmniStandIn(fail_with=500), VllmOmniStandIn(seconds_per_phrase=0.5)
    with contextlib.ExitStack() as stack:
        leaving = contextlib.ExitStack()
        gone_url = leaving.enter_context(serve_app_in_background(gone.app))
        broken_url = stack.enter_context(serve_app_in_background(broken.app))
        good_url = stack.enter_context(serve_app_in_background(good.app))
        services = remote_services([gone_url, broken_url, good_url], transcriber, kind="vllm-omni",
                                   health_interval_s=600)  # no check between the first and the reply
        base = stack.enter_context(running_server(services))
        client = await Client.connect(base)
        httpx.get(f"{base}/health")  # starts the first round of checks
        deadline = time.monotonic() + 60
        while not all(remote.health_ms is not None for remote in services.engine.remotes):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        assert all(remote.up for remote in services.engine.remotes)
        leaving.close()  # the first engine goes away; the agent does not know yet
        assert len(await spoken_reply(client, "Hello there.")) == len(np.concatenate(good.sent))
        health = {e["url"]: e for e in httpx.get(f"{base}/health").json()["engines"]}
        await client.close()
    assert health[good_url]["up"] and not health[broken_url]["up"] and not health[gone_url]["up"]
    assert "500" in health[broken_url]["last_error"] and health[gone_url]["errors"] == 1
    assert not gone.requests and not broken.requests  # neither spoke a word of it
