"""The session without a socket: races between turns, replies, cancels and closes; protocol details.

A fake output records events; a scripted transcriber and responders make the timing controllable. The
tiny model really speaks (the engine is real)."""

from __future__ import annotations

import asyncio
import base64
import json
from dataclasses import dataclass

import numpy as np
import pytest

from higgs_agent.agent.events import DomainEvent, ReplyFinished
from higgs_agent.agent.responders.base import ReplyRequest
from higgs_agent.agent.responders.echo import EchoResponder
from higgs_agent.agent.services import AgentServices
from higgs_agent.agent.session import Session
from higgs_agent.audio import float_to_pcm16
from higgs_agent.model.asr import Transcript
from higgs_agent.model.sampling import SamplingSettings
from higgs_agent.streaming.engine import StreamingEngine
from higgs_agent.transport.realtime_codec import RealtimeEncoder, deliver


class FakeOutput:
    def __init__(self) -> None:
        self.events: list[dict] = []
        self.samples = 0
        self.encoder = RealtimeEncoder()

    async def send_event(self, event: DomainEvent) -> None:
        self.events.extend(json.loads(text) for text in self.encoder.texts(event))  # what a client reads

    async def send_audio(self, response_id: str, item_id: str, samples: np.ndarray) -> None:
        self.samples += len(samples)
        await asyncio.sleep(0)

    async def flush_audio(self, response_id: str) -> None:
        pass

    def discard_audio(self, item_id: str) -> int:
        return 0

    def heard_ms(self, item_id: str) -> float:
        return self.samples / 24.0

    def hold_audio(self) -> bool:
        return False

    def release_audio(self) -> None:
        pass

    def types(self) -> list[str]:
        return [e["type"] for e in self.events]

    def of(self, kind: str) -> list[dict]:
        return [e for e in self.events if e["type"] == kind]


@dataclass
class ScriptedTranscriber:
    text: str = "hello there"
    delay_s: float = 0.0
    name: str = "scripted"
    english_only: bool = True
    busy: bool = False

    def transcribe(self, audio: np.ndarray, language: str | None = None, prompt: str | None = None) -> Transcript:
        import time

        time.sleep(self.delay_s)
        return Transcript(self.text, "en", 1.0, len(audio) / 16000, self.delay_s * 1000)

    async def transcribe_async(self, audio: np.ndarray, language: str | None = None,
                               prompt: str | None = None) -> Transcript:
        return await asyncio.to_thread(self.transcribe, audio, language, prompt)

    def submit(self, audio: np.ndarray, language: str | None = None, prompt: str | None = None,
               draft: bool = False) -> asyncio.Future:
        return asyncio.ensure_future(self.transcribe_async(audio, language, prompt))

    def close(self) -> None:
        pass


class Held:
    """A responder that says one phrase, then waits until released."""

    name = "held"

    def __init__(self) -> None:
        self.release = asyncio.Event()

    async def reply(self, request: ReplyRequest):
        request.first_text()
        yield "One moment."
        await self.release.wait()
        yield "Done."

    async def aclose(self) -> None:
        pass


class Broken:
    name = "broken"

    async def reply(self, request: ReplyRequest):
        raise RuntimeError("boom")
        yield ""  # pragma: no cover - makes this an async generator

    async def aclose(self) -> None:
        pass


@pytest.fixture
def make_session(bundle):
    engine = StreamingEngine(bundle)

    async def make(transcriber=None, output: FakeOutput | None = None, **responders) -> tuple[Session, FakeOutput]:
        services = AgentServices(engine=engine, transcriber=transcriber or ScriptedTranscriber(),
                                 responders={"echo": EchoResponder(), **responders}, default_responder="echo",
                                 sampling=SamplingSettings(greedy=True, max_frames=60))
        output = output or FakeOutput()
        session = Session(services, output)
        await session.open()
        return session, output

    yield make
    engine.close()


async def send(target: Session, **event) -> None:
    await deliver(target, json.dumps(event))


