"""The browser voice-chat page (clients/web) in real Chromium against the real server: espeak-ng speech as the
microphone, Whisper tiny.en hearing it, the tiny Higgs model answering through the echo responder, and the
page's own measurements of what it really played (a level meter on its output path, after the barge-in gate).

Screenshots go to $HIGGS_TEST_ARTIFACTS (or pytest's tmp dir); each test prints where."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
from agent_server import running_server
from browser import CHROMIUM, ChatPage, artifacts_folder, chromium, summarize, write_fake_microphone
from speech import normalize_text, silence, synthesize, word_error_rate

from higgs_agent.agent.responders.echo import EchoResponder
from higgs_agent.agent.services import AgentServices
from higgs_agent.model.sampling import SamplingSettings
from higgs_agent.streaming.engine import StreamingEngine

pytestmark = pytest.mark.timeout(240)

# The echo responder says this back for ~6.5 s (the tiny model's greedy reply to these words): long enough to
# still be playing when the interruption starts.
STORY = "please read me the news about the weather, the traffic and the football scores"
INTERRUPTION = "wait, stop"
RATE = 16_000
GREEDY = SamplingSettings(greedy=True, max_frames=200)
SETTLE_MS = 150  # a barge-in mutes the output within this (the gate's next render quantum, plus a report)


@pytest.fixture(scope="module", autouse=True)
def need_chromium():
    if CHROMIUM is None:
        pytest.fail("chromium is not installed: run scripts/install.sh --test as root (apt-get install chromium)")


@pytest.fixture(scope="module")
def services(bundle, transcriber):
    return AgentServices(engine=StreamingEngine(bundle), transcriber=transcriber,
                         responders={"echo": EchoResponder()}, default_responder="echo", sampling=GREEDY)


@pytest.fixture(scope="module")
def server(services):
    with running_server(services) as base:
        yield base


@pytest.fixture(scope="module")
def conversation_mic(tmp_path_factory) -> Path:
    """A question, then, while its ~6 s answer plays, an interruption. The lead-in covers the page's start:
    Chromium's fake microphone plays the file from the moment the page opens the microphone."""
    story, _ = synthesize(STORY, sample_rate=RATE)
    stop, _ = synthesize(INTERRUPTION, sample_rate=RATE)
    audio = np.concatenate([silence(2000, RATE), story, silence(5500, RATE), stop, silence(7000, RATE)])
    return write_fake_microphone(tmp_path_factory.mktemp("mic") / "conversation.wav", audio, RATE)


@pytest.fixture(scope="module")
def greeting_mic(tmp_path_factory) -> Path:
    hello, _ = synthesize("hello there, how are you today", sample_rate=RATE)
    audio = np.concatenate([silence(1000, RATE), hello, silence(3000, RATE)])
    return write_fake_microphone(tmp_path_factory.mktemp("mic") / "greeting.wav", audio, RATE)


@pytest.fixture
def artifacts(tmp_path) -> Path:
    return artifacts_folder(tmp_path)


def audible_ms_at(output: list[dict], at: float) -> float:
    """The page's cumulative audible output (ms of samples with sound) as of performance time `at`."""
    before = [report["audibleMs"] for report in output if report["at"] <= at]
    return before[-1] if before else 0.0


