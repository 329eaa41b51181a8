import json

import pytest
import torch
from transformers import HiggsAudioV2ForConditionalGeneration, LlamaConfig

from higgs_agent.model import (
    ModelNotFoundError,
    OutOfGPUMemoryError,
    WrongModelTypeError,
    load_higgs,
)


def test_loads_tiny_folder_on_cpu_in_float32(bundle, tiny_dir):
    assert bundle.device.type == "cpu"
    assert bundle.dtype == torch.float32
    assert next(bundle.model.parameters()).dtype == torch.float32
    assert bundle.model_source == str(tiny_dir)
    assert bundle.codec_source == str(tiny_dir / "audio_tokenizer")  # found inside the model folder
    assert bundle.processor.audio_token_id == 128016
    assert bundle.processor.audio_delay_token_id == 128014
    assert not bundle.model.training


def test_dtype_is_overridable(tiny_dir):
    loaded = load_higgs(str(tiny_dir), device="cpu", dtype="bf16")
    assert next(loaded.model.parameters()).dtype == torch.bfloat16
    assert next(loaded.codec.parameters()).dtype == torch.float32  # the codec stays full precision


def test_missing_folder_says_how_to_get_a_model(tmp_path):
    with pytest.raises(ModelNotFoundError, match="does not exist.*make-tiny-model"):
        load_higgs(str(tmp_path / "nope"))


def test_folder_of_another_model_type_is_refused(tmp_path):
    LlamaConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=1, intermediate_size=8).save_pretrained(tmp_path)
    with pytest.raises(WrongModelTypeError, match="'llama'"):
        load_higgs(str(tmp_path))


def test_folder_without_config_is_refused(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(WrongModelTypeError, match="no config.json"):
        load_higgs(str(tmp_path))


def test_wrong_codec_folder_is_refused(tiny_dir):
    # the model folder itself is not a codec
    with pytest.raises(WrongModelTypeError, match="codec"):
        load_higgs(str(tiny_dir), codec=str(tiny_dir))


def test_unreachable_hub_says_how_to_pass_a_local_folder(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError) as info:
        load_higgs("bosonai/higgs-audio-v2-generation-3B-base")
    message = str(info.value)
    assert "--model DIR" in message and "hf download" in message and "make-tiny-model" in message


def test_out_of_gpu_memory_is_explained(tiny_dir, monkeypatch):
    def no_room(self, *args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 11.50 GiB")

    monkeypatch.setattr(HiggsAudioV2ForConditionalGeneration, "to", no_room)
    with pytest.raises(OutOfGPUMemoryError, match="does not fit.*--device cpu"):
        load_higgs(str(tiny_dir), device="cpu")


def test_saved_config_is_the_higgs_type(tiny_dir):
    assert json.loads((tiny_dir / "config.json").read_text())["model_type"] == "higgs_audio_v2"