async def until(output: FakeOutput, kind: str, count: int = 1, timeout: float = 60) -> dict:
    for _ in range(int(timeout / 0.01)):
        found = output.of(kind)
        if len(found) >= count:
            return found[count - 1]
        await asyncio.sleep(0.01)
    raise AssertionError(f"no {kind} (#{count}); got {output.types()}")


async def text_turn(session: Session, text: str) -> None:
    await send(session, type="conversation.item.create",
               item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]})


async def test_a_responder_that_crashes_fails_the_response_and_the_session_goes_on(make_session):
    session, out = await make_session(broken=Broken())
    await send(session, type="session.update", session={"higgs": {"responder": "broken"}})
    await text_turn(session, "hi")
    await send(session, type="response.create")
    done = await until(out, "response.done")
    assert done["response"]["status"] == "failed"
    await send(session, type="session.update", session={"responder": "echo"})
    await send(session, type="response.create")
    assert (await until(out, "response.done", 2))["response"]["status"] == "completed"
    await session.close()


async def held_reply(make_session) -> tuple[Session, FakeOutput]:
    """A session whose reply (to a typed "hi") says one phrase, then waits: a response in progress."""
    session, out = await make_session(held=Held())
    await send(session, type="session.update", session={"responder": "held"})
    await text_turn(session, "hi")
    await send(session, type="response.create")
    return session, out


async def test_one_response_at_a_time_and_a_queued_one_can_be_cancelled(make_session):
    session, out = await held_reply(make_session)
    await send(session, type="response.create")  # queued behind or running: either way refused
    error = await until(out, "error")
    assert error["error"]["code"] == "conversation_already_has_active_response"
    await until(out, "response.output_audio_transcript.delta")
    await send(session, type="response.cancel")
    assert (await until(out, "response.done"))["response"]["status"] == "cancelled"
    assert len(out.of("response.created")) == 1
    await session.close()


async def test_the_clients_truncate_wins_over_the_servers_estimate(make_session):
    session, out = await held_reply(make_session)
    added = await until(out, "response.output_item.added")
    await until(out, "response.output_audio_transcript.delta")
    for _ in range(500):  # until the first phrase's audio is out
        if session.reply is not None and session.reply.item.audio_ms > 0 and out.samples:
            break
        await asyncio.sleep(0.01)
    item_id = added["item"]["id"]
    await send(session, type="conversation.item.truncate", item_id=item_id, content_index=0, audio_end_ms=0)
    await send(session, type="response.cancel")
    done = await until(out, "response.done")
    assert done["response"]["output"][0]["content"][0]["transcript"] == ""
    assert [e["audio_end_ms"] for e in out.of("conversation.item.truncated")] == [0]
    await session.close()


async def test_close_during_a_queued_turn_starts_no_reply_and_returns(make_session):
    held = Held()
    session, out = await make_session(ScriptedTranscriber(delay_s=0.3), held=held)
    await send(session, type="session.update", session={"responder": "held",
                                                        "audio": {"input": {"turn_detection": None}}})
    await text_turn(session, "first")
    await send(session, type="response.create")
    await until(out, "response.output_audio_transcript.delta")
    audio = base64.b64encode(float_to_pcm16(np.zeros(24000, dtype=np.float32))).decode()
    await send(session, type="input_audio_buffer.append", audio=audio)
    await send(session, type="input_audio_buffer.commit")
    await asyncio.wait_for(session.close(), 10)  # the turn worker and the reply are cancelled and awaited
    assert session.reply is None or session.reply.done
    assert len(out.of("response.created")) == 1
    assert session.services.engine.active_streams == 0


async def test_hostile_values_get_error_events(make_session):
    session, out = await make_session()
    await deliver(session, '{"type": "session.update", "session": {"audio": {"input": {"format": '
                                 '{"type": "audio/pcm", "rate": 1e400}}}}}')
    await deliver(session, "[" * 100_000)
    await send(session, type="session.update", session={"audio": {"input": {"turn_detection": {
        "type": "server_vad", "silence_duration_ms": 1e400}}}})
    codes = [e["error"]["code"] for e in out.of("error")]
    assert len(codes) == 3 and "server_error" not in codes
    await send(session, type="session.update", session={"instructions": "ok"})
    assert out.of("session.updated")[-1]["session"]["instructions"] == "ok"
    await session.close()