@pytest.mark.parametrize("transport", ["websocket", "webrtc"])
async def test_a_spoken_turn_is_shown_and_played_and_talking_over_the_reply_stops_it(
        transport, server, conversation_mic, artifacts):
    async with chromium(conversation_mic) as browser:
        chat = await ChatPage.open(browser, server, transport=transport)
        await chat.talk()
        await chat.wait_for("voiceChat.stats.transport !== null", timeout_s=20)
        assert (await chat.stats())["transport"] == transport
        if transport == "webrtc":  # the call id, from the answer's Location header
            assert (await chat.stats())["callId"].startswith("rtc_")

        # Both turns are heard and answered; the second reply plays out to its end.
        await chat.wait_for("voiceChat.stats.responses.filter((r) => r.doneAt).length >= 2", timeout_s=60)
        await chat.wait_for("voiceChat.stats.lastSoundAt > voiceChat.stats.responses[1].at "
                            "&& performance.now() - voiceChat.stats.lastSoundAt > 800", timeout_s=30)
        stats = await chat.stats()
        users = await chat.texts(".turn.user .text")
        agents = await chat.texts(".turn.assistant .text")
        print(f"\n{transport}: heard {users}, said {agents}")
        print(summarize(stats))

        # What the user said is shown, as Whisper heard it through the browser's audio processing.
        assert len(users) == 2, (users, chat.log())
        assert word_error_rate(STORY, users[0]) <= 0.25, users[0]
        assert word_error_rate(INTERRUPTION, users[1]) <= 0.5, users[1]
        assert normalize_text(agents[0]) == normalize_text(users[0])  # the echo responder's words, shown

        # The first reply was really played (samples with sound at the page's output) until the user spoke.
        assert len(stats["bargeIns"]) == 1, f"expected one barge-in, the page saw {stats['bargeIns']}"
        [barge_in] = stats["bargeIns"]
        output = stats["output"]
        played_before = audible_ms_at(output, barge_in["at"])
        assert played_before >= 300, f"the reply was not playing when the user spoke on ({played_before:.0f} ms)"

        # Then it stopped at once: nothing more came out until the reply to the interruption began.
        second = stats["responses"][1]
        assert second["at"] > barge_in["at"] + SETTLE_MS
        leaked = audible_ms_at(output, second["at"]) - audible_ms_at(output, barge_in["at"] + SETTLE_MS)
        assert leaked <= 5, f"{leaked:.0f} ms of the interrupted reply played after the barge-in"
        first_reply = chat.page.locator(".turn.assistant").first
        first_item = await first_reply.get_attribute("data-item-id")
        assert barge_in["itemId"] == first_item
        assert "interrupted" in (await first_reply.get_attribute("class"))
        # The server, too, cut the reply to what was heard (a truncate, or the response cancelled).
        assert first_item in stats["serverCuts"], "the server never cut the interrupted reply"

        # ... and the reply to the interruption was played.
        assert audible_ms_at(output, float("inf")) - audible_ms_at(output, second["at"]) >= 300

        if transport == "websocket":
            # The page told the server how much of the first reply was heard: what it played, less than it got.
            [truncate] = stats["truncates"]
            assert truncate["item_id"] == first_item and truncate["content_index"] == 0
            assert played_before <= truncate["audio_end_ms"] + 60  # (the meter counts only samples with sound)
            assert 0 < truncate["audio_end_ms"] < stats["receivedMs"][first_item]
            assert f"interrupted at {truncate['audio_end_ms'] / 1000:.1f} s" in await first_reply.inner_text()
            second_item = await chat.page.locator(".turn.assistant").nth(1).get_attribute("data-item-id")
            assert stats["playedMs"][second_item] == pytest.approx(stats["receivedMs"][second_item], abs=1)

        # The latency readout: the page's own time to first audio, and the server's stages.
        assert len(stats["firstAudioMs"]) == 2 and all(ms > 0 for ms in stats["firstAudioMs"].values())
        assert int(await chat.page.get_attribute("#ttfa", "data-ms")) > 0
        stages = {stage: await chat.page.get_attribute(f"#stages [data-stage='{stage}']", "data-ms")
                  for stage in ("end_of_turn", "transcript", "first_text", "first_audio_frame", "first_audio_sent")}
        assert all(value for value in stages.values()), stages  # every stage shown
        assert int(stages["end_of_turn"]) >= 500, stages  # server_vad: its silence, counted in audio time
        later = [int(stages[s]) for s in ("transcript", "first_text", "first_audio_frame", "first_audio_sent")]
        assert later == sorted(later) and later[-1] > 0, stages
        print(f"{transport}: page time to first audio (ms) {stats['firstAudioMs']}, server stages {stages}")

        print("laptop:", await chat.screenshot(artifacts, f"{transport}-laptop"))
        await chat.page.set_viewport_size({"width": 390, "height": 844})
        print("phone:", await chat.screenshot(artifacts, f"{transport}-phone"))
        assert await chat.page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")

        if transport == "webrtc":  # hanging up ends the call on the server, and its session with it
            await chat.talk()
            await wait_until(lambda: httpx.get(f"{server}/health").json()["webrtc_calls"] == 0, 10, "the call ending")


