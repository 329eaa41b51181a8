"""The WebSocket output's outbox, unit by unit: bounded, control before audio, barge-in drops queued audio.
(tests/test_hardening.py drives the same output over real sockets whose peers really stop reading.)"""

import asyncio
import base64
import json

import numpy as np
import pytest

from higgs_agent.agent.reply import OutputClosed
from higgs_agent.audio_formats import PCM16_24K, PCMU
from higgs_agent.agent.events import InputCleared, Place, ReplyMessageClosed, ReplyStarted, ReplyState, UserSpeechStarted
from higgs_agent.transport.realtime_ws import ClientTooSlow, WebSocketOutput


class StuckSocket:
    """A client that never reads: every send blocks."""

    def __init__(self) -> None:
        self.taken: list[str] = []  # handed to send_text (the sender may still be blocked in it)
        self.sent: list[str] = []
        self.closed_with: tuple[int, str] | None = None
        self.block = asyncio.Event()
        self.scope: dict = {}

    async def send_text(self, text: str) -> None:
        self.taken.append(text)
        await self.block.wait()
        self.sent.append(text)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self.closed_with = (code, reason)


async def until(condition, timeout: float = 10.0) -> None:  # noqa: ANN001
    """Until `condition()` holds: what the sender task does is waited for, never guessed by a sleep."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.005)


async def test_a_client_that_stops_reading_costs_bounded_memory_then_is_closed():
    socket = StuckSocket()
    output = WebSocketOutput(socket, lambda: PCM16_24K, max_messages=8, slow_client_timeout_s=0.3)
    output.start()
    with pytest.raises(ClientTooSlow):
        for _ in range(1000):
            await output.send_audio("resp", "item", np.zeros(960, dtype=np.float32))
            assert output.queued <= 8
    await until(lambda: socket.closed_with is not None)
    assert socket.closed_with[0] == 1008
    with pytest.raises(OutputClosed):  # after the close: producers learn it at once
        await output.send_event(InputCleared())
    await output.aclose()


async def test_barge_in_drops_queued_audio_of_that_item_only():
    socket = StuckSocket()
    output = WebSocketOutput(socket, lambda: PCM16_24K, max_messages=64)
    output.start()
    for _ in range(5):
        await output.send_audio("r1", "old", np.zeros(960, dtype=np.float32))
    await output.send_event(InputCleared())
    await output.send_audio("r2", "new", np.zeros(480, dtype=np.float32))
    await until(lambda: len(socket.taken) == 1)  # the sender holds the control event (it went first), blocked
    dropped = output.discard_audio("old")
    assert dropped == 5 * 960
    socket.block.set()
    await until(lambda: len(socket.sent) == 2)
    kinds = [json.loads(t)["type"] for t in socket.sent]
    items = [json.loads(t).get("item_id") for t in socket.sent]
    assert kinds == ["input_audio_buffer.cleared", "response.output_audio.delta"]
    assert items == [None, "new"]
    await output.aclose()


async def test_control_events_overtake_queued_audio_but_a_responses_own_events_stay_behind_it():
    socket = StuckSocket()
    output = WebSocketOutput(socket, lambda: PCM16_24K, max_messages=64)
    output.start()
    for _ in range(4):
        await output.send_audio("r1", "item1", np.zeros(960, dtype=np.float32))
        await until(lambda: len(socket.taken) == 1)  # the first is in the sender's hands, blocked in send_text
    await output.send_event(ReplyMessageClosed(Place("r1", "item1", 0), "", spoken=True))
    await output.send_event(UserSpeechStarted("item2", 100))  # the user speaks
    await output.send_event(ReplyStarted(ReplyState("r2", "in_progress")))
    socket.block.set()
    await until(lambda: len(socket.sent) == 9)
    kinds = [json.loads(t)["type"] for t in socket.sent]
    assert kinds == ["response.output_audio.delta",  # already in the sender's hands
                     "input_audio_buffer.speech_started", "response.created",  # control: ahead of queued audio
                     "response.output_audio.delta", "response.output_audio.delta", "response.output_audio.delta",
                     "response.output_audio.done", "response.output_audio_transcript.done",
                     "response.content_part.done"]  # r1's own events: behind r1's audio
    await output.aclose()


async def test_dropping_queued_audio_wakes_a_producer_waiting_for_room():
    socket = StuckSocket()
    output = WebSocketOutput(socket, lambda: PCM16_24K, max_messages=4, slow_client_timeout_s=30)
    output.start()
    for _ in range(5):  # one in the sender's hands, four queued: the outbox is full
        await output.send_audio("r1", "old", np.zeros(960, dtype=np.float32))
        await until(lambda: len(socket.taken) == 1)
    waiting = asyncio.create_task(output.send_event(InputCleared()))
    await until(lambda: output.queued == 4 and not output._outbox_room.is_set())  # it waits for room
    assert not waiting.done()
    output.discard_audio("old")  # the barge-in drops the queued reply ...
    await asyncio.wait_for(waiting, 1.0)  # ... and the producer goes on at once, not after 30 s
    await output.aclose()


class BrokenSocket(StuckSocket):
    """A connection that fails on the second send (the peer reset it)."""

    async def send_text(self, text: str) -> None:
        if self.sent:
            raise RuntimeError("Unexpected ASGI message 'websocket.send', after sending 'websocket.close'")
        self.sent.append(text)


async def test_a_failed_send_fails_every_producer_at_once_and_says_so_in_the_log(caplog):
    output = WebSocketOutput(BrokenSocket(), lambda: PCM16_24K, max_messages=4, slow_client_timeout_s=3600)
    output.start()
    # At once, not after the slow-client timeout (an hour here: a minute's bound cannot be missed by speed).
    async with asyncio.timeout(60):
        with caplog.at_level("INFO"), pytest.raises(OutputClosed, match="failed while sending"):
            for _ in range(100):
                await output.send_audio("r1", "item", np.zeros(960, dtype=np.float32))
                await asyncio.sleep(0)
    assert "sending failed (RuntimeError" in caplog.text
    await output.aclose()


async def test_a_format_the_client_changes_during_a_reply_applies_to_the_rest_of_it():
    socket = StuckSocket()
    socket.block.set()
    formats = [PCM16_24K]
    output = WebSocketOutput(socket, lambda: formats[0], max_messages=64)
    output.start()
    await output.send_audio("r1", "item", np.zeros(1920, dtype=np.float32))  # 80 ms as PCM16 at 24 kHz
    formats[0] = PCMU  # session.update mid-reply
    await output.send_audio("r1", "item", np.zeros(1920, dtype=np.float32))  # 80 ms more
    await output.flush_audio("r1")
    await until(lambda: len(socket.sent) == 2)  # the sender hands both to the socket
    await output.aclose()
    deltas = [base64.b64decode(json.loads(t)["delta"]) for t in socket.sent]
    assert len(deltas[0]) == 1920 * 2  # PCM16: two bytes a sample at 24 kHz
    assert len(deltas[1]) == 640 and set(deltas[1]) == {0xFF}  # mu-law at 8 kHz: 80 ms of silence
