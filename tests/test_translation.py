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

from higgs_agent.agent.interpreting import CLAUSE_OPENERS, ClauseSpans
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
                                 realtime_pace=True, simultaneous=False)  # whole phrases (clauses: below)

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
                           "--llm-model", "fake", "--fast", "--greedy", "--max-frames", "80", "--whole-turns"],
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Bonjour" in done.stdout and "verre" in done.stdout and "ms after the phrase ended" in done.stdout
    assert len(read_wav(out)) > 24000 * 0.5 and "2 of 2 phrases translated" in done.stderr


# --- simultaneous interpreting: clauses translated while the speaker goes on -------------------------------

LONG = ("I arrived at the station early this morning, then I walked to the old market by the river, "
        "and after that I met my sister for lunch near the bridge")
CLAUSES = ["Je suis arrivé tôt à la gare ce matin,", "puis je suis allé au vieux marché près de la rivière,",
           "et ensuite j'ai déjeuné avec ma sœur près du pont."]


def test_clauses_are_handed_over_once_each_and_the_rest_completes_the_turn():
    from hypothesis import given
    from hypothesis import strategies as st


    words = st.lists(st.sampled_from(["we", "went", "home,", "then", "ate.", "And", "slept", "well;", "ok"]),
                     max_size=30)

    @given(words, st.lists(st.integers(min_value=0, max_value=30), max_size=8))
    def check(turn: list[str], cuts: list[int]) -> None:
        spans = ClauseSpans()
        handed: list[str] = []
        for cut in sorted(cuts):  # the agreed words only ever grow
            span = spans.agreed("item", " ".join(turn[:cut]))
            if span is not None:
                assert len(span.split()) >= spans.min_words
                handed += span.split()
        assert handed + spans.rest("item", " ".join(turn)).split() == turn  # nothing lost, nothing twice

    check()


async def test_a_long_turn_is_heard_translated_clause_by_clause_before_the_speaker_finishes(bundle, transcriber, llm):
    """One turn of three clauses spoken without a pause the VAD would end it on: the first clauses are
    translated from the agreed partial transcript while the speaker goes on; the rest when the turn ends."""
    llm.turns = [Turn(text=text) for text in CLAUSES]
    engine = StreamingEngine(bundle)
    voices = []
    real_stream = engine.stream

    def recording_stream(prompt, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        voices.append(prompt.voice)
        return real_stream(prompt, *args, **kwargs)

    engine.stream = recording_stream
    services = AgentServices(engine=engine, transcriber=transcriber,
                             responders={"echo": EchoResponder(), "llm": LLMResponder(llm.base_url, model="fake")},
                             default_responder="echo", sampling=SamplingSettings(greedy=True, max_frames=40))
    speech, _ = synthesize(LONG, sample_rate=24000)
    asked_before = len(llm.requests)
    with running_server(services) as base:
        result = await interpret(base.replace("http", "ws") + "/v1/realtime", pad(speech, 24000, lead_ms=300),
                                 24000, "fr", "en", realtime_pace=True)

    parts = [p.part for p in result.phrases]
    assert parts[0] == "clause" and set(parts) <= {"clause", "rest"}, parts
    assert len({p.item_id for p in result.phrases}) == 1  # one turn of the speaker's
    assert all(p.status == "completed" for p in result.phrases)
    # every clause the interpreter was asked about, once, in order: together the whole turn
    asked = [r["messages"][1]["content"] for r in llm.requests[asked_before:]]
    assert asked == [p.heard for p in result.phrases]
    assert word_error_rate(LONG, " ".join(asked)) <= 0.3
    for span, following in zip(asked, asked[1:], strict=False):  # handed over where a clause ends
        assert span.endswith((",", ".", ";")) or following.split()[0].lower() in CLAUSE_OPENERS, (span, following)
    # the first clause's translation was spoken while the speaker still talked: its response began before
    # the turn ended, and its audio arrived
    [turn_end] = result.turn_ends_s.values()
    first = result.phrases[0]
    assert first.created_s < turn_end and sum(len(chunk) for chunk in first.audio) > 0
    # in the speaker's own voice from the first clause on: cloned from their speech so far
    assert voices and all(voice is not None for voice in voices)