async def test_sdk_defaults_semantic_vad_and_item_retrieve_are_served(make_session):
    session, out = await make_session()
    await send(session, type="session.update", session={"instructions": "be nice", "audio": {"input": {
        "turn_detection": {"type": "semantic_vad", "eagerness": "high", "interrupt_response": True}}}})
    updated = (await until(out, "session.updated"))["session"]
    assert updated["instructions"] == "be nice"
    assert updated["audio"]["input"]["turn_detection"]["type"] == "semantic_vad"
    policy = session.config.turn_detection.end_of_turn  # high: pauses judged soon, a sure judge not needed
    assert (policy.pause_ms, policy.threshold) == (60, 0.35)
    assert session.config.turn_detection.vad.pause_ms == 60
    assert session.config.turn_detection.vad.silence_duration_ms == policy.max_wait_ms
    await text_turn(session, "hello")
    item_id = (await until(out, "conversation.item.added"))["item"]["id"]
    await send(session, type="conversation.item.retrieve", item_id=item_id)
    retrieved = await until(out, "conversation.item.retrieved")
    assert retrieved["item"]["content"][0] == {"type": "input_text", "text": "hello"}
    await session.close()


async def test_per_response_instructions_and_content_part_types(make_session):
    seen = []

    class Recorder(EchoResponder):
        name = "recorder"

        async def reply(self, request):
            seen.append(request.messages[0]["content"])
            async for phrase in super().reply(request):
                yield phrase

    session, out = await make_session(recorder=Recorder())
    await send(session, type="session.update", session={"responder": "recorder"})
    await text_turn(session, "hello")
    await send(session, type="response.create", response={"instructions": "Greet the user."})
    await until(out, "response.done")
    assert seen == ["Greet the user."]
    assert (await until(out, "response.content_part.added"))["part"]["type"] == "audio"
    assert (await until(out, "response.created"))["response"]["output"] == []
    await session.close()


async def test_a_turn_the_user_talked_on_after_is_answered_once_with_the_next(make_session):
    """Split utterance: the user pauses past the VAD's silence, then goes on. The first half must not get a
    reply of its own that starts while they are still talking."""
    from speech import pad, synthesize

    session, out = await make_session(ScriptedTranscriber(delay_s=0.5))
    half, _ = synthesize("I would like to book", sample_rate=24000)
    audio = np.concatenate([pad(half, 24000, lead_ms=300, tail_ms=800), pad(half, 24000, tail_ms=1200)])
    await send(session, type="input_audio_buffer.append", audio=base64.b64encode(float_to_pcm16(audio)).decode())
    assert len(out.of("input_audio_buffer.speech_stopped")) == 2
    second = out.of("input_audio_buffer.speech_stopped")[1]["item_id"]
    await until(out, "response.done")
    # Settled: the second turn is understood (its item.done is sent in the same step that would start a
    # reply to it), and no reply is in flight or queued. Whatever was going to answer has answered by now.
    for _ in range(6000):
        understood = any(e["item"]["id"] == second for e in out.of("conversation.item.done"))
        if understood and session.reply is None and session._turns.empty():
            break
        await asyncio.sleep(0.01)
    else:
        raise AssertionError("the session did not settle")
    assert len(out.of("response.created")) == 1
    assert len(out.of("conversation.item.input_audio_transcription.completed")) == 2
    await session.close()


async def test_say_speaks_fixed_words_as_the_assistants_turn(make_session):
    session, out = await make_session()
    await session.say("Thanks for calling. How can I help?")
    done = await until(out, "response.done")
    assert done["response"]["status"] == "completed"
    said = "".join(e["delta"] for e in out.of("response.output_audio_transcript.delta"))
    assert said == "Thanks for calling. How can I help?" and out.samples > 0
    assert session.conversation.items[-1].role == "assistant"
    assert session.conversation.items[-1].text == "Thanks for calling. How can I help?"
    await session.close()


