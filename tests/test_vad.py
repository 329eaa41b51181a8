"""Server VAD on real (espeak-ng) speech: one turn per utterance, edges where the speech is, settings parsing."""

import numpy as np
import pytest
from speech import pad, silence, speech_edges_ms, speech_with_silence, synthesize

from higgs_agent.agent.vad import (
    SpeechStarted,
    SpeechStopped,
    TurnDetector,
    VadSettings,
    VadSettingsError,
    threshold_to_aggressiveness,
)
from higgs_agent.audio import resample

RATE = 16_000
EDGE_TOLERANCE_MS = 150


@pytest.fixture(scope="module")
def phrase(utterance):
    """The sample sentence cut to its speech (espeak-ng adds ~0.4 s of silence after it), so pauses are exact."""
    audio = utterance[1]
    start, end = speech_edges_ms(audio, RATE)
    return audio[start * RATE // 1000:end * RATE // 1000]


def _run(detector, audio, chunk=480):
    """Push `audio` in chunks (30 ms of 16 kHz by default, not a frame multiple) and collect the events."""
    events = []
    for i in range(0, len(audio), chunk):
        events += detector.push(audio[i:i + chunk])
    return events


def _noise(audio, db=-60.0, seed=0):
    """A faint noise floor, as a real microphone has."""
    rng = np.random.default_rng(seed)
    return (audio + rng.standard_normal(len(audio)) * 10 ** (db / 20)).astype(np.float32)


@pytest.mark.parametrize("frame_ms", [10, 20, 30])
@pytest.mark.parametrize("chunk", [480, 160, 7])
def test_one_turn_with_edges_at_the_speech(phrase, frame_ms, chunk):
    audio = _noise(pad(phrase, RATE, 1000, 1200))
    true_start, true_end = speech_edges_ms(audio, RATE)
    settings = VadSettings(prefix_padding_ms=300, silence_duration_ms=500)
    detector = TurnDetector(settings, frame_ms=frame_ms)
    events = _run(detector, audio, chunk)
    assert [type(e) for e in events] == [SpeechStarted, SpeechStopped]
    started, stopped = events
    assert abs(started.speech_start_ms - true_start) <= EDGE_TOLERANCE_MS
    assert started.audio_start_ms == started.speech_start_ms - 300  # prefix padding, OpenAI's audio_start_ms
    assert abs(stopped.audio_end_ms - true_end) <= EDGE_TOLERANCE_MS
    assert stopped.detected_ms - stopped.audio_end_ms == pytest.approx(500, abs=frame_ms)
    assert stopped.audio_start_ms == started.audio_start_ms and stopped.speech_start_ms == started.speech_start_ms
    assert not detector.in_speech
    assert detector.audio_ms == len(audio) * 1000 // RATE


def test_a_single_word(phrase):
    audio, (true_start, true_end) = speech_with_silence("yes", 400, 700)
    events = _run(TurnDetector(VadSettings(prefix_padding_ms=200)), _noise(audio))
    assert [type(e) for e in events] == [SpeechStarted, SpeechStopped]
    assert abs(events[0].speech_start_ms - true_start) <= EDGE_TOLERANCE_MS
    assert abs(events[1].audio_end_ms - true_end) <= EDGE_TOLERANCE_MS


def test_turn_audio_is_the_input_span(phrase):
    audio = _noise(pad(phrase, RATE, 800, 1000))
    (started, stopped) = _run(TurnDetector(VadSettings()), audio)
    start, end = stopped.span(RATE)
    assert np.array_equal(stopped.audio, audio[start:end])
    assert len(stopped.audio) == stopped.duration_ms * RATE // 1000
    # the same span cut out of a 24 kHz copy of the input
    a24, b24 = stopped.span(24_000)
    assert (a24, b24) == (stopped.start_ms * 24, stopped.end_ms * 24)
    # the turn holds all the speech energy
    assert np.sum(stopped.audio ** 2) > 0.99 * np.sum(audio ** 2)


def test_prefix_padding_is_honoured(phrase):
    audio = _noise(pad(phrase, RATE, 1000, 800))
    for prefix in (0, 120, 300, 600):
        (started, stopped) = _run(TurnDetector(VadSettings(prefix_padding_ms=prefix)), audio)
        assert started.speech_start_ms - started.audio_start_ms == prefix
        assert len(stopped.audio) == (stopped.audio_end_ms - started.audio_start_ms) * RATE // 1000
    # a prefix longer than the audio before the onset is clamped at 0
    (started, _) = _run(TurnDetector(VadSettings(prefix_padding_ms=300)), _noise(pad(phrase, RATE, 100, 800)))
    assert started.audio_start_ms == 0


def test_silence_and_noise_give_no_events():
    assert _run(TurnDetector(), np.zeros(3 * RATE, dtype=np.float32)) == []
    assert _run(TurnDetector(), _noise(np.zeros(3 * RATE, dtype=np.float32), db=-50)) == []


def test_a_click_does_not_start_a_turn():
    audio = np.zeros(2 * RATE, dtype=np.float32)
    audio[RATE:RATE + 80] = 0.8  # a 5 ms click
    detector = TurnDetector()
    assert _run(detector, audio) == [] and not detector.in_speech


def test_a_blip_shorter_than_min_speech_is_ignored():
    word, _ = synthesize("a", rate_wpm=300)  # a short vowel of espeak-ng
    _, end = speech_edges_ms(word, RATE)
    blip = word[: RATE * 60 // 1000]  # its first 60 ms
    audio = _noise(pad(blip, RATE, 500, 1000))
    assert _run(TurnDetector(VadSettings(min_speech_ms=200)), audio) == []
    assert end > 100  # while the whole vowel does start a turn
    events = _run(TurnDetector(VadSettings(min_speech_ms=100)), _noise(pad(word, RATE, 500, 1000)))
    assert [type(e) for e in events] == [SpeechStarted, SpeechStopped]


def test_a_long_pause_makes_two_turns_and_a_short_one_a_single_turn(phrase):
    settings = VadSettings(silence_duration_ms=500)
    two = _noise(np.concatenate([silence(500, RATE), phrase, silence(900, RATE), phrase, silence(800, RATE)]))
    events = _run(TurnDetector(settings), two)
    assert [type(e) for e in events] == [SpeechStarted, SpeechStopped] * 2
    assert events[2].audio_start_ms >= events[1].audio_end_ms  # turns never overlap
    one = _noise(np.concatenate([silence(500, RATE), phrase, silence(250, RATE), phrase, silence(800, RATE)]))
    events = _run(TurnDetector(settings), one)
    assert [type(e) for e in events] == [SpeechStarted, SpeechStopped]
    first_end = speech_edges_ms(one[: (500 + len(phrase) * 1000 // RATE + 100) * RATE // 1000], RATE)[1]
    assert events[1].audio_end_ms > first_end + 250  # the turn runs through the pause to the second phrase


def test_events_do_not_depend_on_chunking(phrase):
    audio = _noise(pad(phrase, RATE, 700, 900))
    reference = _run(TurnDetector(), audio, chunk=len(audio))
    for chunk in (1, 333, 4000):
        events = _run(TurnDetector(), audio, chunk)
        assert [(type(e), e.audio_start_ms if isinstance(e, SpeechStarted) else e.audio_end_ms) for e in events] == \
            [(type(e), e.audio_start_ms if isinstance(e, SpeechStarted) else e.audio_end_ms) for e in reference]


def test_reset_keeps_the_clock_unless_asked(phrase):
    detector = TurnDetector()
    detector.push(pad(phrase, RATE, 500, 0)[: RATE])  # into the phrase
    assert detector.in_speech
    detector.reset()
    assert not detector.in_speech and detector.audio_ms == 1000
    events = _run(detector, _noise(pad(phrase, RATE, 500, 900)))
    assert [type(e) for e in events] == [SpeechStarted, SpeechStopped]
    assert events[0].speech_start_ms == pytest.approx(1000 + 500, abs=EDGE_TOLERANCE_MS)
    detector.reset(restart_clock=True)
    assert detector.audio_ms == 0


def test_origin_puts_offsets_on_the_session_clock(phrase):
    audio = _noise(pad(phrase, RATE, 600, 900))
    plain = _run(TurnDetector(), audio)
    shifted = _run(TurnDetector(origin_ms=5000), audio)
    assert [e.audio_start_ms if isinstance(e, SpeechStarted) else e.audio_end_ms for e in shifted] == \
        [5000 + (e.audio_start_ms if isinstance(e, SpeechStarted) else e.audio_end_ms) for e in plain]
    assert np.array_equal(shifted[1].audio, plain[1].audio)


def test_force_stop_ends_the_turn(phrase):
    detector = TurnDetector()
    assert detector.force_stop() is None
    events = _run(detector, pad(phrase, RATE, 500, 0))
    assert [type(e) for e in events] == [SpeechStarted] and detector.in_speech
    stopped = detector.force_stop()
    assert isinstance(stopped, SpeechStopped) and not detector.in_speech
    assert len(stopped.audio) == stopped.duration_ms * RATE // 1000 > RATE


def test_works_at_8khz(phrase):
    audio8 = resample(_noise(pad(phrase, RATE, 800, 900)), RATE, 8000)
    events = _run(TurnDetector(sample_rate=8000), audio8, chunk=160)
    assert [type(e) for e in events] == [SpeechStarted, SpeechStopped]
    assert len(events[1].audio) == events[1].duration_ms * 8


# -- settings -----------------------------------------------------------------------------------------------

def test_settings_from_openai_turn_detection():
    assert VadSettings.from_turn_detection({"type": "server_vad"}) == VadSettings()
    s = VadSettings.from_turn_detection({"type": "server_vad", "threshold": 0.9, "prefix_padding_ms": 200,
                                         "silence_duration_ms": 700, "create_response": True,
                                         "interrupt_response": True})
    assert s == VadSettings(aggressiveness=3, prefix_padding_ms=200, silence_duration_ms=700)
    assert VadSettings.from_turn_detection({"threshold": 0.1, "aggressiveness": 2}).aggressiveness == 2  # ours wins
    assert VadSettings.from_turn_detection({"prefix_padding_ms": 250.0}).prefix_padding_ms == 250
    assert [threshold_to_aggressiveness(t) for t in (0, 0.24, 0.25, 0.5, 0.74, 0.75, 1.0)] == [0, 0, 1, 2, 2, 3, 3]
    round_trip = VadSettings(aggressiveness=1, prefix_padding_ms=100, silence_duration_ms=300, min_speech_ms=60)
    assert VadSettings.from_turn_detection(round_trip.to_turn_detection()) == round_trip


@pytest.mark.parametrize(("obj", "field"), [
    ({"type": "semantic_vad"}, "type"),
    ({"threshold": 1.5}, "threshold"),
    ({"threshold": "high"}, "threshold"),
    ({"aggressiveness": 4}, "aggressiveness"),
    ({"aggressiveness": 1.5}, "aggressiveness"),
    ({"prefix_padding_ms": -1}, "prefix_padding_ms"),
    ({"silence_duration_ms": "500"}, "silence_duration_ms"),
    ({"silence_duration_ms": 0}, "silence_duration_ms"),
    ({"min_speech_ms": True}, "min_speech_ms"),
])
def test_bad_settings_name_the_field(obj, field):
    with pytest.raises(VadSettingsError, match=field) as info:
        VadSettings.from_turn_detection(obj, param="session.audio.input.turn_detection")
    assert info.value.param == f"session.audio.input.turn_detection.{field}"
    assert isinstance(info.value, ValueError)


def test_bad_detector_arguments():
    with pytest.raises(ValueError, match="resample"):
        TurnDetector(sample_rate=24_000)
    with pytest.raises(ValueError, match="frame_ms"):
        TurnDetector(frame_ms=25)
    with pytest.raises(VadSettingsError, match="aggressiveness"):
        VadSettings(aggressiveness=7)
