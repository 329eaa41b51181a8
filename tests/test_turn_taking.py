"""Knowing when the caller is done, and having their words ready (#22): semantic_vad's pause judge, transcripts
begun at a pause, partial transcripts while the caller speaks. Real speech (espeak-ng), the real Whisper tiny.en
and the real smart-turn v3.2; the session in-process, audio pushed as a client would append it.

Each test waits for the event that proves a step (a pause judged, a delta sent) before it sends more audio, so
nothing depends on how fast this machine transcribes."""

from __future__ import annotations

import asyncio
import base64
import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from speech import normalize_text, silence, synthesize, word_error_rate
from test_session import FakeOutput, send, until

from higgs_agent.agent.end_of_turn import (
    EndOfTurnPolicy,
    SmartTurn,
    smart_turn_weights,
    words_verdict,
)
from higgs_agent.agent.events import DomainEvent, InterruptionJudged, PauseJudged
from higgs_agent.agent.partial_transcript import StablePrefix
from higgs_agent.agent.responders.echo import EchoResponder
from higgs_agent.agent.services import AgentServices
from higgs_agent.agent.session import Session
from higgs_agent.audio import float_to_pcm16
from higgs_agent.model.sampling import SamplingSettings
from higgs_agent.streaming.engine import StreamingEngine
from higgs_agent.transport.audio_sink import ReplyAudioSink
from higgs_agent.transport.realtime_codec import RealtimeEncoder

RATE = 24_000  # the session's default input: pcm16 at 24 kHz
UNFINISHED = "The reason I am calling is because"  # Whisper reads it with its open ending in every voice tried
REST = "my order never arrived."
on_session_loop = pytest.mark.asyncio(loop_scope="session")  # the loop the session fixture's sessions live on


@pytest.fixture(scope="module")
def turn_model():
    return SmartTurn()


@pytest.fixture
async def make_session(bundle, transcriber, turn_model):
    engine = StreamingEngine(bundle)
    sessions: list[Session] = []

    async def make(turn_detection: dict, output=None) -> tuple[Session, FakeOutput, list[PauseJudged]]:
        services = AgentServices(engine=engine, transcriber=transcriber, responders={"echo": EchoResponder()},
                                 default_responder="echo", sampling=SamplingSettings(greedy=True, max_frames=20),
                                 turn_model=turn_model)
        output = output or FakeOutput()
        session = Session(services, output)
        judged: list[PauseJudged] = []
        session.observe(lambda event: judged.append(event) if isinstance(event, PauseJudged) else None)
        await session.open()
        await send(session, type="session.update", session={"audio": {"input": {"turn_detection": turn_detection}}})
        await until(output, "session.updated")
        sessions.append(session)
        return session, output, judged

    yield make
    for session in sessions:
        await session.close()
    engine.close()


async def append(session: Session, audio: np.ndarray, chunk_ms: int = 100) -> None:
    step = RATE * chunk_ms // 1000
    for start in range(0, len(audio), step):
        data = base64.b64encode(float_to_pcm16(audio[start:start + step])).decode()
        await send(session, type="input_audio_buffer.append", audio=data)


async def judged_count(judged: list[PauseJudged], count: int, timeout_s: float = 60) -> PauseJudged:
    async with asyncio.timeout(timeout_s):
        while len(judged) < count:
            await asyncio.sleep(0.01)
    return judged[count - 1]


def speech(text: str) -> np.ndarray:
    return synthesize(text, sample_rate=RATE)[0]


# --- the judge's parts ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "verdict"), [
    ("The reason I am calling is because", "open"), ("I would like a table for", "open"),
    ("My name is...", "open"), ("So, um", "open"), ("Well,", "open"),
    ("What time does the museum open today?", "closed"), ("No thanks.", "closed"), ("Okay", "unsure"), ("", "unsure"),
])
def test_words_say_whether_a_clause_is_left_open(text, verdict):
    assert words_verdict(text, "en") == verdict


