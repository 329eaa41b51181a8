"""`higgs-agent bench phone`: how fast the agent answers on a phone call, beside the same turn over WebSocket and
WebRTC.

A real server in this process serves two phone lines (Twilio's webhook and media stream; one greets, one
does not) and the Realtime WebSocket on one port, with the `echo` responder. Per turn, in alternation:
- phone: a simulated Twilio call (testing/phone_simulator.py: signed webhook, signed media stream,
  espeak-ng speech as 8 kHz mu-law in 20 ms messages at real time, marks echoed by its own playout clock) to
  the line without a greeting speaks the sentence; measured from its last speech frame to the first reply
  frame it receives;
- baseline: the same speech over `/v1/realtime` by `higgs_agent.client.talk` at real-time pace in 20 ms
  chunks; from its last speech chunk to the first reply audio delta;
- WebRTC: the same speech from an aiortc peer's microphone track (testing/webrtc_caller.py: Opus at 48 kHz,
  20 ms frames at real time); from its last sample to the first reply frame with sound in it on the track.
The speech ends at its last word (espeak-ng's trailing silence cut off), so `from_last_word` splits, per
transport, the time from the caller's last word to the first reply audio they get into the turn detector's
wait (`end_of_turn`), the transcript, the responder's first text, the engine's first audio, the audio handed
to the transport (`first_audio_sent`) and the transport itself (what is left: encoding, the wire, the client).
Each turn is a fresh call / session, so both answer with the same prompt (no voice pinned by an earlier
reply). Both include the VAD's `silence_duration_ms` (500 ms) that ends a turn. Also: each side's server
stages (the VAD's speech_stopped -> transcript, first audio frame, first audio handed to the transport; for
the phone also the first frame on the wire), and a call to the greeting line: its `start` -> first greeting
frame.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
from typing import Any

import numpy as np

from higgs_agent import SAMPLE_RATE
from higgs_agent.agent.services import AgentServices

GREETING = "Hello, how can I help?"
PUBLIC_URL = "https://phone.bench.invalid"  # what the simulated Twilio signs; the server is on loopback


def phone_app(services: AgentServices, *lines: Any) -> Any:  # noqa: ANN401 - PhoneLines, a Starlette app
    """Phone lines' routes in front of the whole agent app, as `serve` composes them."""
    from starlette.applications import Starlette
    from starlette.routing import Mount

    from higgs_agent.transport.app import create_agent_app

    return Starlette(routes=[*(route for line in lines for route in line.routes()),
                             Mount("/", app=create_agent_app(services))])


async def phone_turn(base: str, settings: Any, speech_24k: Any) -> tuple[float, str, int]:  # noqa: ANN401
    """One call, one spoken turn: ms from the caller's last speech frame to the first reply frame; the callSid;
    how many messages the agent sent that Twilio would reject."""
    from higgs_agent.testing.phone_simulator import SimulatedCall

    call = SimulatedCall(base, settings)
    await call.dial()
    speech_end = await call.say(speech_24k, SAMPLE_RATE)
    first = await call.wait_frames(1, since=speech_end, timeout=300)
    await call.hang_up()
    return (first[0].arrived - speech_end) * 1000.0, call.call_sid, len(call.violations)


async def webrtc_turn(base: str, speech_24k: Any) -> tuple[float | None, dict[str, float | None]]:  # noqa: ANN401
    """One WebRTC call, one spoken turn: ms from the microphone's last sample to the first reply frame with sound
    in it; the turn's server stages."""
    from higgs_agent.testing.webrtc_caller import SOUND_RMS, Caller

    caller = await Caller.call(base)
    try:
        caller.send({"type": "session.update", "session": {"type": "realtime", "higgs": {"extension_events": True}}})
        await caller.until("session.updated", timeout=60)
        caller.microphone.say(speech_24k, SAMPLE_RATE)
        latency = await caller.until("higgs.turn.latency", timeout=300)
        await caller.until("response.done", timeout=300)
        said = caller.microphone.drained_at
        first = next((t for t, frame in caller.heard if said is not None and t >= said
                      and float(np.sqrt(np.mean(frame ** 2))) > SOUND_RMS), None)
        return (None if first is None or said is None else (first - said) * 1000.0), latency["latency_ms"]
    finally:
        await caller.hang_up()


STAGES = ("end_of_turn", "transcript", "first_text", "first_audio_frame", "first_audio_sent")


def from_last_word(heard_ms: list[float | None], stages: list[dict[str, float | None]]) -> dict[str, float | None]:
    """Per-turn figures of one transport -> its medians, and the transport's own share per turn: what the
    client waited beyond the server's end of turn and first audio handed over."""
    from higgs_agent.bench.common import median_ms

    transport = [heard - stage["end_of_turn"] - stage["first_audio_sent"]  # type: ignore[operator]
                 for heard, stage in zip(heard_ms, stages, strict=True)
                 if heard is not None and stage.get("end_of_turn") is not None
                 and stage.get("first_audio_sent") is not None]
    return {"heard_ms_p50": median_ms(heard_ms), **{f"{stage}_ms_p50": median_ms([s.get(stage) for s in stages])
                                                    for stage in STAGES},
            "transport_ms_p50": median_ms(transport)}


