"""The caller's audio path: wire bytes -> 16 kHz -> turns, on the session's audio clock."""

import numpy as np
from speech import pad, synthesize

from higgs_agent.agent.input_audio import ASR_RATE, InputAudio
from higgs_agent.agent.vad import SpeechStarted, SpeechStopped, VadSettings
from higgs_agent.audio_formats import PCMA, AudioFormat, encode_audio


def feed(inp: InputAudio, audio: np.ndarray, rate: int, chunk_ms: int = 20) -> list:
    step = rate * chunk_ms // 1000
    events = []
    for start in range(0, len(audio), step):
        events += inp.push(audio[start:start + step], rate)
    return events


def test_offsets_stay_on_the_session_clock_after_the_vad_is_reconfigured():
    speech, _ = synthesize("good morning to you", sample_rate=24000)
    utterance = pad(speech, 24000, lead_ms=500, tail_ms=1000)
    inp = InputAudio(AudioFormat("audio/pcm", 24000), VadSettings())
    first = feed(inp, utterance, 24000)
    inp.reconfigure(AudioFormat("audio/pcm", 24000), VadSettings(silence_duration_ms=400))
    second = feed(inp, utterance, 24000)
    starts = [e.audio_start_ms for e in first + second if isinstance(e, SpeechStarted)]
    assert len(starts) == 2
    length_ms = len(utterance) * 1000 // 24000
    assert abs((starts[1] - starts[0]) - length_ms) <= 40  # the second turn is one utterance later


def test_endless_speech_is_cut_into_turns_of_at_most_max_turn():
    speech, _ = synthesize("this goes on and on and on without a pause", sample_rate=16000)
    noise = np.tile(speech[: len(speech) // 2], 6)  # voiced audio, no silence anywhere
    inp = InputAudio(AudioFormat("audio/pcm", 16000), VadSettings(), max_turn_s=3.0)
    stops = [e for e in feed(inp, noise, 16000) if isinstance(e, SpeechStopped)]
    assert stops and all(len(s.audio) <= 3.2 * ASR_RATE for s in stops)


def test_manual_commit_takes_the_whole_buffer_including_the_resampler_tail():
    audio = np.sin(np.linspace(0, 2000, 8000 * 2)).astype(np.float32) * 0.3  # 2 s at 8 kHz
    inp = InputAudio(PCMA, None)
    inp.append(encode_audio(audio, PCMA))
    turn = inp.commit()
    assert abs(len(turn.audio) - 2 * ASR_RATE) <= 1
    assert (turn.start_ms, turn.end_ms) == (0, 2000)
    assert inp.buffered_ms == 0


def test_a_buffer_never_committed_keeps_only_the_newest_audio():
    inp = InputAudio(AudioFormat("audio/pcm", 16000), None, max_buffer_s=1.0)
    for _ in range(50):
        inp.push(np.zeros(1600, dtype=np.float32), 16000)  # 5 s in 100 ms chunks
    assert inp.buffered_ms <= 1100
    assert inp.audio_ms == 5000
