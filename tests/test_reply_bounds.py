"""No await on a reply's path without an end (#20): a stall injected at each stage ends the reply within its
bound as `failed` with a `reply_stalled` error naming the stage, counts it in `higgs_reply_stalls_total`, and
leaves the session answering the next turn. Stages a reply can do without (the user's codes, token counts,
who spoke) are counted and the reply goes on."""

from __future__ import annotations

import asyncio
import base64
import threading

import numpy as np
import pytest
from test_session import FakeOutput, ScriptedTranscriber, send, text_turn, until

from higgs_agent.agent.reply import ReplyLimits
from higgs_agent.agent.responders.base import ReplyRequest
from higgs_agent.agent.responders.echo import EchoResponder
from higgs_agent.agent.services import AgentServices
from higgs_agent.agent.session import Session
from higgs_agent.audio import float_to_pcm16
from higgs_agent.model.sampling import SamplingSettings
from higgs_agent.streaming.engine import EngineLimits, StreamingEngine

BOUND_S = 0.5  # every bound in these tests: a stall shows within it, a healthy stage on 2 slow cores does not


class Silent:
    """A responder that never says anything (a stuck LLM connection)."""

    name = "silent"

    async def reply(self, request: ReplyRequest):
        await asyncio.Event().wait()
        yield ""  # pragma: no cover

    async def aclose(self) -> None:
        pass


class Gate:
    """A stall on the model worker's thread, opened when the test is done with it."""

    def __init__(self) -> None:
        self.armed = False
        self.entered = threading.Event()
        self.open = threading.Event()

    def stall(self) -> None:
        if self.armed:
            self.entered.set()
            self.open.wait(60)


@pytest.fixture
def make_session(bundle):
    engines: list[StreamingEngine] = []
    gates: list[Gate] = []

    async def make(limits: ReplyLimits | None = None, engine_limits: EngineLimits | None = None,
                   transcriber=None, **responders) -> tuple[Session, FakeOutput]:
        engine = StreamingEngine(bundle, limits=engine_limits or EngineLimits(admission_s=30, item_s=30, job_s=30))
        engines.append(engine)
        services = AgentServices(engine=engine, transcriber=transcriber or ScriptedTranscriber(),
                                 responders={"echo": EchoResponder(), "silent": Silent(), **responders},
                                 default_responder="echo", sampling=SamplingSettings(greedy=True, max_frames=30),
                                 reply_limits=limits or ReplyLimits())
        output = FakeOutput()
        session = Session(services, output)
        await session.open()
        return session, output

    make.gate = lambda: gates.append(Gate()) or gates[-1]  # type: ignore[attr-defined]
    yield make
    for gate in gates:
        gate.open.set()
    for engine in engines:
        engine.close()


