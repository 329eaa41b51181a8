"""Client audio formats: parsing session objects, PCM16/G.711 round trips, streaming resampling."""

import numpy as np
import pytest
import soxr

from higgs_agent.audio_formats import (
    PCMA,
    PCMU,
    AudioFormat,
    AudioFormatError,
    StreamResampler,
    decode_audio,
    encode_audio,
)


def _tone(rate, seconds=0.5, freq=440.0, amp=0.5):
    t = np.arange(int(rate * seconds)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _snr_db(ref, test):
    return 10 * np.log10(np.sum(ref.astype(np.float64) ** 2) / np.sum((ref - test).astype(np.float64) ** 2))


# -- parsing ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("obj", "expected"), [
    (None, AudioFormat("audio/pcm", 24000)),
    ({"type": "audio/pcm", "rate": 24000}, AudioFormat("audio/pcm", 24000)),
    ({"type": "audio/pcm", "rate": 16000}, AudioFormat("audio/pcm", 16000)),
    ({"type": "audio/pcm", "rate": 16000.0}, AudioFormat("audio/pcm", 16000)),
    ({"type": "audio/pcm"}, AudioFormat("audio/pcm", 24000)),
    ({"type": "audio/pcmu"}, AudioFormat("audio/pcmu", 8000)),
    ({"type": "audio/pcma", "rate": 8000}, AudioFormat("audio/pcma", 8000)),
    ("pcm16", AudioFormat("audio/pcm", 24000)),
    ("g711_ulaw", PCMU),
    ("g711_alaw", PCMA),
])
def test_parses_session_formats(obj, expected):
    fmt = AudioFormat.from_session(obj)
    assert fmt == expected
    assert AudioFormat.from_session(fmt.to_session()) == fmt


def test_session_objects_and_sizes():
    assert AudioFormat().to_session() == {"type": "audio/pcm", "rate": 24000}
    assert PCMU.to_session() == {"type": "audio/pcmu"}
    assert AudioFormat().bytes_per_sample == 2 and PCMU.bytes_per_sample == 1 and PCMA.bytes_per_sample == 1
    assert PCMU.bytes_for_ms(20) == 160  # one Twilio media frame
    assert AudioFormat().bytes_for_ms(20) == 960 and AudioFormat().duration_ms(960) == 20


@pytest.mark.parametrize(("obj", "param", "words"), [
    ({"type": "audio/wav"}, "session.audio.input.format.type", "unknown audio format type"),
    ({}, "session.audio.input.format.type", "unknown audio format type"),
    ({"type": "audio/pcm", "rate": 44100}, "session.audio.input.format.rate", "24000"),
    ({"type": "audio/pcm", "rate": "24000"}, "session.audio.input.format.rate", "integer"),
    ({"type": "audio/pcm", "rate": True}, "session.audio.input.format.rate", "integer"),
    ({"type": "audio/pcmu", "rate": 16000}, "session.audio.input.format.rate", "8000 Hz"),
    ("opus", "session.audio.input.format", "unknown audio format"),
    ([1, 2], "session.audio.input.format", "must be an object"),
])
def test_bad_formats_name_the_field(obj, param, words):
    with pytest.raises(AudioFormatError, match=words) as info:
        AudioFormat.from_session(obj, param="session.audio.input.format")
    assert info.value.param == param
    assert isinstance(info.value, ValueError)


# -- decoding and encoding ----------------------------------------------------------------------------------

@pytest.mark.parametrize("rate", [24000, 16000])
def test_pcm16_round_trip(rate):
    fmt = AudioFormat("audio/pcm", rate)
    x = _tone(rate)
    data = encode_audio(x, fmt)
    assert len(data) == 2 * len(x)
    y = decode_audio(data, fmt)
    assert y.dtype == np.float32 and len(y) == len(x)
    assert np.abs(y - x).max() < 1 / 16000  # one 16-bit step
    assert decode_audio(encode_audio(np.array([0.0, 1.0, -1.0, 2.0]), fmt), fmt) == pytest.approx(
        [0.0, 32767 / 32768, -32767 / 32768, 32767 / 32768])


