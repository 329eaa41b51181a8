"""Noise suppression (`audio.input.noise_reduction`, agent/noise.py): the suppressor's stream, the session's
setting, and a spoken turn in mains hum that only ends because the VAD hears the suppressed signal."""

from __future__ import annotations

import numpy as np
import pytest
from agent_server import Client, echo_services, running_server
from speech import synthesize, word_error_rate

from higgs_agent.agent.config import ServerOffer, SessionConfig
from higgs_agent.agent.input_audio import InputAudio
from higgs_agent.agent.noise import NoiseReduction, NoiseSuppressor
from higgs_agent.agent.vad import SpeechStopped, VadSettings
from higgs_agent.audio_formats import AudioFormat
from higgs_agent.bench.noise import LEAD_S, TAIL_S, hum, mix
from higgs_agent.cli import parse_args
from higgs_agent.protocol.errors import ProtocolError

RATE = 16_000
SENTENCE = "Please cancel my subscription."


def white(seconds: float, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 0.1, int(seconds * RATE)).astype(np.float32)


def db(ratio: float) -> float:
    return 10 * np.log10(ratio)


def test_the_stream_does_not_depend_on_how_the_audio_is_chunked():
    audio = white(3.0)
    whole = NoiseSuppressor().push(audio)
    chunked = NoiseSuppressor()
    rng = np.random.default_rng(1)
    cuts = np.cumsum(rng.integers(1, 1500, size=200))
    parts = [chunked.push(part) for part in np.split(audio, cuts[cuts < len(audio)])]
    assert [len(p) for p in parts] == [len(p) for p in np.split(audio, cuts[cuts < len(audio)])]
    assert np.array_equal(np.concatenate(parts), whole)
    assert chunked.underruns == 0


def test_strength_zero_gives_the_input_back_lag_samples_later():
    speech, _ = synthesize(SENTENCE, sample_rate=RATE)
    suppressor = NoiseSuppressor(strength=0.0)
    out = np.concatenate([suppressor.push(speech), suppressor.flush(), np.zeros(suppressor.lag_samples)])
    best = int(np.argmax(np.correlate(out, speech, mode="valid")))  # out[lag:] against speech, lag by lag
    assert best == suppressor.lag_samples  # the VAD's signal and the turn's audio stay in step


def test_strength_limits_how_much_noise_is_taken_out():
    noise = white(4.0)
    second = slice(RATE, None)  # after the model's first second of adapting
    full = NoiseSuppressor(1.0).push(noise)[second]
    limited = NoiseSuppressor(0.9).push(noise)[second]
    power = float(np.mean(noise[second] ** 2))
    assert db(power / float(np.mean(full ** 2))) > 30
    assert 17 < db(power / float(np.mean(limited ** 2))) < 23  # 0.9: at most 20 dB


def test_the_vad_hears_a_turn_end_in_hum_the_turn_keeps_the_original():
    speech, _ = synthesize(SENTENCE, sample_rate=RATE)
    heard = mix(speech, hum(LEAD_S + TAIL_S + len(speech) / RATE + 1, 50, RATE), snr_db=5)
    inp = InputAudio(AudioFormat("audio/pcm", RATE), VadSettings(), noise=NoiseReduction("far_field"))
    events = []
    for start in range(0, len(heard), 320):
        events += inp.push(heard[start:start + 320], RATE)
    (stopped,) = [e for e in events if isinstance(e, SpeechStopped)]
    start = stopped.audio_start_ms * RATE // 1000  # on the input's clock, though the VAD heard it 31 ms late
    assert np.allclose(stopped.audio, heard[start:start + len(stopped.audio)], atol=1e-6)  # not suppressed