async def test_keypad_digits_become_one_user_turn_the_responder_reads(make_session):
    session, out = await make_session()
    await session.dtmf("4")
    await session.dtmf("2")
    assert [e["event"] for e in out.of("input_audio_buffer.dtmf_event_received")] == ["4", "2"]
    added = await until(out, "conversation.item.added", timeout=10)
    assert added["item"]["content"][0]["text"] == "The caller pressed 4, 2 on the keypad."
    done = await until(out, "response.done")  # echo reads the digits back: they reached the responder
    said = "".join(e["delta"] for e in out.of("response.output_audio_transcript.delta"))
    assert done["response"]["status"] == "completed" and "4, 2" in said
    await session.close()


class PacedOutput(FakeOutput):
    """An output that plays audio out at real time after the response is over (WebRTC, phones): 1 s of each
    reply is still unplayed when the caller speaks."""

    def __init__(self) -> None:
        super().__init__()
        self.queued: dict[str, int] = {}

    async def send_audio(self, response_id: str, item_id: str, samples: np.ndarray) -> None:
        await super().send_audio(response_id, item_id, samples)
        self.queued[item_id] = 24000

    def discard_audio(self, item_id: str) -> int:
        return self.queued.pop(item_id, 0)

    def heard_ms(self, item_id: str) -> float:
        return max(0.0, self.samples / 24.0 - 1000.0)