def _per_call(heard_ms: list[float], call_sids: list[str],
              records: list[Any]) -> tuple[list[float | None], list[dict[str, float | None]]]:  # noqa: ANN401
    """Each call's figure beside its one turn's server stages (a call whose record has no turn is left out)."""
    by_sid = {log.call_sid: log for log in records}
    pairs = [(ms, by_sid[sid].turns[0].stages) for ms, sid in zip(heard_ms, call_sids, strict=True)
             if sid in by_sid and by_sid[sid].turns]
    return [ms for ms, _ in pairs], [stages for _, stages in pairs]


async def greeting_call(base: str, settings: Any) -> float:  # noqa: ANN401
    """One call to the greeting line: ms from its `start` to the greeting's first frame."""
    from higgs_agent.testing.phone_simulator import SimulatedCall

    call = SimulatedCall(base, settings)
    await call.dial()
    assert call.started_at is not None
    first = await call.wait_frames(1, timeout=300)
    await call.hang_up()
    return (first[0].arrived - call.started_at) * 1000.0


def run_phone_bench(args: argparse.Namespace) -> dict:
    from higgs_agent.bench.agent import UTTERANCE, espeak
    from higgs_agent.bench.common import describe, echo_agent_services, median_ms, note, speech_edges_ms
    from higgs_agent.client import talk
    from higgs_agent.transport.phone.call import CallSettings
    from higgs_agent.transport.phone.routes import PhoneLine
    from higgs_agent.transport.phone.twiml import TwilioSettings

    services, bundle, model = echo_agent_services(args)
    speech = espeak(UTTERANCE)
    speech = speech[:speech_edges_ms(speech, SAMPLE_RATE)[1] * SAMPLE_RATE // 1000]  # to the true last word
    token = secrets.token_hex(16)
    plain = PhoneLine(services, TwilioSettings(public_url=PUBLIC_URL, auth_token=token))
    greeting = PhoneLine(services, TwilioSettings(public_url=PUBLIC_URL, auth_token=token, voice_path="/greet/voice",
                                                  media_path="/greet/media"), CallSettings(greeting=GREETING))
    phone_ms: list[float] = []
    call_sids: list[str] = []
    violations = 0
    websocket: list[Any] = []
    greeting_ms: list[float] = []
    webrtc: list[tuple[float | None, dict[str, float | None]]] = []
    from higgs_agent.server import serve_app_in_background

    with serve_app_in_background(phone_app(services, plain, greeting)) as base:
        url = base.replace("http://", "ws://") + "/v1/realtime"
        for turn in range(args.turns):
            note(f"turn {turn + 1}/{args.turns}: phone, websocket, webrtc, greeting ...")
            felt, call_sid, rejected = asyncio.run(phone_turn(base, plain.line, speech))
            phone_ms.append(felt)
            call_sids.append(call_sid)
            violations += rejected
            websocket.append(asyncio.run(talk(url, speech, SAMPLE_RATE, realtime_pace=True, chunk_ms=20,
                                              timeout_s=300)))
            webrtc.append(asyncio.run(webrtc_turn(base, speech)))
            greeting_ms.append(asyncio.run(greeting_call(base, greeting.line)))
    records = [log for log in plain.finished if log.call_sid in call_sids]
    phone_turns = [t for log in records for t in log.turns if t.first_frame_ms is not None]
    ws_ms = [r.first_audio_after_ms for r in websocket if r.first_audio_after_ms is not None]
    phone_p50, ws_p50 = median_ms(phone_ms), median_ms(ws_ms)

    def stages(latencies: list[dict[str, float | None]]) -> dict[str, float | None]:
        return {stage: median_ms([v for lat in latencies if (v := lat.get(stage)) is not None])
                for stage in ("transcript", "first_audio_frame", "first_audio_sent")}

    return {
        "turns": args.turns,
        "phone_first_frame_ms_p50": phone_p50,
        "websocket_first_audio_ms_p50": ws_p50,
        "phone_minus_websocket_ms": round(phone_p50 - ws_p50, 1) if phone_p50 is not None and ws_p50 else None,
        "greeting_first_frame_ms_p50": median_ms(greeting_ms),
        "phone_server_ms_p50": {**stages([t.stages for t in phone_turns]),
                                "first_frame_on_wire": median_ms([t.first_frame_ms for t in phone_turns])},
        "websocket_server_ms_p50": stages([r.latency_ms for r in websocket]),
        "phone_first_frame_ms": [round(v, 1) for v in phone_ms],
        "websocket_first_audio_ms": [round(v, 1) for v in ws_ms],
        "greeting_first_frame_ms": [round(v, 1) for v in greeting_ms],
        "webrtc_first_audio_ms_p50": median_ms([ms for ms, _ in webrtc]),
        "webrtc_server_ms_p50": stages([latency for _, latency in webrtc]),
        "from_last_word": {
            "websocket": from_last_word([r.first_audio_after_ms for r in websocket], [r.latency_ms for r in websocket]),
            "webrtc": from_last_word([ms for ms, _ in webrtc], [latency for _, latency in webrtc]),
            "phone": from_last_word(*_per_call(phone_ms, call_sids, records)),
        },
        "phone_protocol_violations": violations,
        "phone_transcripts": [line.text for log in records for line in log.lines if line.speaker == "caller"],
        "websocket_transcripts": [r.user_transcript for r in websocket],
        "asr": services.transcriber.name, **describe(bundle, model),
    }
