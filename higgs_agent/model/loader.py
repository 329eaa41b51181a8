"""Load Higgs Audio v2 (LLM + DualFFN adapter), its codec and its processor through transformers.

One entry point, `load_higgs`, takes a hub id or a local folder for each part. A tiny folder written by
`higgs-agent make-tiny-model DIR` holds all three, so `load_higgs("DIR")` is enough for it.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from huggingface_hub import snapshot_download
from safetensors import safe_open
from transformers import (
    AutoTokenizer,
    DacFeatureExtractor,
    HiggsAudioV2ForConditionalGeneration,
    HiggsAudioV2Processor,
    HiggsAudioV2TokenizerModel,
)

from higgs_agent.model.errors import (
    ModelLoadError,
    ModelNotFoundError,
    OutOfGPUMemoryError,
)
from higgs_agent.model.sources import (
    CODEC_TYPE,
    DEFAULT_CODEC,
    DEFAULT_MODEL,
    MODEL_TYPE,
    check_folder,
    is_hub_id,
)

log = logging.getLogger(__name__)

CODEC_SUBFOLDER = "audio_tokenizer"  # where a tiny model folder keeps its codec
CHAT_TEMPLATE_FILE = Path(__file__).with_name("chat_template.jinja")
TEXT_HEAD_WEIGHT = "text_lm_head.weight"



class TextHeadMissingFromCheckpoint(ModelLoadError):
    """`--responder native` needs the text head, and the checkpoint has none."""


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


def download_weights(repo_id: str, what: str, flag: str, progress: Callable[[str], None],
              size: str = "about 12 GB for the model", offline: str = "higgs-agent make-tiny-model DIR") -> str:
    """A hub repository -> its local snapshot (downloaded once, with progress bars; cached after). One
    download instead of one hub round trip per component: offline, that is one fast, clear error."""
    started = time.perf_counter()
    progress(f"{what}: fetching {repo_id} from the Hugging Face hub (cached after the first time) ...")
    try:
        folder = snapshot_download(repo_id)
    except Exception as exc:  # noqa: BLE001 - hub, network and offline-mode errors come in many classes
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelNotFoundError(
            f"could not fetch the {what} {repo_id!r} from the Hugging Face hub ({type(exc).__name__}: {reason}). "
            f"Without network access, download it on a connected machine (`hf download {repo_id} --local-dir "
            f"DIR`, {size}) and pass the folder with {flag} DIR; for an offline test model run `{offline}`."
        ) from exc
    progress(f"{what}: {_folder_size(folder)} in {folder} ({time.perf_counter() - started:.1f} s)")
    return folder


def resolve_source(source: str, expected_type: str, what: str, flag: str,
                   progress: Callable[[str], None] = log.info) -> str:
    """A hub id or a local folder -> a checked local folder."""
    folder = download_weights(source, what, flag, progress) if is_hub_id(source) else source
    return str(check_folder(folder, expected_type, what))


def _folder_size(folder: str | Path) -> str:
    size = sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file())
    return f"{size / 1e9:.1f} GB" if size >= 1e8 else f"{size / 1e6:.1f} MB"


def checked_from_pretrained(cls, folder: str, what: str, **kwargs):  # noqa: ANN001, ANN202
    try:
        return cls.from_pretrained(folder, **kwargs)
    except OSError as exc:  # a folder with missing or unreadable files
        raise ModelLoadError(f"could not load the {what} from {folder!r}: {exc}") from exc


def codec_source_for(model_folder: str, codec_source: str | None) -> str:
    """An explicit codec wins; a model folder with an `audio_tokenizer/` subfolder brings its own."""
    if codec_source:
        return codec_source
    bundled = Path(model_folder) / CODEC_SUBFOLDER
    return str(bundled) if (bundled / "config.json").is_file() else DEFAULT_CODEC


def _has_text_head(folder: str) -> bool:
    """Whether the checkpoint's weights include the text head (read from the safetensors headers; nothing
    is loaded). Without it, `use_text_head=True` would serve from a randomly initialised head."""
    names: set[str] = set()
    for weights in Path(folder).glob("*.safetensors"):
        with safe_open(str(weights), framework="pt") as handle:
            names.update(handle.keys())
    return TEXT_HEAD_WEIGHT in names


def move_to(module: torch.nn.Module, device: torch.device, dtype: torch.dtype, what: str) -> torch.nn.Module:
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
    progress: Callable[[str], None] = log.info,
) -> HiggsBundle:
    """Load the generation model, its codec and processor from hub ids or local folders. `progress` gets one
    line per stage (what, where, size, seconds): a multi-GB load is never silent."""
    model_folder = resolve_source(model, MODEL_TYPE, "Higgs Audio v2 model", "--model", progress)
    codec_folder = resolve_source(codec_source_for(model_folder, codec), CODEC_TYPE,
                                  "Higgs Audio v2 codec (audio tokenizer)", "--codec", progress)
    if use_text_head and not _has_text_head(model_folder):
        raise TextHeadMissingFromCheckpoint(
            f"the checkpoint in {model_folder!r} has no text head ({TEXT_HEAD_WEIGHT}), so --responder native "
            f"would speak text from random weights. Use a checkpoint that includes the head (for an offline "
            f"test: `higgs-agent make-tiny-model DIR --text-head`), or another responder (echo, llm)."
        )
    target = pick_device(device)
    target_dtype = pick_dtype(target, dtype)
    if target.type == "cpu":
        set_cpu_threads(threads)

    started = time.perf_counter()
    tokenizer = checked_from_pretrained(AutoTokenizer, model_folder, "text tokenizer")
    feature_extractor = checked_from_pretrained(DacFeatureExtractor, model_folder, "feature extractor")
    extra = {"use_text_head": True} if use_text_head else {}
    lm = checked_from_pretrained(HiggsAudioV2ForConditionalGeneration, model_folder, "Higgs Audio v2 model",
                          dtype=target_dtype, **extra)
    lm = move_to(lm, target, target_dtype, "Higgs Audio v2 model").eval()
    progress(f"model: {describe_parameters(lm)} on {target} as {str(target_dtype).removeprefix('torch.')} "
             f"({time.perf_counter() - started:.1f} s)")
    started = time.perf_counter()
    audio_tokenizer = checked_from_pretrained(HiggsAudioV2TokenizerModel, codec_folder, "Higgs Audio v2 codec")
    # The codec stays float32: its convolutional decoder is small and loses quality in bf16.
    audio_tokenizer = move_to(audio_tokenizer, target, torch.float32, "codec").eval()
    progress(f"codec: {describe_parameters(audio_tokenizer)} on {target} as float32 "
             f"({time.perf_counter() - started:.1f} s)")

    chat_template = getattr(tokenizer, "chat_template", None) or CHAT_TEMPLATE_FILE.read_text()
    processor = HiggsAudioV2Processor(
        feature_extractor=feature_extractor,
        tokenizer=tokenizer,
        audio_tokenizer=audio_tokenizer,
        chat_template=chat_template,
        audio_stream_bos_id=lm.config.audio_stream_bos_id,
        audio_stream_eos_id=lm.config.audio_stream_eos_id,
    )
    return HiggsBundle(lm, audio_tokenizer, processor, target, target_dtype, model, codec_folder)


def describe_parameters(module: torch.nn.Module) -> str:
    params = sum(p.numel() for p in module.parameters())
    size = sum(p.numel() * p.element_size() for p in module.parameters())
    count = f"{params / 1e9:.2f} B" if params >= 1e9 else f"{params / 1e6:.0f} M"
    return f"{count} parameters ({size / 1e9:.1f} GB)" if size >= 1e8 else f"{count} parameters ({size / 1e6:.0f} MB)"