def test_pcm16_is_little_endian():
    assert decode_audio(b"\x00\x40", AudioFormat())[0] == 0.5  # 0x4000 = 16384
    assert encode_audio(np.array([0.5], dtype=np.float32), AudioFormat()) == (16384).to_bytes(2, "little")


@pytest.mark.parametrize("fmt", [PCMU, PCMA], ids=["pcmu", "pcma"])
def test_g711_round_trip(fmt):
    x = _tone(8000, freq=300.0)
    data = encode_audio(x, fmt)
    assert len(data) == len(x)  # one byte per sample
    y = decode_audio(data, fmt)
    assert y.dtype == np.float32 and len(y) == len(x)
    assert _snr_db(x, y) > 30  # G.711 gives about 38 dB on a loud tone
    assert np.abs(decode_audio(encode_audio(np.zeros(10), fmt), fmt)).max() < 1e-3


def test_known_g711_values():
    # ITU-T G.711: mu-law 0xFF and 0x7F are +0 and -0; 0x00/0x80 the extremes (+-32124); A-law 0xD5/0x55 are +-8.
    assert decode_audio(b"\xff\x7f", PCMU).tolist() == [0.0, 0.0]
    assert (decode_audio(b"\x00\x80", PCMU) * 32768).tolist() == [-32124.0, 32124.0]
    assert (decode_audio(b"\xd5\x55", PCMA) * 32768).tolist() == [8.0, -8.0]
    assert encode_audio(np.zeros(2), PCMU) == b"\xff\xff"
    assert encode_audio(np.zeros(2), PCMA) == b"\xd5\xd5"


def test_odd_pcm16_byte_count_is_an_error():
    with pytest.raises(AudioFormatError, match="whole number of 16-bit samples"):
        decode_audio(b"\x00\x01\x02", AudioFormat())
    assert len(decode_audio(b"\x00\x01\x02", PCMU)) == 3  # one byte per sample: any count is whole


def test_encode_resamples_from_the_server_rate():
    x = _tone(24000, seconds=1.0, freq=300.0)
    data = encode_audio(x, PCMU, from_rate=24000)
    assert len(data) == 8000
    y = decode_audio(data, PCMU)
    ref = soxr.resample(x, 24000, 8000, quality="HQ")
    assert _snr_db(ref[100:-100], y[100:-100]) > 30


# -- streaming resampler ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("in_rate", "out_rate"), [(24000, 16000), (8000, 16000), (16000, 24000), (24000, 8000)])
def test_stream_resampler_matches_one_shot(in_rate, out_rate):
    rng = np.random.default_rng(0)
    x = (0.3 * rng.standard_normal(in_rate)).astype(np.float32) + _tone(in_rate, 1.0)
    one_shot = soxr.resample(x, in_rate, out_rate, quality="HQ")
    resampler = StreamResampler(in_rate, out_rate)
    chunks, i = [], 0
    while i < len(x):
        n = int(rng.integers(1, 1500))
        chunks.append(resampler.push(x[i:i + n]))
        i += n
    chunks.append(resampler.flush())
    streamed = np.concatenate(chunks)
    assert len(streamed) == len(x) * out_rate // in_rate  # length ratio preserved, no delay left over
    assert np.abs(streamed - one_shot).max() < 1e-4  # and time-aligned with the one-shot result


def test_stream_resampler_starts_afresh_after_flush():
    resampler = StreamResampler(24000, 16000)
    x = _tone(24000, 0.3)
    first = np.concatenate([resampler.push(x), resampler.flush()])
    second = np.concatenate([resampler.push(x), resampler.flush()])
    assert np.array_equal(first, second)


def test_stream_resampler_passes_equal_rates_through():
    resampler = StreamResampler(16000, 16000)
    x = _tone(16000, 0.1)
    assert resampler.passthrough
    assert np.array_equal(resampler.push(x), x) and len(resampler.flush()) == 0