def test_eagerness_sets_how_soon_and_how_sure():
    policies = [EndOfTurnPolicy.for_eagerness(e) for e in ("high", "medium", "low")]
    assert [p.pause_ms for p in policies] == sorted(p.pause_ms for p in policies)
    assert [p.max_wait_ms for p in policies] == sorted(p.max_wait_ms for p in policies)
    auto = EndOfTurnPolicy.for_eagerness("auto")
    assert auto.complete(0.0, "closed") and not auto.complete(0.99, "open")  # words closed/open decide at auto
    assert auto.complete(0.6, "unsure") and not auto.complete(0.4, "unsure")  # else the voice
    high, low = policies[0], policies[2]
    assert high.complete(0.9, "open") and not low.complete(0.2, "closed")


def test_smart_turn_weights_come_with_the_install(turn_model):
    assert smart_turn_weights().is_file()
    audio = synthesize("Thank you, that is all I needed.", sample_rate=16_000)[0]
    assert turn_model.probability(np.concatenate([audio, silence(200, 16_000)])) > 0.5


@given(st.lists(st.lists(st.sampled_from(["a", "b", "c", "d"]), max_size=6), min_size=1, max_size=8))
def test_deltas_are_never_taken_back(readings):
    prefix, sent, previous = StablePrefix(), "", []
    for words in readings:
        before = prefix.sent.split()
        sent += prefix.update(" ".join(words))
        now = prefix.sent.split()
        assert now[:len(before)] == before  # only ever extended
        if now != before:  # and only with words this reading and the one before agree on
            assert words[:len(now)] == now and previous[:len(now)] == now
        previous = words
    assert sent == prefix.sent


# --- semantic_vad in a session ----------------------------------------------------------------------------------


@on_session_loop
async def test_a_pause_after_an_unfinished_clause_does_not_end_the_turn(make_session):
    session, out, judged = await make_session({"type": "semantic_vad", "eagerness": "auto"})
    policy = session.config.turn_detection.end_of_turn
    await append(session, np.concatenate([silence(300, RATE), speech(UNFINISHED), silence(400, RATE)]))
    first = await judged_count(judged, 1)
    assert first.words == "open" and not first.complete, first
    await append(session, silence(1000, RATE))  # a whole second of silence, still under the longest wait
    assert first.audio_end_ms + 1400 < first.audio_end_ms + policy.max_wait_ms
    assert out.of("input_audio_buffer.speech_stopped") == []  # the judge said wait; the VAD's limit is far
    await append(session, np.concatenate([speech(REST), silence(400, RATE)]))
    second = await judged_count(judged, 2)
    assert second.complete, second
    stopped = await until(out, "input_audio_buffer.speech_stopped")
    assert stopped["audio_end_ms"] == second.audio_end_ms  # the judge ended it, at the pause it judged
    done = await until(out, "conversation.item.input_audio_transcription.completed")
    assert word_error_rate(f"{UNFINISHED} {REST}", done["transcript"]) <= 0.3, done  # one turn, both parts


@on_session_loop
async def test_a_finished_sentence_ends_the_turn_at_its_first_pause(make_session):
    session, out, judged = await make_session({"type": "semantic_vad"})
    policy = session.config.turn_detection.end_of_turn
    await append(session, np.concatenate([silence(300, RATE), speech("What time does the museum open today?"),
                                          silence(policy.pause_ms + 240, RATE)]))
    verdict = await judged_count(judged, 1)
    assert verdict.complete and verdict.words == "closed", verdict
    stopped = await until(out, "input_audio_buffer.speech_stopped")
    assert stopped["audio_end_ms"] == verdict.audio_end_ms
    done = await until(out, "conversation.item.input_audio_transcription.completed")
    assert done["transcript"] == verdict.transcript  # the reading made at the pause is the final transcript


