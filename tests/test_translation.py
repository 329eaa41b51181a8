"""Speech translation end to end, offline: real speech, the real Whisper tiny.en, the local OpenAI-compatible
test server as the translator, the tiny model speaking each phrase in the caller's cloned voice while the
caller goes on talking (#16)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from agent_server import running_server
from speech import pad, synthesize, word_error_rate

from higgs_agent.agent.responders.echo import EchoResponder
from higgs_agent.agent.responders.llm import LLMResponder
from higgs_agent.agent.responders.translator import translation_prompt
from higgs_agent.agent.services import AgentServices
from higgs_agent.audio import read_wav, write_wav
from higgs_agent.model.sampling import SamplingSettings
from higgs_agent.streaming.engine import StreamingEngine
from higgs_agent.testing.fake_llm import FakeLLM, Turn
from higgs_agent.translation import interpret

pytestmark = pytest.mark.timeout(300)
FIRST = "good morning, I would like a large coffee with milk"
SECOND = "and could you also bring me a glass of water please"
FRENCH = ["Bonjour, je voudrais un grand café au lait.", "Et pourriez-vous aussi m'apporter un verre d'eau ?"]


def two_phrases(rate: int = 24000) -> np.ndarray:
    first, _ = synthesize(FIRST, sample_rate=rate)
    second, _ = synthesize(SECOND, sample_rate=rate)
    return np.concatenate([pad(first, rate, lead_ms=300, tail_ms=900), second])  # a pause the VAD hears


@pytest.fixture(scope="module")
def llm():
    with FakeLLM(chunk_chars=6) as server:
        yield server


async def test_each_phrase_comes_back_translated_in_the_callers_voice_while_they_talk_on(bundle, transcriber, llm):
    llm.turns = [Turn(text=FRENCH[0]), Turn(text=FRENCH[1])]
    engine = StreamingEngine(bundle)
    prompts = []
    real_stream = engine.stream

    def recording_stream(prompt, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        prompts.append(prompt)
        return real_stream(prompt, *args, **kwargs)

    engine.stream = recording_stream
    services = AgentServices(engine=engine, transcriber=transcriber,
                             responders={"echo": EchoResponder(), "llm": LLMResponder(llm.base_url, model="fake")},
                             default_responder="echo", sampling=SamplingSettings(greedy=True, max_frames=80))
    with running_server(services) as base:
        result = await interpret(base.replace("http", "ws") + "/v1/realtime", two_phrases(), 24000, "fr", "en",
                                 realtime_pace=True)

    assert [p.status for p in result.phrases] == ["completed", "completed"]
    assert word_error_rate(FIRST, result.phrases[0].heard) <= 0.3
    assert word_error_rate(SECOND, result.phrases[1].heard) <= 0.3
    assert [p.translation.strip() for p in result.phrases] == FRENCH
    for phrase in result.phrases:  # spoken, and timed per phrase
        assert sum(len(chunk) for chunk in phrase.audio) > 0 and phrase.latency_ms > 0
        assert phrase.server_latency_ms["first_audio_sent"] is not None
    # simultaneous: the first phrase was heard translated before the speaker had finished the second
    assert result.phrases[0].first_audio_s < result.phrases[1].phrase_end_s

    asked = llm.requests[-2:]  # the translator saw an interpreter's prompt and the one phrase to translate
    assert [r["messages"][0]["content"] for r in asked] == [translation_prompt("fr", "en")] * 2
    assert [len(r["messages"]) for r in asked] == [2, 2]
    assert word_error_rate(SECOND, asked[1]["messages"][1]["content"]) <= 0.3
    # the voice: the caller's own, cloned from their speech at 24 kHz, in the prompt of every phrase
    spoken = [p for p in prompts if p.text.strip() in FRENCH]
    assert len(spoken) == 2 and all(p.voice is not None for p in spoken)
    assert all(p.voice.frames >= 2 * 25 for p in spoken)  # seconds of the caller's speech, as codes


def test_translate_command_turns_a_recording_into_its_translation(tiny_dir, tmp_path, llm):
    llm.turns = [Turn(text=FRENCH[0]), Turn(text=FRENCH[1])]
    source, out = tmp_path / "in.wav", tmp_path / "out.wav"
    write_wav(source, two_phrases(24000))
    done = subprocess.run([sys.executable, "-m", "higgs_agent", "translate", "--wav", str(source), "--to", "fr",
                           "--from", "en", "-o", str(out), "--model", str(tiny_dir), "--llm-url", llm.base_url,
                           "--llm-model", "fake", "--fast", "--greedy", "--max-frames", "80"],
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Bonjour" in done.stdout and "verre" in done.stdout and "ms after the phrase ended" in done.stdout
    assert len(read_wav(out)) > 24000 * 0.5 and "2 of 2 phrases translated" in done.stderr
