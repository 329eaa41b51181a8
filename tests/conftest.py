"""Shared fixtures: tiny random-weight Higgs models written to disk and loaded the way real ones are."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch a model hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

from higgs_agent.model import load_higgs  # noqa: E402
from higgs_agent.model.tiny import make_tiny_model  # noqa: E402


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("tiny-model"), size="tiny", seed=0)


@pytest.fixture(scope="session")
def bundle(tiny_dir):
    return load_higgs(str(tiny_dir), device="cpu")