class HeldAfterDoneOutput(PacedOutput):
    """Holds the reply task inside its `response.done` send (the client has read it): the window in which
    the reply has ended for the client but its task has not yet finished."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()

    async def send_event(self, event: DomainEvent) -> None:
        await super().send_event(event)
        if isinstance(event, ReplyFinished):
            await self.gate.wait()


@pytest.mark.parametrize("held", [False, True], ids=["settled", "task_still_finishing"])
async def test_a_barge_in_after_response_done_cuts_the_reply_still_playing(make_session, held):
    from speech import pad, synthesize

    session, out = await make_session(output=HeldAfterDoneOutput() if held else PacedOutput())
    try:
        await text_turn(session, "The quick brown fox jumps over the lazy dog near the river bank today.")
        await send(session, type="response.create")
        done = await until(out, "response.done")
        item_id = done["response"]["output"][0]["id"]
        speech, _ = synthesize("wait a moment", sample_rate=24000)
        audio = base64.b64encode(float_to_pcm16(pad(speech, 24000, lead_ms=200))).decode()
        await send(session, type="input_audio_buffer.append", audio=audio)
        truncated = await until(out, "conversation.item.truncated", timeout=10)
        assert truncated["item_id"] == item_id
        assert out.types().index("input_audio_buffer.speech_started") < out.types().index("conversation.item.truncated")
        heard = session.conversation.get(item_id)
        assert heard.status == "incomplete" and len(heard.text.split()) < 14  # cut to what was played
    finally:
        if held:
            out.gate.set()
        await session.close()


async def test_observers_hear_the_conversation_as_domain_events_whatever_the_client_is_told(make_session, caplog):
    from speech import pad, synthesize

    from higgs_agent.agent import events as ev

    session, out = await make_session(output=PacedOutput())
    seen: list[ev.DomainEvent] = []
    session.observe(lambda event: 1 / 0)  # a broken observer is logged and changes nothing
    session.observe(seen.append)
    try:
        spoken, _ = synthesize("I would like to book a table", sample_rate=24000)
        audio = base64.b64encode(float_to_pcm16(pad(spoken, 24000, lead_ms=300, tail_ms=1200))).decode()
        await send(session, type="input_audio_buffer.append", audio=audio)
        done = await until(out, "response.done")
        reply_id, reply_item = done["response"]["id"], done["response"]["output"][0]["id"]
        await session.dtmf("5")
        interrupt, _ = synthesize("wait a moment", sample_rate=24000)
        await send(session, type="input_audio_buffer.append",
                   audio=base64.b64encode(float_to_pcm16(pad(interrupt, 24000, lead_ms=200))).decode())
        truncated = await until(out, "conversation.item.truncated", timeout=10)
    finally:
        await session.close()

    user_item = out.of("input_audio_buffer.speech_stopped")[0]["item_id"]
    said = "".join(e["delta"] for e in out.of("response.output_audio_transcript.delta") if e["item_id"] == reply_item)
    facts = [e for e in seen if isinstance(e, ev.UserSpeechEnded | ev.UserTranscribed | ev.TurnTimed
                                           | ev.ReplyFinished | ev.KeyPressed)]
    stopped = out.of("input_audio_buffer.speech_stopped")[0]
    assert facts[:5] == [
        ev.UserSpeechEnded(user_item, stopped["audio_end_ms"]),
        ev.UserTranscribed(user_item, "hello there", "en", facts[1].audio_s),
        ev.TurnTimed(reply_id, user_item, reply_item, facts[2].stages_ms, at=facts[2].at,
                     engine_start_ms=facts[2].engine_start_ms),
        ev.ReplyFinished(reply_id, "completed", reply_item, said, facts[3].state),
        ev.KeyPressed("5", facts[4].at),
    ]
    # Everything the client was told came from the same stream, in the same order.
    assert [type(e).__name__ for e in seen if isinstance(e, ev.UserSpeechStarted | ev.UserSpeechEnded)][:2] == \
        ["UserSpeechStarted", "UserSpeechEnded"]
    assert facts[3].state.items[0].id == reply_item and facts[1].audio_s > 1.0
    # The client never asked for the latency event (an extension); observers get the figures all the same.
    assert not out.of("higgs.turn.latency") and facts[2].stages_ms["transcript"] is not None
    # traces split the wait for the first frame where the engine began the phrase (agent/tracing.py)
    timed = facts[2]
    assert timed.stages_ms["first_text"] <= timed.engine_start_ms <= timed.stages_ms["first_audio_frame"], timed
    assert ev.ReplyCut(reply_item, pytest.approx(truncated["audio_end_ms"], abs=1)) in seen
    assert "an observer failed on UserSpeechEnded" in caplog.text


@pytest.mark.parametrize("how", ["after_the_reply", "barge_in_mid_reply", "closed_mid_reply"])
async def test_a_closed_session_and_its_audio_are_freed_without_the_cycle_collector(make_session, how):
    """A session must not sit in a reference cycle once closed: the collector's full passes are rare in a big
    process, and a session holds up to two minutes of input audio (the soak's memory creep, #20)."""
    import gc
    import weakref

    from speech import pad, synthesize

    speech, _ = synthesize("hello there, how are you today", sample_rate=24000)
    audio = base64.b64encode(float_to_pcm16(pad(speech, 24000, lead_ms=300, tail_ms=1200))).decode()
    gc.collect()
    gc.disable()
    try:
        session, out = await make_session()
        await send(session, type="input_audio_buffer.append", audio=audio)
        if how == "after_the_reply":
            await until(out, "response.done")
        else:
            await until(out, "response.output_audio_transcript.delta")
        if how == "barge_in_mid_reply":
            await send(session, type="input_audio_buffer.append", audio=audio)
            await until(out, "response.done")
            assert out.of("response.done")[0]["response"]["status"] == "cancelled"
        freed, tape = weakref.ref(session), weakref.ref(session.input.tape)  # the tape that holds the audio
        await session.close()
        del session
        assert tape() is None and freed() is None, "the closed session is kept alive by a reference cycle"
    finally:
        gc.enable()


async def test_a_closed_session_lets_go_of_its_audio_whatever_still_refers_to_it(make_session):
    """Transports keep a closed session for a while (aiortc's handlers, a carrier's paced output): its audio must not
    wait for them."""
    from speech import pad, synthesize

    speech, _ = synthesize("hello there, how are you today", sample_rate=24000)
    session, out = await make_session()
    await send(session, type="input_audio_buffer.append",
               audio=base64.b64encode(float_to_pcm16(pad(speech, 24000, lead_ms=300, tail_ms=1200))).decode())
    await until(out, "response.done")
    assert len(session.input.tape.slice_ms(0, 10_000)) and session.cloning.voice.speech_s > 0
    await session.close()
    assert not len(session.input.tape.slice_ms(0, 10_000)) and session.cloning.voice.speech_s == 0
