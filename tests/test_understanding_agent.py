"""Understanding the caller, end to end over a real socket: real speech, the real speaker encoder and pitch
tracker, Whisper tiny.en — the caller's context reaches the client (higgs.input.context), the LLM's system
prompt and the scene the engine speaks with (#15)."""

from __future__ import annotations

import numpy as np
import pytest
from agent_server import Client, running_server
from higgs_agent.testing.fake_llm import FakeLLM
from test_understanding import PARCEL, REFUND, TABLE, WEATHER, turn

from higgs_agent.agent.responders.llm import LLMResponder
from higgs_agent.agent.services import AgentServices
from higgs_agent.audio import resample
from higgs_agent.model.sampling import SamplingSettings
from higgs_agent.streaming.engine import StreamingEngine
from higgs_agent.understanding import TurnAnalyzer

pytestmark = pytest.mark.timeout(300)
QUIET = np.zeros(36_000, dtype=np.float32)  # 1.5 s at 24 kHz: the server's VAD hears the turn end


@pytest.fixture(scope="module")
def setup(bundle, transcriber):
    analyzer = TurnAnalyzer.load()
    analyzer.warmup()
    with FakeLLM(reply="Okay.") as llm:
        engine = StreamingEngine(bundle)
        prompts = []
        real_stream = engine.stream

        def recording_stream(prompt, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003 - the engine's own
            prompts.append(prompt)
            return real_stream(prompt, *args, **kwargs)

        engine.stream = recording_stream  # what the engine is really asked to say, and how
        services = AgentServices(engine=engine, transcriber=transcriber, analyzer=analyzer,
                                 responders={"llm": LLMResponder(llm.base_url, model="fake")},
                                 default_responder="llm", sampling=SamplingSettings(greedy=True, max_frames=60))
        with running_server(services) as base:
            yield base, llm, prompts
    analyzer.close()


async def speak(client: Client, audio16k) -> dict:  # noqa: ANN001 - float32 16 kHz
    """One spoken turn (the server's VAD ends it); its context event, once the reply is done."""
    await client.send_audio(np.concatenate([resample(audio16k, 16000, 24000), QUIET]), rate=24000)
    context = await client.until("higgs.input.context")
    await client.until("response.done")
    return context


async def test_who_speaks_and_how_steers_the_words_and_the_voice(setup):
    base, llm, prompts = setup
    client = await Client.connect(base)
    calm = [await speak(client, turn(text)) for text in (WEATHER, TABLE, REFUND)]
    calm_requests, calm_prompts = list(llm.requests), list(prompts)
    upset = await speak(client, turn(PARCEL, wpm=210, pitch=75, sox=("vol", "2")))  # louder, higher, faster
    other = await speak(client, turn(TABLE, voice="en-us+f4", pitch=90))  # somebody else joins the call
    await client.close()

    assert [c["speaker"]["id"] for c in calm] == ["speaker 1"] * 3
    assert [c["speaker"]["is_new"] for c in calm] == [True, False, False]
    assert [c["emotion"]["state"] for c in calm] == ["neutral"] * 3
    assert calm[0]["language"] == "en" and calm[0]["emotion"]["pitch_hz"] > 50

    assert upset["speaker"] == {**upset["speaker"], "id": "speaker 1", "is_new": False}
    assert upset["emotion"]["state"] == "upset"
    assert upset["emotion"]["vs_baseline"]["energy_db"] > 4

    # the words: the LLM's system prompt carries the context line for the upset turn only
    assert not any("sounds upset" in r["messages"][0]["content"] for r in calm_requests)
    upset_request = next(r for r in llm.requests[len(calm_requests):]
                         if "sounds upset" in r["messages"][0]["content"])
    assert "Caller context: speaker 1 (returning), sounds upset" in upset_request["messages"][0]["content"]
    # the voice: the engine speaks the reply to the upset turn with a calm, reassuring delivery
    assert all(p.scene is None for p in calm_prompts)
    upset_scenes = [p.scene for p in prompts[len(calm_prompts):] if p.scene]
    assert upset_scenes and "reassuring" in upset_scenes[0]

    # a second caller: a new id, and the LLM is told who said what
    assert other["speaker"]["id"] == "speaker 2" and other["speaker"]["is_new"]
    user_turns = [m["content"] for m in llm.requests[-1]["messages"] if m["role"] == "user"]
    assert user_turns[0].startswith("[speaker 1] ") and user_turns[-1].startswith("[speaker 2] ")


async def test_clients_that_did_not_opt_in_get_no_context_events(setup):
    base, _, _ = setup
    client = await Client.connect(base, extensions=False)
    await speak_plain(client, turn(WEATHER))
    await client.close()
    assert "higgs.input.context" not in client.types()


async def speak_plain(client: Client, audio16k) -> None:  # noqa: ANN001
    await client.send_audio(np.concatenate([resample(audio16k, 16000, 24000), QUIET]), rate=24000)
    await client.until("response.done")
