"""Voices end to end over a real server: uploaded over HTTP, used by a realtime session and by the speech
endpoint (their codes in the engine's prompt), kept from other tenants, and a voice per speaker (#16)."""

from __future__ import annotations

import io
import subprocess
import sys

import httpx
import pytest
import soundfile as sf
import torch
from agent_server import Client, running_server
from speech import pad, synthesize

from higgs_agent.agent.responders.echo import EchoResponder
from higgs_agent.agent.responders.llm import LLMResponder
from higgs_agent.agent.services import AgentServices
from higgs_agent.model.prompts import delayed_audio_ids
from higgs_agent.model.sampling import SamplingSettings
from higgs_agent.server import voice_library
from higgs_agent.streaming.engine import StreamingEngine
from higgs_agent.testing.fake_llm import FakeLLM
from higgs_agent.transport.tenants import build_authenticator

pytestmark = pytest.mark.timeout(300)
ACME, GLOBEX = "sk-acme", "sk-globex"
ALICE = "the quick brown fox jumps over the lazy dog near the river"
BOB = "she sells sea shells by the sea shore every single morning"


def wav_bytes(text: str, voice: str) -> bytes:
    audio, _ = synthesize(text, voice=voice, sample_rate=24000)
    buffer = io.BytesIO()
    sf.write(buffer, pad(audio, 24000, lead_ms=200, tail_ms=200), 24000, format="WAV")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def setup(bundle, transcriber, tmp_path_factory):
    keys = tmp_path_factory.mktemp("keys") / "keys.txt"
    keys.write_text(f"acme: {ACME}\nglobex: {GLOBEX}\n")
    engine = StreamingEngine(bundle)
    prompts = []
    real_stream = engine.stream

    def recording_stream(prompt, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        prompts.append(prompt)
        return real_stream(prompt, *args, **kwargs)

    engine.stream = recording_stream  # what the engine is asked to say, and in which voice
    library = voice_library(str(tmp_path_factory.mktemp("voices")), None, bundle, engine)
    with FakeLLM(reply="[SPEAKER0] Hello there, welcome back. [SPEAKER1] Hi! Good to see you again.") as llm:
        services = AgentServices(engine=engine, transcriber=transcriber, voices=library,
                                 responders={"echo": EchoResponder(), "llm": LLMResponder(llm.base_url, model="fake")},
                                 default_responder="echo", sampling=SamplingSettings(greedy=True, max_frames=60))
        with running_server(services, authenticator=build_authenticator(keys_file=keys)) as base:
            for name, text, voice in (("alice", ALICE, "en-us+f3"), ("bob", BOB, "en-us+m3")):
                done = httpx.post(f"{base}/v1/voices", headers={"Authorization": f"Bearer {ACME}"}, timeout=120,
                                  files={"file": (f"{name}.wav", wav_bytes(text, voice), "audio/wav")},
                                  data={"name": name, "transcript": text})
                assert done.status_code == 200, done.text
            yield base, library, prompts


def codes_of(library, name: str) -> torch.Tensor:  # noqa: ANN001
    return library.reference("acme", name).codes


async def typed_turn(client: Client, text: str) -> dict:
    await client.send({"type": "conversation.item.create", "item": {
        "type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}})
    await client.send({"type": "response.create"})
    return await client.until("response.done")


async def test_an_uploaded_voice_speaks_for_the_session_and_the_speech_endpoint(setup, bundle):
    base, library, prompts = setup
    client = await Client.connect(base, additional_headers={"Authorization": f"Bearer {ACME}"})
    await client.send({"type": "session.update", "session": {"audio": {"output": {"voice": "alice"}}}})
    assert (await client.until("session.updated"))["session"]["audio"]["output"]["voice"] == "alice"
    before = len(prompts)
    done = await typed_turn(client, "Good morning.")
    await client.close()
    assert done["response"]["status"] == "completed"
    session_prompt = prompts[before]
    assert session_prompt.voice is not None and torch.equal(session_prompt.voice.codes, codes_of(library, "alice"))
    assert session_prompt.voice.transcript == ALICE

    before = len(prompts)
    speech = httpx.post(f"{base}/v1/audio/speech", headers={"Authorization": f"Bearer {ACME}"}, timeout=120,
                        json={"input": "Good evening.", "voice": "alice", "response_format": "pcm", "max_frames": 40})
    assert speech.status_code == 200 and len(speech.content) > 0
    inputs = prompts[before]  # the speech endpoint hands the engine its inputs, built off the loop
    rows = delayed_audio_ids(bundle.processor, codes_of(library, "alice"))
    assert torch.equal(inputs.audio_input_ids[0], rows)


async def test_another_tenant_can_neither_see_nor_use_a_voice(setup):
    base, _, _ = setup
    listed = httpx.get(f"{base}/v1/voices", headers={"Authorization": f"Bearer {GLOBEX}"}).json()["data"]
    assert "alice" not in [voice["name"] for voice in listed]
    refused = httpx.post(f"{base}/v1/audio/speech", headers={"Authorization": f"Bearer {GLOBEX}"},
                         json={"input": "Hi.", "voice": "alice", "response_format": "pcm"})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "voice"
    client = await Client.connect(base, additional_headers={"Authorization": f"Bearer {GLOBEX}"})
    await client.send({"type": "session.update", "session": {"audio": {"output": {"voice": "alice"}}}})
    error = await client.until("error")
    updated = await client.until("session.updated")
    await client.close()
    assert error["error"]["param"] == "session.audio.output.voice" and "alice" in error["error"]["message"]
    assert updated["session"]["audio"]["output"]["voice"] == "default"


async def test_a_two_speaker_reply_carries_both_voices(setup):
    base, library, prompts = setup
    client = await Client.connect(base, additional_headers={"Authorization": f"Bearer {ACME}"})
    await client.send({"type": "session.update", "session": {"higgs": {"responder": "llm",
                                                                        "speakers": ["alice", "bob"]}}})
    await client.until("session.updated")
    before = len(prompts)
    done = await typed_turn(client, "Say hello, both of you.")
    await client.close()
    assert done["response"]["status"] == "completed"
    spoken = prompts[before:]
    # phrases as the splitter cut them; the last, cut from the middle of speaker 1's turn, keeps its tag
    assert [p.text for p in spoken] == ["[SPEAKER0] Hello there, welcome back.", "[SPEAKER1] Hi!",
                                        "[SPEAKER1] Good to see you again."]
    for prompt in spoken:  # every phrase carries both references, in speaker order
        assert [r.transcript for r in prompt.speaker_voices] == [ALICE, BOB]
        assert torch.equal(prompt.speaker_voices[0].codes, codes_of(library, "alice"))
        assert torch.equal(prompt.speaker_voices[1].codes, codes_of(library, "bob"))
    said = done["response"]["output"][0]["content"][0]["transcript"]
    assert "[SPEAKER" not in said and said.startswith("Hello there")  # the listener's transcript: words only


def test_speak_takes_a_library_voice_by_name(setup, tiny_dir, tmp_path):
    _, library, _ = setup
    out = tmp_path / "out.wav"

    def speak(*voice: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "higgs_agent", "speak", "Hello.", "-o", str(out), "--model",
                               str(tiny_dir), "--voices-dir", str(library.root), *voice, "--greedy",
                               "--max-frames", "30"], capture_output=True, text=True, timeout=180)

    done = speak("--voice", "alice", "--tenant", "acme")
    assert done.returncode == 0, done.stderr[-2000:]
    assert sf.info(str(out)).samplerate == 24000 and sf.info(str(out)).frames > 0
    refused = speak("--voice", "alice")  # another tenant's voice (the default tenant's library has none)
    assert refused.returncode != 0 and "no voice of that id or name" in refused.stderr
