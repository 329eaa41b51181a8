"""Load Higgs Audio v2 (LLM + DualFFN adapter), its codec and its processor through transformers.

One entry point, `load_higgs`, takes a hub id or a local folder for each part. A tiny folder written by
`higgs-agent make-tiny-model DIR` holds all three, so `load_higgs("DIR")` is enough for it.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoTokenizer,
    DacFeatureExtractor,
    HiggsAudioV2ForConditionalGeneration,
    HiggsAudioV2Processor,
    HiggsAudioV2TokenizerModel,
)
from transformers.utils import logging as hf_logging

from higgs_agent.model.errors import (
    ModelLoadError,
    ModelNotFoundError,
    OutOfGPUMemoryError,
    WrongModelTypeError,
)

log = logging.getLogger(__name__)
# Weight-loading progress bars would interleave with our own output (and PCM on stdout's neighbour).
hf_logging.disable_progress_bar()

DEFAULT_MODEL = "bosonai/higgs-audio-v2-generation-3B-base"
DEFAULT_CODEC = "bosonai/higgs-audio-v2-tokenizer"
MODEL_TYPE = "higgs_audio_v2"
CODEC_TYPE = "higgs_audio_v2_tokenizer"
CODEC_SUBFOLDER = "audio_tokenizer"  # where a tiny model folder keeps its codec
CHAT_TEMPLATE_FILE = Path(__file__).with_name("chat_template.jinja")

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass
class HiggsBundle:
    """Everything needed to turn a prompt into 24 kHz audio."""

    model: HiggsAudioV2ForConditionalGeneration
    codec: HiggsAudioV2TokenizerModel
    processor: HiggsAudioV2Processor
    device: torch.device
    dtype: torch.dtype
    model_source: str
    codec_source: str

    @property
    def tokenizer(self):  # noqa: ANN201 - a transformers tokenizer
        return self.processor.tokenizer

    @property
    def config(self):  # noqa: ANN201 - HiggsAudioV2Config
        return self.model.config

    @property
    def num_codebooks(self) -> int:
        return int(self.model.config.num_codebooks)


def pick_device(device: str | None = None) -> torch.device:
    """`None`/"auto" picks CUDA when present, else CPU."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def pick_dtype(device: torch.device, dtype: str | torch.dtype | None = None) -> torch.dtype:
    """bf16 on CUDA (the released weights' dtype), float32 elsewhere (CPU bf16 matmuls are slow)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    names = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16,
             "float16": torch.float16, "fp32": torch.float32, "float32": torch.float32}
    if dtype not in names:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(names)}")
    return names[dtype]


def set_cpu_threads(threads: int | None = None) -> int:
    """Intra-op threads for CPU inference; default half the cores (at least one).

    A decode step is memory-bound matrix-vector work that extra threads barely speed up, while their
    barriers cost a lot on small VMs (measured on a 2-vCPU machine, mini model: 27 ms per step with one
    thread, 504 ms with two), and the server needs a core for the event loop, codec and ASR."""
    count = threads or max(1, (os.cpu_count() or 2) // 2)
    torch.set_num_threads(count)
    return count


def _is_local(source: str) -> bool:
    return os.path.isdir(source) or not _HUB_ID.match(source)


def _check_source(source: str, expected_type: str, what: str) -> None:
    """Fail early, with advice, on a missing folder or a folder holding some other model."""
    if not _is_local(source):
        return
    folder = Path(source).expanduser()
    if not folder.is_dir():
        raise ModelNotFoundError(
            f"{what} folder {str(folder)!r} does not exist. Pass a folder holding a saved Higgs Audio v2 "
            f"{what} (config.json + weights), or make a tiny offline one with "
            f"`higgs-agent make-tiny-model DIR`."
        )
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise WrongModelTypeError(f"{str(folder)!r} has no config.json, so it holds no saved {what}.")
    found = json.loads(config_file.read_text()).get("model_type")
    if found != expected_type:
        raise WrongModelTypeError(
            f"{str(folder)!r} holds a model of type {found!r}, not the {what} ({expected_type!r}) expected here."
        )


def _hub_error(source: str, what: str, flag: str, exc: Exception) -> ModelNotFoundError:
    return ModelNotFoundError(
        f"Could not fetch the {what} {source!r} from the Hugging Face hub ({type(exc).__name__}: "
        f"{str(exc).splitlines()[0] if str(exc) else 'no detail'}). Without network access, download it on a "
        f"connected machine (`hf download {source} --local-dir DIR`) and pass the folder with {flag} DIR; "
        f"for an offline test model run `higgs-agent make-tiny-model DIR`."
    )


def _from_pretrained(cls, source: str, what: str, flag: str, **kwargs):  # noqa: ANN001, ANN202
    try:
        return cls.from_pretrained(source, **kwargs)
    except OSError as exc:  # hub unreachable, repo missing, HF_HUB_OFFLINE with an empty cache
        if _is_local(source):
            raise ModelLoadError(f"Could not load the {what} from {source!r}: {exc}") from exc
        raise _hub_error(source, what, flag, exc) from exc


def resolve_codec_source(model_source: str, codec_source: str | None) -> str:
    """An explicit codec wins; a model folder with an `audio_tokenizer/` subfolder brings its own."""
    if codec_source:
        return codec_source
    if _is_local(model_source):
        bundled = Path(model_source).expanduser() / CODEC_SUBFOLDER
        if (bundled / "config.json").is_file():
            return str(bundled)
    return DEFAULT_CODEC


def _move(module: torch.nn.Module, device: torch.device, dtype: torch.dtype, what: str) -> torch.nn.Module:
    try:
        return module.to(device=device, dtype=dtype)
    except torch.OutOfMemoryError as exc:
        params = sum(p.numel() for p in module.parameters())
        need_gib = params * torch.finfo(dtype).bits / 8 / 2**30
        raise OutOfGPUMemoryError(
            f"The {what} ({params / 1e9:.2f} B parameters, {need_gib:.1f} GiB in {dtype}) does not fit in the "
            f"memory of {device}. Free the GPU (other processes?), use a GPU with more memory (24 GB is the "
            f"recommended size), or run on the CPU with --device cpu."
        ) from exc


def load_higgs(
    model: str = DEFAULT_MODEL,
    codec: str | None = None,
    device: str | None = None,
    dtype: str | torch.dtype | None = None,
    use_text_head: bool = False,
    threads: int | None = None,
) -> HiggsBundle:
    """Load the generation model, its codec and processor from hub ids or local folders."""
    codec_source = resolve_codec_source(model, codec)
    _check_source(model, MODEL_TYPE, "Higgs Audio v2 model")
    _check_source(codec_source, CODEC_TYPE, "Higgs Audio v2 codec (audio tokenizer)")
    target = pick_device(device)
    target_dtype = pick_dtype(target, dtype)
    if target.type == "cpu":
        set_cpu_threads(threads)

    tokenizer = _from_pretrained(AutoTokenizer, model, "text tokenizer", "--model")
    feature_extractor = _from_pretrained(DacFeatureExtractor, model, "feature extractor", "--model")
    extra = {"use_text_head": True} if use_text_head else {}
    lm = _from_pretrained(HiggsAudioV2ForConditionalGeneration, model, "Higgs Audio v2 model", "--model",
                          dtype=target_dtype, **extra)
    audio_tokenizer = _from_pretrained(HiggsAudioV2TokenizerModel, codec_source,
                                       "Higgs Audio v2 codec (audio tokenizer)", "--codec")
    lm = _move(lm, target, target_dtype, "Higgs Audio v2 model").eval()
    # The codec stays float32: its convolutional decoder is small and loses quality in bf16.
    audio_tokenizer = _move(audio_tokenizer, target, torch.float32, "codec").eval()

    chat_template = getattr(tokenizer, "chat_template", None) or CHAT_TEMPLATE_FILE.read_text()
    processor = HiggsAudioV2Processor(
        feature_extractor=feature_extractor,
        tokenizer=tokenizer,
        audio_tokenizer=audio_tokenizer,
        chat_template=chat_template,
        audio_stream_bos_id=lm.config.audio_stream_bos_id,
        audio_stream_eos_id=lm.config.audio_stream_eos_id,
    )
    log.info("loaded %s (+ codec %s) on %s as %s", model, codec_source, target, target_dtype)
    return HiggsBundle(lm, audio_tokenizer, processor, target, target_dtype, model, codec_source)