@on_session_loop
async def test_the_transcript_is_begun_at_the_pause_under_server_vad(make_session, transcriber):
    """server_vad still ends turns on its silence, but the words are read at the first 200 ms of it."""
    session, out, judged = await make_session({"type": "server_vad", "silence_duration_ms": 800})
    calls = []
    real = transcriber.transcribe

    def counted(audio, *args, **kwargs):
        calls.append(len(audio))
        return real(audio, *args, **kwargs)

    transcriber.transcribe = counted
    try:
        await append(session, np.concatenate([silence(300, RATE), speech("No thanks."), silence(1000, RATE)]),
                     chunk_ms=1500)
        done = await until(out, "conversation.item.input_audio_transcription.completed")
    finally:
        del transcriber.transcribe
    assert normalize_text(done["transcript"]) == "no thanks"
    assert len(calls) == 1 and judged == []  # read once, at the pause; no judge under server_vad


@on_session_loop
async def test_partial_transcripts_arrive_while_the_caller_speaks(make_session, transcriber):
    session, out, _ = await make_session({"type": "server_vad"})
    sentence = "my package never arrived and I have been waiting for two whole weeks now"
    audio = np.concatenate([silence(300, RATE), speech(sentence)])
    step = RATE // 10
    for start in range(0, len(audio), step):  # 100 ms at a time, letting each reading finish before going on
        await append(session, audio[start:start + step])
        async with asyncio.timeout(60):
            while transcriber.busy:
                await asyncio.sleep(0.01)
    deltas = out.of("conversation.item.input_audio_transcription.delta")
    assert deltas, "no partial transcript while the caller was speaking"
    assert out.of("input_audio_buffer.speech_stopped") == []  # all of them came before the turn ended
    await append(session, silence(800, RATE))
    done = await until(out, "conversation.item.input_audio_transcription.completed")
    deltas = out.of("conversation.item.input_audio_transcription.delta")
    partial = "".join(d["delta"] for d in deltas)
    assert {d["item_id"] for d in deltas} == {done["item_id"]}
    assert done["transcript"].startswith(partial) or word_error_rate(sentence, partial) <= 0.5
    assert word_error_rate(sentence, done["transcript"]) <= 0.3


# --- interruptions that mean it ---------------------------------------------------------------------------------


class PulledOutput(ReplyAudioSink):
    """A listener whose playback the test drives: reply audio waits in the sink until pulled, as WebRTC's track
    pulls it every 20 ms."""

    def __init__(self) -> None:
        super().__init__(mode="pulled", wire_rate=RATE)
        self.events: list[dict] = []
        self.encoder = RealtimeEncoder()

    async def send_event(self, event: DomainEvent) -> None:
        self.events.extend(json.loads(text) for text in self.encoder.texts(event))

    def types(self) -> list[str]:
        return [e["type"] for e in self.events]

    def of(self, kind: str) -> list[dict]:
        return [e for e in self.events if e["type"] == kind]

    def play(self, frames: int) -> int:
        return sum(self.next_frame() is not None for _ in range(frames))


async def speaking_session(make_session) -> tuple[Session, PulledOutput, list]:
    """A semantic_vad session whose reply to a first turn is queued and 200 ms of it heard."""
    output = PulledOutput()
    session, out, _ = await make_session({"type": "semantic_vad"}, output=output)
    judged: list[InterruptionJudged] = []
    session.observe(lambda event: judged.append(event) if isinstance(event, InterruptionJudged) else None)
    await append(session, np.concatenate([silence(300, RATE), speech("Tell me about the weather tomorrow."),
                                          silence(500, RATE)]))
    await until(out, "response.done", timeout=120)
    assert out.play(10) == 10  # the caller has heard 200 ms of the reply, which goes on playing
    return session, out, judged


async def interruption_judged(judged: list, timeout_s: float = 60) -> InterruptionJudged:
    async with asyncio.timeout(timeout_s):
        while not judged:
            await asyncio.sleep(0.01)
    return judged[0]