def stall_method(target: object, name: str, gate: Gate, monkeypatch) -> Gate:  # noqa: ANN001
    """`target.name` sits on the worker thread behind `gate` (armed) before it runs."""
    method = getattr(target, name)

    def stalled(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        gate.stall()
        return method(*args, **kwargs)

    monkeypatch.setattr(target, name, stalled)
    gate.armed = True
    return gate


def stall_jobs(engine: StreamingEngine, stalled: str, gate: Gate, monkeypatch) -> Gate:  # noqa: ANN001
    """The engine's jobs of stage `stalled` sit on the worker thread (behind `gate`) instead of running."""
    run = engine.run

    def stalled_run(fn, stage="engine_job"):  # noqa: ANN001, ANN202
        return run((lambda: (gate.stall(), fn())[1]) if stage == stalled else fn, stage=stage)

    monkeypatch.setattr(engine, "run", stalled_run)
    return gate


def stalls(session: Session, stage: str) -> float:
    return session.services.metrics.registry.get_sample_value("higgs_reply_stalls_total", {"stage": stage}) or 0.0


async def stalled_reply(session: Session, out: FakeOutput, stage: str, count: int = 1) -> None:
    done = await until(out, "response.done", count)
    assert done["response"]["status"] == "failed", done
    error = done["response"]["status_details"]["error"]
    assert error["code"] == "reply_stalled" and stage in error["message"], error
    assert any(e["error"]["code"] == "reply_stalled" and stage in e["error"]["message"] for e in out.of("error"))
    assert stalls(session, stage) == 1


async def answers_next_turn(session: Session, out: FakeOutput, count: int) -> None:
    """The session goes on: the next turn gets a spoken, completed reply (under the default bounds again: the
    test's short ones were for the stall, and a healthy turn on a slow, shared machine may need more)."""
    session.services.reply_limits = ReplyLimits()
    session.services.engine.limits = EngineLimits()
    await send(session, type="session.update", session={"higgs": {"responder": "echo"}})
    await text_turn(session, "are you still there")
    await send(session, type="response.create")
    done = await until(out, "response.done", count)
    assert done["response"]["status"] == "completed"
    assert out.samples > 0


async def commit_silence(session: Session) -> None:
    audio = base64.b64encode(float_to_pcm16(np.zeros(24000, dtype=np.float32))).decode()
    await send(session, type="input_audio_buffer.append", audio=audio)
    await send(session, type="input_audio_buffer.commit")


async def ask(session: Session, text: str = "hello") -> None:
    await text_turn(session, text)
    await send(session, type="response.create")


async def test_a_responder_that_never_speaks_fails_the_reply(make_session):
    session, out = await make_session(ReplyLimits(responder_s=BOUND_S))
    await send(session, type="session.update", session={"higgs": {"responder": "silent"}})
    await ask(session)
    await stalled_reply(session, out, "responder")
    await answers_next_turn(session, out, 2)
    await session.close()


async def test_a_voice_reference_that_never_comes_fails_the_reply(make_session, monkeypatch):
    session, out = await make_session(ReplyLimits(voice_reference_s=BOUND_S))
    stuck = asyncio.Event()

    async def never(name, tenant="default"):  # noqa: ANN001, ANN202
        await stuck.wait()

    monkeypatch.setattr(session.services, "voice_reference", never)
    await ask(session)
    await stalled_reply(session, out, "voice_reference")
    stuck.set()
    await answers_next_turn(session, out, 2)
    await session.close()


async def test_a_lease_the_worker_never_grants_fails_the_reply_and_is_not_leaked(make_session):
    session, out = await make_session(engine_limits=EngineLimits(admission_s=BOUND_S, item_s=30, job_s=30))
    engine = session.services.engine
    gate = make_session.gate()
    gate.armed = True
    engine.worker.job(gate.stall)  # the worker sits in one job: no command runs
    assert await asyncio.to_thread(gate.entered.wait, 30)
    await ask(session)
    await stalled_reply(session, out, "lease")
    gate.open.set()
    await answers_next_turn(session, out, 2)
    assert engine.scheduler.leases == 0 and engine.busy_slots == 0
    await session.close()


async def test_a_stream_that_never_starts_fails_the_reply(make_session, monkeypatch):
    session, out = await make_session(engine_limits=EngineLimits(admission_s=BOUND_S, item_s=30, job_s=30))
    engine = session.services.engine
    gate = stall_method(engine, "_start", make_session.gate(), monkeypatch)
    await ask(session)
    await stalled_reply(session, out, "stream_start")
    gate.armed = False
    gate.open.set()
    await answers_next_turn(session, out, 2)
    await asyncio.wrap_future(engine.worker.command(lambda: None))
    assert engine.scheduler.leases == 0
    await session.close()


async def test_a_stream_whose_audio_never_comes_fails_the_reply(make_session, monkeypatch):
    session, out = await make_session(engine_limits=EngineLimits(admission_s=30, item_s=BOUND_S, job_s=30))
    gate = stall_method(session.services.engine.scheduler, "step", make_session.gate(), monkeypatch)
    await ask(session)
    await stalled_reply(session, out, "engine_audio")
    gate.armed = False
    gate.open.set()
    await answers_next_turn(session, out, 2)
    await session.close()


async def test_token_counting_that_never_ends_is_counted_and_the_reply_completes(make_session, monkeypatch):
    session, out = await make_session(engine_limits=EngineLimits(admission_s=30, item_s=30, job_s=BOUND_S))
    gate = stall_jobs(session.services.engine, "count_tokens", make_session.gate(), monkeypatch)
    gate.armed = True
    await ask(session)
    done = await until(out, "response.done")
    assert done["response"]["status"] == "completed"  # usage is a report: it never fails the reply
    assert stalls(session, "count_tokens") >= 1
    gate.armed = False
    gate.open.set()
    await session.close()


async def test_a_transcription_that_never_ends_fails_the_transcript_and_the_session_goes_on(make_session):
    session, out = await make_session(ReplyLimits(transcription_s=BOUND_S),
                                      transcriber=ScriptedTranscriber(delay_s=2.0))
    await send(session, type="session.update", session={"audio": {"input": {"turn_detection": None}}})
    await commit_silence(session)
    failed = await until(out, "conversation.item.input_audio_transcription.failed")
    assert "transcription did not finish" in failed["error"]["message"]
    assert stalls(session, "transcription") == 1
    await answers_next_turn(session, out, 1)
    await session.close()


async def test_a_reply_that_stops_progressing_is_given_up_before_the_next_turn(make_session):
    """The last guard: a reply stuck where no inner bound reaches is stopped once it has sent nothing for
    `previous_reply_s`, and the next turn is answered."""
    session, out = await make_session(ReplyLimits(responder_s=60, previous_reply_s=BOUND_S))
    await send(session, type="session.update", session={"higgs": {"responder": "silent"}})
    await ask(session)
    await until(out, "response.created")
    # A committed turn under turn detection that does not interrupt: it waits for the reply before it.
    await send(session, type="session.update", session={"higgs": {"responder": "echo"}, "audio": {"input": {
        "turn_detection": {"type": "server_vad", "interrupt_response": False}}}})
    await commit_silence(session)
    await stalled_reply(session, out, "previous_reply")
    second = await until(out, "response.done", 2)
    assert second["response"]["status"] == "completed"
    await session.close()


async def test_encoding_the_users_turn_that_never_ends_is_counted_and_the_reply_goes_on(make_session, monkeypatch):
    """The caller's own voice needs the turn's codes; a stuck encode is given up on and the reply speaks anyway."""
    session, out = await make_session(engine_limits=EngineLimits(admission_s=30, item_s=30, job_s=BOUND_S))
    gate = stall_jobs(session.services.engine, "user_codes", make_session.gate(), monkeypatch)
    gate.armed = True
    await send(session, type="session.update", session={"audio": {"input": {"turn_detection": None},
                                                                   "output": {"voice": "caller"}}})
    await commit_silence(session)
    await send(session, type="response.create")
    while not stalls(session, "user_codes"):  # the encode was given up on ...
        await asyncio.sleep(0.01)
    gate.armed = False
    gate.open.set()  # ... and the worker freed: the reply goes on without the codes, in the default voice
    done = await until(out, "response.done")
    assert done["response"]["status"] == "completed", done
    assert out.samples > 0
    await session.close()
