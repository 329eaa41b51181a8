import hashlib
import subprocess
import sys

import pytest
import torch

from higgs_agent.model.tiny import make_tiny_model, parameter_count


def _digest(folder):
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def test_same_seed_writes_identical_files(tmp_path):
    a = make_tiny_model(tmp_path / "a", seed=7)
    b = make_tiny_model(tmp_path / "b", seed=7)
    c = make_tiny_model(tmp_path / "c", seed=8)
    assert _digest(a) == _digest(b)
    weights = "model.safetensors"
    assert _digest(a)[weights] != _digest(c)[weights]


def test_architecture_matches_the_release(bundle):
    config = bundle.config
    assert config.num_codebooks == 8
    assert config.codebook_size == 1026  # 1024 codes + stream BOS + stream EOS
    assert (config.audio_stream_bos_id, config.audio_stream_eos_id) == (1024, 1025)
    assert config.vocab_size == 128256
    layer = bundle.model.model.layers[0]
    for name in ("audio_mlp", "audio_input_layernorm", "audio_post_attention_layernorm"):
        assert hasattr(layer, name)  # DualFFN
    codec = bundle.codec.config
    assert codec.hop_length == 960 and codec.frame_rate == 25 and codec.sample_rate == 24000
    assert codec.num_quantizers == 8 and codec.codebook_size == 1024
    assert list(codec.acoustic_model_config.upsampling_ratios) == [8, 5, 4, 2, 3]


def test_codec_codebooks_are_not_degenerate(bundle):
    # every code must decode to its own sound, or streaming tests would compare silence with silence
    books = bundle.codec.quantizer.quantizers[0].codebook.embed
    assert books.std() > 0.5 and torch.unique(books, dim=0).shape[0] == books.shape[0]


def test_codec_round_trip_has_real_frame_timing(bundle):
    wave = torch.randn(1, 1, 24000 * 2) * 0.1
    with torch.no_grad():
        codes = bundle.codec.encode(wave).audio_codes
        audio = bundle.codec.decode(codes).audio_values
    assert codes.shape == (1, 8, 50)  # 2 s at 25 frames/s
    assert audio.shape[-1] == 50 * 960


def test_mini_size_is_in_range():
    assert 50e6 <= parameter_count("mini") <= 150e6
    assert parameter_count("tiny") < 20e6


def test_cli_writes_a_loadable_folder(tmp_path):
    out = tmp_path / "cli-model"
    result = subprocess.run(
        [sys.executable, "-m", "higgs_agent", "make-tiny-model", str(out), "--size", "tiny", "--seed", "3"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert _digest(out) == _digest(make_tiny_model(tmp_path / "api-model", seed=3))


def test_unknown_size_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown size"):
        make_tiny_model(tmp_path, size="huge")
