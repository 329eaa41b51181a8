"""The Realtime client library and `higgs-agent talk`, against a scripted fake server (tests/fake_realtime.py)."""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
import time

import numpy as np
import pytest
import soundfile as sf
from fake_realtime import FakeRealtimeServer

from higgs_agent.audio import float_to_pcm16, resample
from higgs_agent.client import (
    RealtimeClient,
    RealtimeConnectionError,
    RealtimeError,
    talk,
)
from higgs_agent.cli import parse_args
from higgs_agent.talk import run_talk

LATENCY = {"transcript": 120.5, "first_text": 310.0, "first_audio_frame": 450.25, "first_audio_sent": None}


def speech(seconds: float = 0.6, rate: int = 16_000, hz: float = 300.0) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return (0.4 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def talk_args(*argv: str) -> argparse.Namespace:
    return parse_args(["talk", *argv])


def sent_types(fake: FakeRealtimeServer) -> list[str]:
    return [event["type"] for event in fake.received]


async def test_talk_server_vad_collects_the_reply_exactly():
    audio = speech()
    async with FakeRealtimeServer() as fake:
        result = await talk(fake.url, audio, 16_000, realtime_pace=False)
    assert np.frombuffer(result.pcm16, dtype="<i2").tolist() == fake.reply.tolist()  # sample-exact, in order
    assert result.sample_rate == 24_000 and result.audio.dtype == np.float32
    assert result.user_transcript == "what is the weather like"
    assert result.assistant_transcript == "It is sunny and warm today."
    assert result.status == "completed"
    assert result.latency_ms == LATENCY
    assert result.first_audio_after_ms is not None and result.first_audio_after_ms >= 0
    ev = result.events
    assert ev[0] == "session.created"
    assert ev.index("input_audio_buffer.speech_started") < ev.index("input_audio_buffer.speech_stopped") \
        < ev.index("conversation.item.input_audio_transcription.completed") < ev.index("response.created") \
        < ev.index("response.output_audio.delta") < ev.index("higgs.turn.latency") < ev.index("response.done")
    # what reached the server: the speech resampled to 24 kHz PCM16, then silence; VAD mode sends no commit
    pcm = float_to_pcm16(resample(audio, 16_000, 24_000))
    assert bytes(fake.audio[:len(pcm)]) == pcm
    assert not any(fake.audio[len(pcm):])
    assert fake.received[0]["session"] == {"type": "realtime", "higgs": {"extension_events": True}}  # our events
    assert set(sent_types(fake)[1:]) == {"input_audio_buffer.append"}
    ids = [event["event_id"] for event in fake.received]
    assert len(set(ids)) == len(ids)


async def test_talk_manual_commit_turns_vad_off_and_commits():
    audio = speech(rate=24_000)
    async with FakeRealtimeServer(delta_samples=777) as fake:
        result = await talk(fake.url, audio, 24_000, realtime_pace=False, manual_commit=True,
                            session={"instructions": "Be brief."})
    update = fake.received[0]
    assert update["type"] == "session.update"
    assert update["session"] == {"type": "realtime", "instructions": "Be brief.",
                                 "higgs": {"extension_events": True}, "audio": {"input": {"turn_detection": None}}}
    assert sent_types(fake)[-2:] == ["input_audio_buffer.commit", "response.create"]
    assert bytes(fake.audio) == float_to_pcm16(audio)  # no tail silence in manual mode
    assert np.frombuffer(result.pcm16, dtype="<i2").tolist() == fake.reply.tolist()
    assert "input_audio_buffer.speech_started" not in result.events
    assert result.user_transcript == "what is the weather like"
    assert result.assistant_transcript == "It is sunny and warm today."
    assert result.latency_ms == LATENCY and result.status == "completed"


async def test_realtime_pace_is_honoured_and_fast_is_not():
    one_second = speech(1.0, rate=24_000)
    async with FakeRealtimeServer() as fake:
        start = time.monotonic()
        await talk(fake.url, one_second, 24_000, manual_commit=True)
        paced = time.monotonic() - start
        start = time.monotonic()
        await talk(fake.url, one_second, 24_000, manual_commit=True, realtime_pace=False)
        fast = time.monotonic() - start
    assert paced >= 0.9, paced
    assert fast < 0.6, fast


async def test_vad_mode_stops_the_tail_once_the_server_heard_the_end():
    audio = speech(0.5, rate=24_000)
    async with FakeRealtimeServer(silence_ms=300) as fake:
        start = time.monotonic()
        result = await talk(fake.url, audio, 24_000, tail_silence_ms=3000)
        elapsed = time.monotonic() - start
    assert result.status == "completed"
    assert elapsed < 2.5, elapsed  # 0.5 s speech + ~0.3 s until the fake's VAD ends the turn, not 3 s of tail
    assert len(fake.audio) < (0.5 + 1.5) * 48_000


async def test_a_pause_that_splits_the_turn_waits_for_the_reply_to_the_rest():
    pause = np.zeros(int(0.5 * 24_000), dtype=np.float32)
    audio = np.concatenate([speech(0.3, rate=24_000), pause, speech(0.3, rate=24_000)])
    async with FakeRealtimeServer(silence_ms=300) as fake:
        result = await talk(fake.url, audio, 24_000)
    assert result.events.count("input_audio_buffer.speech_stopped") == 2
    assert result.events.count("response.done") == 2
    assert result.events[-1] == "response.done"  # the reply to the whole turn, not to its first half
    assert result.user_transcript == "what is the weather like what is the weather like"
    assert np.frombuffer(result.pcm16, dtype="<i2").tolist() == fake.reply.tolist()  # one reply, not two


async def test_live_source_ends_when_the_server_hears_the_end_and_is_closed():
    closed = asyncio.Event()

    async def mic():  # 0.4 s of tone, then silence forever, in 20 ms blocks at 16 kHz, paced like a device
        block = speech(0.4, rate=16_000)
        try:
            for start in range(0, len(block), 320):
                await asyncio.sleep(0.02)
                yield block[start:start + 320]
            while True:
                await asyncio.sleep(0.02)
                yield np.zeros(320, dtype=np.float32)
        finally:
            closed.set()

    async with FakeRealtimeServer(silence_ms=200) as fake:
        result = await talk(fake.url, mic(), 16_000, timeout_s=10)
    assert result.status == "completed" and result.user_transcript
    assert np.frombuffer(result.pcm16, dtype="<i2").tolist() == fake.reply.tolist()
    assert closed.is_set()
    assert result.first_audio_after_ms is not None


async def test_no_reply_in_time_is_a_timeout_with_a_hint():
    async with FakeRealtimeServer() as fake:
        with pytest.raises(TimeoutError, match="VAD never reported speech"):  # silence only: the fake's VAD stays quiet
            await talk(fake.url, np.zeros(2400, dtype=np.float32), 24_000, realtime_pace=False, tail_silence_ms=100,
                       timeout_s=0.5)


async def test_latency_reported_just_after_response_done_is_kept():
    async with FakeRealtimeServer(latency_after_done=True) as fake:
        result = await talk(fake.url, speech(), 16_000, realtime_pace=False, manual_commit=True)
    assert result.latency_ms == LATENCY
    assert result.events[-1] == "higgs.turn.latency"


async def test_api_key_is_sent_and_a_refused_key_says_so():
    async with FakeRealtimeServer(api_key="sekrit") as fake:
        result = await talk(fake.url, speech(), 16_000, api_key="sekrit", realtime_pace=False, manual_commit=True)
        assert result.status == "completed"
        assert fake.auth_headers[-1] == "Bearer sekrit"
        with pytest.raises(RealtimeConnectionError, match="refused the API key") as refused:
            await talk(fake.url, speech(), 16_000, api_key="wrong")
        assert fake.url in str(refused.value) and "401" in str(refused.value)
        with pytest.raises(RealtimeConnectionError, match="requires an API key"):
            await RealtimeClient.connect(fake.url)
        # browsers cannot set headers: the query parameter works too
        client = await RealtimeClient.connect(fake.url + "?api_key=sekrit")
        await client.close()
    async with FakeRealtimeServer(api_key="sekrit", reject_status=403) as fake:
        with pytest.raises(RealtimeConnectionError, match=r"refused the API key \(HTTP 403"):
            await RealtimeClient.connect(fake.url, api_key="wrong")


async def test_connection_refused_and_wrong_path_name_the_url():
    url = f"ws://127.0.0.1:{free_port()}/v1/realtime"
    with pytest.raises(RealtimeConnectionError, match="could not connect to ws://127.0.0.1") as refused:
        await RealtimeClient.connect(url)
    assert url in str(refused.value) and "server running" in str(refused.value)
    async with FakeRealtimeServer() as fake:
        with pytest.raises(RealtimeConnectionError, match="404"):
            await RealtimeClient.connect(fake.url.replace("/v1/realtime", "/v1/other"))
        bare = fake.url.replace("/v1/realtime", "")  # `talk --url ws://host:port`: not an API key problem
        with pytest.raises(RealtimeConnectionError, match="has no path.*/v1/realtime"):
            await RealtimeClient.connect(bare)


async def test_client_helpers_send_ga_events():
    async with FakeRealtimeServer() as fake, await RealtimeClient.connect(fake.url) as client:
        created = await client.wait_for("session.created")
        assert created["session"]["type"] == "realtime"
        await client.update_session(instructions="Hi", audio={"input": {"turn_detection": None}})
        updated = await client.wait_for("session.updated")
        assert updated["session"]["instructions"] == "Hi"
        assert updated["session"]["audio"]["input"]["turn_detection"] is None
        with pytest.raises(RealtimeError, match="buffer too small") as error:
            await client.commit()  # nothing appended yet
            await client.wait_for("input_audio_buffer.committed")
        assert error.value.code == "input_audio_buffer_commit_empty"
        await client.send_text("hello")
        await client.truncate("item_1", 1234.9)
        await client.cancel_response("resp_1")
        await client.clear()
        own_id = await client.send({"type": "response.create", "event_id": "mine"})
        assert own_id == "mine"
        done = await client.wait_for("response.done")
        assert done["response"]["status"] == "completed"
        with pytest.raises(TimeoutError, match="no conversation.item.truncated within 0.2 s"):
            await client.wait_for("conversation.item.truncated", timeout=0.2)  # the fake never sends it
    by_type = {event["type"]: event for event in fake.received}
    assert by_type["conversation.item.create"]["item"] == {
        "type": "message", "role": "user", "content": [{"type": "input_text", "text": "hello"}]}
    assert by_type["conversation.item.truncate"] == {**by_type["conversation.item.truncate"], "item_id": "item_1",
                                                     "content_index": 0, "audio_end_ms": 1234}
    assert by_type["response.cancel"]["response_id"] == "resp_1"
    assert by_type["response.create"]["event_id"] == "mine"
    assert all(event["event_id"] for event in fake.received)


async def test_close_is_quick_while_the_server_is_still_sending():
    async with FakeRealtimeServer(delta_samples=400) as fake:  # 30 audio deltas: more than the receive queue holds
        client = await RealtimeClient.connect(fake.url)
        await client.create_response()
        await asyncio.sleep(0.3)  # not reading: the client's queue fills and it stops reading the socket
        start = time.monotonic()
        await client.close()
        assert time.monotonic() - start < 2.0  # not the 10 s close timeout


async def test_error_event_during_a_turn_raises():
    async with FakeRealtimeServer(error_on_commit=True) as fake:
        with pytest.raises(RealtimeError, match="buffer too small"):
            await talk(fake.url, speech(), 16_000, realtime_pace=False, manual_commit=True)


def test_run_talk_prints_transcripts_and_writes_a_24k_wav(tmp_path, capsys):
    wav = tmp_path / "in.wav"
    sf.write(wav, speech(rate=16_000), 16_000, subtype="PCM_16")
    out = tmp_path / "reply.wav"
    with FakeRealtimeServer(api_key="k").in_thread() as fake:
        code = run_talk(talk_args("--url", fake.url, "--wav", str(wav), "-o", str(out), "--api-key", "k", "--fast"))
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "user: what is the weather like"
    assert lines[1] == "assistant: It is sunny and warm today."
    assert lines[2].startswith("latency: transcript 120 ms, first_text 310 ms, first_audio_frame 450 ms, "
                               "first_audio_sent - (server); first audio ")
    data, rate = sf.read(out, dtype="int16")
    assert rate == 24_000
    assert np.abs(data.astype(int) - fake.reply.astype(int)).max() <= 1


def test_run_talk_exit_codes(tmp_path, capsys, monkeypatch):
    wav = tmp_path / "in.wav"
    sf.write(wav, speech(rate=16_000), 16_000)
    refused = f"ws://127.0.0.1:{free_port()}/v1/realtime"
    assert run_talk(talk_args("--url", refused, "--wav", str(wav), "--fast")) == 2
    assert f"could not connect to {refused}" in capsys.readouterr().err

    with FakeRealtimeServer(api_key="k").in_thread() as fake:
        assert run_talk(talk_args("--url", fake.url, "--wav", str(wav), "--api-key", "bad")) == 2
        assert "refused the API key" in capsys.readouterr().err
    with FakeRealtimeServer(error_on_commit=True).in_thread() as fake:
        assert run_talk(talk_args("--url", fake.url, "--wav", str(wav), "--manual", "--fast")) == 1
        assert "the server said: buffer too small" in capsys.readouterr().err
    with FakeRealtimeServer(status="failed").in_thread() as fake:
        out = tmp_path / "failed.wav"
        assert run_talk(talk_args("--url", fake.url, "--wav", str(wav), "--fast", "-o", str(out))) == 1
        assert "status failed" in capsys.readouterr().err
        assert out.exists()

    assert run_talk(talk_args("--wav", str(tmp_path / "missing.wav"))) == 2
    assert "missing.wav does not exist" in capsys.readouterr().err

    monkeypatch.setitem(sys.modules, "sounddevice", None)  # import fails, as where it is not installed
    assert run_talk(talk_args("--url", refused)) == 2
    err = capsys.readouterr().err
    assert "sounddevice" in err and "pass --wav" in err


def test_talk_parser_defaults(monkeypatch):
    monkeypatch.setenv("HIGGS_API_KEY", "from-env")
    args = talk_args("--wav", "x.wav")
    assert args.url == "ws://127.0.0.1:8000/v1/realtime"
    assert args.api_key == "from-env"
    assert (args.manual, args.fast, args.output, args.timeout) == (False, False, None, 60.0)
