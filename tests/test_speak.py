"""`higgs-agent speak` end to end, offline, on a tiny model."""

import subprocess
import sys

import numpy as np
import soundfile as sf

from higgs_agent.bench.codec_quality import snr_db


def _speak(tiny_dir, *args):
    return subprocess.run(
        [sys.executable, "-m", "higgs_agent", "speak", *args, "--model", str(tiny_dir)],
        capture_output=True, timeout=300,
    )


def test_streams_a_24khz_wav_whose_length_matches_the_frames(tiny_dir, tmp_path):
    out = tmp_path / "out.wav"
    result = _speak(tiny_dir, "The quick brown fox.", "-o", str(out), "--greedy", "--max-frames", "48")
    assert result.returncode == 0, result.stderr.decode()
    info = sf.info(str(out))
    assert info.samplerate == 24000 and info.channels == 1
    assert info.frames == (48 - 8) * 960  # 48 rows -> 40 frames of 960 samples
    err = result.stderr.decode()
    assert "TTFA" in err and "real-time factor" in err and "40 frames" in err


def test_streamed_audio_matches_the_generate_reference(tiny_dir, tmp_path):
    streamed, reference = tmp_path / "s.wav", tmp_path / "r.wav"
    args = ["The quick brown fox.", "--greedy", "--max-frames", "48"]
    assert _speak(tiny_dir, *args, "-o", str(streamed)).returncode == 0
    assert _speak(tiny_dir, *args, "-o", str(reference), "--reference").returncode == 0
    a, _ = sf.read(str(streamed), dtype="float32")
    b, _ = sf.read(str(reference), dtype="float32")
    assert len(a) == len(b) and np.abs(b).max() > 0
    assert snr_db(b, a) >= 35  # both pass through 16-bit WAV quantisation


def test_raw_pcm_to_stdout(tiny_dir):
    result = _speak(tiny_dir, "Hi there.", "-o", "-", "--greedy", "--max-frames", "30")
    assert result.returncode == 0
    assert len(result.stdout) == (30 - 8) * 960 * 2  # PCM16 mono


def test_voice_clone_needs_a_transcript(tiny_dir, tmp_path):
    ref = tmp_path / "ref.wav"
    sf.write(str(ref), np.zeros(24000, dtype=np.float32), 24000)
    result = _speak(tiny_dir, "Hi.", "-o", str(tmp_path / "x.wav"), "--voice", str(ref))
    assert result.returncode != 0 and b"--voice-text" in result.stderr
    ok = _speak(tiny_dir, "Hi.", "-o", str(tmp_path / "y.wav"), "--voice", str(ref), "--voice-text", "silence",
                "--greedy", "--max-frames", "20")
    assert ok.returncode == 0, ok.stderr.decode()


def test_missing_model_is_a_clear_error(tmp_path):
    result = subprocess.run([sys.executable, "-m", "higgs_agent", "speak", "Hi", "-o", str(tmp_path / "x.wav"),
                             "--model", str(tmp_path / "absent")], capture_output=True, timeout=120)
    assert result.returncode == 2 and b"does not exist" in result.stderr