@on_session_loop
async def test_okay_said_over_a_reply_leaves_it_playing(make_session):
    session, out, judged = await speaking_session(make_session)
    # 3 s of silence: the turn ends by the VAD's longest wait if the pause judge does not end it first, so this
    # test holds the interruption check to account, not the end-of-turn verdict (tested above)
    await append(session, np.concatenate([speech("Okay."), silence(3000, RATE)]), chunk_ms=20)
    started = await until(out, "input_audio_buffer.speech_started", count=2)
    verdict = await interruption_judged(judged)
    assert verdict == InterruptionJudged(started["item_id"], interrupted=False)
    assert out.of("conversation.item.truncated") == [] and not out.held
    assert out.play(5) == 5  # it plays on from where it was held
    await send(session, type="conversation.item.create", item={"type": "message", "role": "user", "content": [
        {"type": "input_text", "text": "and the day after?"}]})
    await send(session, type="response.create")
    await until(out, "response.created", count=2)  # the typed turn's; none was made for "okay"
    assert [e["response"]["id"] for e in out.of("response.created")][1] != out.of("response.done")[0]["response"]["id"]
    assert len(out.of("response.created")) == 2


@on_session_loop
async def test_wait_stop_cuts_the_reply_at_once_and_is_answered(make_session):
    session, out, judged = await speaking_session(make_session)
    reply_item = out.of("response.output_item.added")[0]["item"]["id"]
    await append(session, speech("Wait, stop!")[: RATE // 2], chunk_ms=20)  # the first half second of it
    await until(out, "input_audio_buffer.speech_started", count=2)
    assert out.held and out.play(5) == 0  # silent from the moment the caller spoke, as a barge-in always was
    await append(session, np.concatenate([speech("Wait, stop!")[RATE // 2:], silence(3000, RATE)]), chunk_ms=20)
    verdict = await interruption_judged(judged)
    assert verdict.interrupted
    truncated = await until(out, "conversation.item.truncated")
    assert truncated["item_id"] == reply_item and 0 < truncated["audio_end_ms"] <= 200  # at most what was played
    await until(out, "response.created", count=2)  # and the caller's words are answered


@on_session_loop
async def test_speech_over_a_reply_under_server_vad_cuts_it_at_once(make_session):
    output = PulledOutput()
    session, out, _ = await make_session({"type": "server_vad"}, output=output)
    await append(session, np.concatenate([silence(300, RATE), speech("Tell me about the weather tomorrow."),
                                          silence(700, RATE)]))
    await until(out, "response.done", timeout=120)
    out.play(10)
    await append(session, np.concatenate([speech("Okay."), silence(700, RATE)]), chunk_ms=20)
    truncated = await until(out, "conversation.item.truncated")  # OpenAI's documented server_vad behaviour
    assert 0 < truncated["audio_end_ms"] <= 200


@on_session_loop
async def test_the_turn_so_far_is_copied_only_when_it_is_read():
    """heard() runs on every append; copying a long turn's audio each time would cost O(n^2) over the turn."""
    from higgs_agent.agent.listening import PARTIAL_EVERY_MS, Listening, ListeningHooks
    from higgs_agent.model.asr import Transcript

    class Idle:  # a transcriber that is never busy and reads at once
        busy = False

        def submit(self, audio, language=None, prompt=None, draft=False):
            future = asyncio.get_running_loop().create_future()
            future.set_result(Transcript("words", "en", 1.0, 0.0, 0.0))
            return future

    async def nothing(*args):
        return None

    listening = Listening(Idle(), ListeningHooks(send=nothing, end_turn=nothing, language=lambda: (None, None),
                                                 publish=lambda event: None, on_words=nothing,
                                                 turn_model=lambda: None))
    listening.started("item_1", 0)
    copies = []
    for end_ms in range(20, 10_001, 20):  # ten seconds of speech, 20 ms per append
        listening.heard((0, end_ms), end_ms, lambda: copies.append(1) or np.zeros(16, dtype=np.float32))
    assert len(copies) == 10_000 // PARTIAL_EVERY_MS  # one per reading, not one per append
    listening.close()