async def test_failures_get_a_message_that_says_what_to_do(services, bundle, transcriber, greeting_mic):
    async with chromium(greeting_mic) as browser:
        # A server that wants a key: none, a wrong one (both transports), then the right one.
        with running_server(services, api_key="sesame") as keyed:
            chat = await ChatPage.open(browser, keyed, transport="websocket")
            assert await failure(chat) == "key-missing"
            await chat.page.fill("#api-key", "wrong")
            assert await failure(chat) == "key-refused"
            await chat.page.select_option("#transport", "auto")  # WebRTC first: the key goes to client_secrets
            assert await failure(chat) == "key-refused"
            await chat.page.fill("#api-key", "sesame")  # the right key mints a client secret, which places the call
            await chat.talk()
            await chat.wait_for("document.querySelector('#status').dataset.state === 'listening'", 20)
            assert (await chat.stats())["transport"] == "webrtc"
            await chat.talk()  # hang up
            await chat.page.select_option("#transport", "websocket")
            await chat.page.fill("#api-key", "sesame")
            await chat.talk()
            await chat.wait_for("document.querySelector('#status').dataset.state === 'listening'", 20)
            await chat.talk()  # hang up

        # A server whose every slot is taken: the turn is heard, the reply refused.
        busy = AgentServices(engine=StreamingEngine(bundle, slots=1), transcriber=transcriber,
                             responders={"echo": EchoResponder()}, default_responder="echo", sampling=GREEDY)
        try:
            with running_server(busy) as full:
                async with busy.engine.lease("another caller"):
                    chat = await ChatPage.open(browser, full, transport="websocket")
                    assert await failure(chat, timeout_s=40) == "at-capacity"
                    await chat.talk()  # the call itself goes on after a refused reply: hang up
        finally:
            busy.engine.close()

        # The server goes away mid-call, then is not there at all. The voice picked is the one the server uses.
        with running_server(services) as doomed:
            chat = await ChatPage.open(browser, doomed, transport="websocket")
            assert await chat.texts("#voice option") == ["Default voice", "Your own voice (cloned from your turn)"]
            await chat.page.select_option("#voice", "caller")
            await chat.talk()
            await chat.wait_for("voiceChat.stats.voice === 'caller'", 20)
        assert await failure(chat, press=False) == "connection-lost"
        await chat.page.select_option("#transport", "auto")
        assert await failure(chat) == "unreachable"
        banner = await chat.error_banner()
        assert "Check that it is running" in banner["text"]


async def test_a_refused_microphone_says_how_to_allow_it(server):
    async with chromium(allow_microphone=False) as browser:
        chat = await ChatPage.open(browser, server)
        assert await failure(chat) == "mic-denied"
        assert "Allow the microphone" in (await chat.error_banner())["text"]


async def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout_s} s"
        await asyncio.sleep(0.1)


async def failure(chat: ChatPage, press: bool = True, timeout_s: float = 20) -> str:
    """Press Talk and return the kind of error the page then shows (`press=False`: the one it shows by now)."""
    if press:
        await chat.page.evaluate("delete document.querySelector('#error').dataset.kind")
        await chat.talk()
    await chat.wait_for("document.querySelector('#error').dataset.kind", timeout_s)
    return (await chat.error_banner())["kind"]