@pytest.mark.parametrize("before,after", [(None, NoiseReduction()), (NoiseReduction(), None)])
def test_switching_noise_reduction_mid_turn_keeps_the_turn_whole(before, after):
    """The VAD's signal changes when the turn ends, not in the middle of it (which restarted the turn: a second
    speech_started and the first half of the words lost)."""
    speech, _ = synthesize(SENTENCE, sample_rate=RATE)
    quiet = np.zeros(int(RATE * 1.5), dtype=np.float32)
    heard = np.concatenate([quiet, speech, quiet, speech, quiet])
    fmt = AudioFormat("audio/pcm", RATE)
    inp = InputAudio(fmt, VadSettings(), noise=before)
    events, switched = [], False
    for start in range(0, len(heard), 320):
        events += inp.push(heard[start:start + 320], RATE)
        if not switched and start > len(quiet) + len(speech) // 2:  # halfway through the first sentence
            inp.reconfigure(fmt, VadSettings(), after)
            switched = True
    kinds = [type(event).__name__ for event in events]
    assert kinds == ["SpeechStarted", "SpeechStopped", "SpeechStarted", "SpeechStopped"], kinds
    first = next(e for e in events if isinstance(e, SpeechStopped))
    assert first.audio_end_ms - first.audio_start_ms >= len(speech) * 1000 // RATE - 200  # the whole sentence


def test_session_update_sets_reports_and_refuses_noise_reduction():
    config = SessionConfig(model="m")
    assert config.to_dict()["audio"]["input"]["noise_reduction"] is None
    far, notes = config.updated({"audio": {"input": {"noise_reduction": {"type": "far_field"}}}}, ServerOffer())
    assert notes == [] and far.to_dict()["audio"]["input"]["noise_reduction"] == {"type": "far_field",
                                                                                  "strength": 1.0}
    softer, _ = far.updated({"audio": {"input": {"noise_reduction": {"strength": 0.5}}}}, ServerOffer())
    assert softer.noise_reduction == NoiseReduction("far_field", 0.5)  # the type is kept
    off, _ = softer.updated({"audio": {"input": {"noise_reduction": None}}}, ServerOffer())
    assert off.noise_reduction is None
    for bad, param in (({"type": "mid_field"}, "type"), ({"type": "near_field", "strength": 2}, "strength")):
        with pytest.raises(ProtocolError) as refused:
            config.updated({"audio": {"input": {"noise_reduction": bad}}}, ServerOffer())
        assert refused.value.param == f"session.audio.input.noise_reduction.{param}"


def test_serve_takes_an_operator_default():
    args = parse_args(["serve", "--noise-reduction", "far_field"])
    assert NoiseReduction.from_flag(args.noise_reduction) == NoiseReduction("far_field")
    assert NoiseReduction.from_flag(parse_args(["serve"]).noise_reduction) is None


@pytest.mark.timeout(300)
async def test_a_spoken_turn_in_hum_ends_and_is_transcribed_with_the_servers_default(bundle, transcriber):
    services = echo_services(bundle, transcriber, max_frames=20)
    services.noise_reduction = NoiseReduction("near_field")  # serve --noise-reduction near_field
    speech, _ = synthesize(SENTENCE, sample_rate=24_000)
    heard = mix(speech, hum(LEAD_S + TAIL_S + len(speech) / 24_000 + 1, 60, 24_000), snr_db=5, rate=24_000)
    with running_server(services) as base:
        client = await Client.connect(base)
        created = next(e for e in client.events if e["type"] == "session.created")
        assert created["session"]["audio"]["input"]["noise_reduction"] == {"type": "near_field", "strength": 1.0}
        await client.send({"type": "session.update", "session": {"audio": {"input": {
            "noise_reduction": {"type": "loud_field"}}}}})
        error = await client.until("error")
        assert error["error"]["param"] == "session.audio.input.noise_reduction.type"
        await client.send_audio(heard)
        done = await client.until("conversation.item.input_audio_transcription.completed")
        await client.send({"type": "session.update", "session": {"audio": {"input": {"noise_reduction": None}}}})
        updated = await client.until("session.updated")  # this session's own choice over the server's default
        await client.close()
    assert updated["session"]["audio"]["input"]["noise_reduction"] is None
    assert word_error_rate(SENTENCE, done["transcript"]) <= 0.25, done["transcript"]
    services.engine.close()
