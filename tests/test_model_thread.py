"""No model, codec or tokenizer work ever runs on the event loop (#11): every forward of the model and of each
codec module, every scheduler command and every tokenizer / processor call is recorded with the thread it ran
on, while the real server takes a spoken turn answered in the caller's cloned voice, is barged in on, and
serves a speech request. The model, the codec and the scheduler must run on the model worker's thread, the
speaker and emotion analysis on the analyzer's, Whisper on its own; the event loop's thread runs none of it."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from agent_server import Client, running_server
from speech import pad, synthesize

from higgs_agent.agent.responders.echo import EchoResponder
from higgs_agent.agent.responders.llm import LLMResponder
from higgs_agent.agent.services import AgentServices
from higgs_agent.model.sampling import SamplingSettings
from higgs_agent.streaming.engine import StreamingEngine
from higgs_agent.streaming.scheduler import BatchScheduler
from higgs_agent.streaming.worker import THREAD_NAME as MODEL_THREAD
from higgs_agent.testing.fake_llm import FakeLLM
from higgs_agent.understanding import TurnAnalyzer
from higgs_agent.understanding.analyzer import THREAD_NAME as ANALYZER_THREAD

pytestmark = pytest.mark.timeout(300)
REPLY = "Sure thing. I booked a table for two at seven tonight, by the window, with a view of the river."


class ThreadLedger:
    """(what ran, on which thread, with an event loop running in that thread) for every recorded call."""

    def __init__(self) -> None:
        self.calls: Counter[tuple[str, str, bool]] = Counter()
        self._lock = threading.Lock()

    def note(self, what: str) -> None:
        try:
            asyncio.get_running_loop()
            on_loop = True
        except RuntimeError:
            on_loop = False
        with self._lock:
            self.calls[(what, threading.current_thread().name, on_loop)] += 1

    def wrap(self, what: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def recorded(*args: Any, **kwargs: Any) -> Any:  # noqa: ANN401 - whatever the wrapped call takes
            self.note(what)
            return fn(*args, **kwargs)
        return recorded

    def threads(self, what: str) -> set[str]:
        return {thread for (kind, thread, _), _n in self.calls.items() if kind == what}

    def on_a_loop(self) -> list[tuple[str, str]]:
        return sorted({(kind, thread) for (kind, thread, on_loop) in self.calls if on_loop})


@pytest.fixture(scope="module")
def llm():
    with FakeLLM(reply=REPLY, chunk_chars=4, delay_s=0.01) as server:
        yield server


@pytest.fixture(scope="module")
def analyzer():
    analyzer = TurnAnalyzer.load()
    yield analyzer
    analyzer.close()


@pytest.fixture(scope="module")
def services(bundle, transcriber, llm, analyzer):
    return AgentServices(engine=StreamingEngine(bundle), transcriber=transcriber, analyzer=analyzer,
                         responders={"echo": EchoResponder(), "llm": LLMResponder(llm.base_url, model="fake")},
                         default_responder="llm", sampling=SamplingSettings(greedy=True, max_frames=200))


@pytest.fixture
def ledger(bundle, transcriber, monkeypatch):
    """Every entry point of model work, recorded (hooks and wrappers, all removed after the test)."""
    ledger = ThreadLedger()
    hooks = [bundle.model.register_forward_pre_hook(lambda *_: ledger.note("model"))]
    hooks += [module.register_forward_pre_hook(lambda *_: ledger.note("codec")) for module in bundle.codec.modules()]
    tokenizer, processor = type(bundle.tokenizer), type(bundle.processor)
    for cls, name in ((tokenizer, "__call__"), (tokenizer, "encode"), (tokenizer, "decode"),
                      (tokenizer, "apply_chat_template"), (processor, "__call__"), (processor, "apply_chat_template")):
        monkeypatch.setattr(cls, name, ledger.wrap("tokenizer", getattr(cls, name)))
    for name in ("start", "step", "reap"):  # (`cancel` only flags the stream: its slot is freed in `step`)
        monkeypatch.setattr(BatchScheduler, name, ledger.wrap("scheduler", getattr(BatchScheduler, name)))
    monkeypatch.setattr(TurnAnalyzer, "_read_audio", ledger.wrap("analyzer", TurnAnalyzer._read_audio))
    monkeypatch.setattr(type(transcriber), "transcribe", ledger.wrap("asr", type(transcriber).transcribe))
    yield ledger
    for hook in hooks:
        hook.remove()


async def test_no_model_codec_or_tokenizer_work_runs_on_the_event_loop(services, ledger):
    turn, _ = synthesize("hello, can you book a table for two tonight", sample_rate=24000)
    with running_server(services) as base:
        client = await Client.connect(base)
        await client.send({"type": "session.update", "session": {"audio": {"output": {"voice": "caller"}}}})
        await client.until("session.updated")
        await client.send_audio(pad(turn, 24000, lead_ms=300, tail_ms=1200))
        assert (await client.until("response.done"))["response"]["status"] == "completed"
        await client.send_audio(pad(turn, 24000, lead_ms=300, tail_ms=1200))  # a second turn ...
        await client.until("response.output_audio.delta")
        await client.send_audio(pad(turn, 24000, lead_ms=0, tail_ms=1200))  # ... talked over: cancelled
        assert (await client.until("response.done"))["response"]["status"] == "cancelled"
        await client.close()
        async with httpx.AsyncClient() as http:
            speech = await http.post(f"{base}/v1/audio/speech", json={"input": "Hi.", "response_format": "pcm",
                                                                       "max_frames": 20}, timeout=60)
        assert speech.status_code == 200 and speech.content

    assert ledger.on_a_loop() == [], ledger.calls  # the point of it all
    assert ledger.threads("model") == ledger.threads("codec") == ledger.threads("scheduler") == {MODEL_THREAD}
    assert ledger.threads("tokenizer") <= {MODEL_THREAD}
    assert ledger.threads("analyzer") and all(t.startswith(ANALYZER_THREAD) for t in ledger.threads("analyzer"))
    assert ledger.threads("asr") and all(t.startswith("higgs-asr") for t in ledger.threads("asr"))
    recorded = {kind for kind, _, _ in ledger.calls}
    assert recorded == {"model", "codec", "scheduler", "tokenizer", "analyzer", "asr"}  # each path was taken
