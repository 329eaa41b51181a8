"""Where a model comes from: a hub id or a local folder, checked with the standard library alone, so a wrong
path is reported at once (before torch and transformers take seconds to import)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from higgs_agent.model.errors import ModelNotFoundError, WrongModelTypeError

DEFAULT_MODEL = "bosonai/higgs-audio-v2-generation-3B-base"
DEFAULT_CODEC = "bosonai/higgs-audio-v2-tokenizer"
MODEL_TYPE = "higgs_audio_v2"
CODEC_TYPE = "higgs_audio_v2_tokenizer"

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # org/name


def is_hub_id(source: str) -> bool:
    """Only `org/name` goes to the hub, and only when no local folder could be meant: not an existing path,
    and not `a/b` whose `a` is a local folder (`models/tinyy`, a typo of `models/tiny`, is a missing folder,
    not a hub repository)."""
    if os.path.exists(source) or not _HUB_ID.match(source):
        return False
    return not os.path.isdir(source.split("/")[0])


def saved_folder(source: str, what: str, holding: str = "a saved one (config.json + weights)",
                 example: str = DEFAULT_MODEL, offline: str = "higgs-agent make-tiny-model DIR") -> Path:
    """The folder of a model saved with save_pretrained, or a clear error: missing, or no config.json."""
    folder = Path(source).expanduser()
    if not folder.is_dir():
        raise ModelNotFoundError(
            f"the {what} folder {str(folder)!r} does not exist. Pass a folder holding {holding}, a hub id such "
            f"as {example!r}, or make a tiny offline one with `{offline}`."
        )
    if not (folder / "config.json").is_file():
        raise WrongModelTypeError(f"{str(folder)!r} has no config.json, so it holds no saved {what}.")
    return folder


def check_folder(source: str, expected_type: str, what: str) -> Path:
    """The folder, or a clear error: missing, no config.json, or a folder holding some other model."""
    folder = saved_folder(source, what)
    config_file = folder / "config.json"
    found = json.loads(config_file.read_text()).get("model_type")
    if found != expected_type:
        raise WrongModelTypeError(
            f"{str(folder)!r} holds a model of type {found!r}, not the {what} ({expected_type!r}) expected here."
        )
    return folder


def precheck(model: str | None, codec: str | None = None, reply_model: str | None = None) -> None:
    """What can be known about `--model`, `--codec` and `--reply-model` without loading anything (hub ids are
    fetched later)."""
    if reply_model and not is_hub_id(reply_model):
        check_reply_folder(reply_model)
    if model and not is_hub_id(model):
        check_folder(model, MODEL_TYPE, "Higgs Audio v2 model")
    if codec and not is_hub_id(codec):
        check_folder(codec, CODEC_TYPE, "Higgs Audio v2 codec (audio tokenizer)")


REPLY_MODEL_OFFLINE = "higgs-agent make-tiny-reply-model DIR"


def check_reply_folder(source: str) -> Path:
    """A reply model's folder (`serve --reply-model`), or a clear error: missing, no config.json, or a model
    without a chat template (a base model, not an instruct one)."""
    folder = saved_folder(source, "reply model", holding="an instruct model saved with save_pretrained "
                          "(config.json, weights, tokenizer with a chat template)",
                          example="Qwen/Qwen2.5-1.5B-Instruct", offline=REPLY_MODEL_OFFLINE)
    tokenizer_config = folder / "tokenizer_config.json"
    has_template = (folder / "chat_template.jinja").is_file() or (
        tokenizer_config.is_file() and "chat_template" in json.loads(tokenizer_config.read_text()))
    if not has_template:
        raise WrongModelTypeError(
            f"{str(folder)!r} holds no chat template (chat_template.jinja, or chat_template in "
            f"tokenizer_config.json): it is a base model, or its tokenizer is missing. The reply model must be an "
            f"instruct (chat) model, such as Qwen/Qwen2.5-1.5B-Instruct."
        )
    return folder
