"""The command line as a new user meets it: help that answers at once, and errors that say what to do."""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from higgs_agent.cli import build_parser
from higgs_agent.model import ModelNotFoundError, load_higgs
from higgs_agent.model.loader import TextHeadMissingFromCheckpoint, is_hub_id

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "higgs_agent", *args], cwd=cwd or ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_help_answers_without_importing_torch():
    code = ("import sys\nfrom higgs_agent.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'help imported torch'\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "make-tiny-model" in done.stdout and "serve" in done.stdout and "talk" in done.stdout


def _actions(parser: argparse.ArgumentParser, path: str = "higgs-agent"):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _actions(sub, f"{path} {name}")
        elif not isinstance(action, argparse._HelpAction):
            yield path, action


def test_every_option_of_every_command_has_a_help_line():
    missing = [f"{path} {'/'.join(action.option_strings) or action.dest}"
               for path, action in _actions(build_parser()) if not (action.help or "").strip()]
    assert not missing


def test_a_bad_option_prints_that_commands_usage():
    done = run_cli("serve", "--bogus", "1")
    assert done.returncode == 2
    assert "usage: higgs-agent serve" in done.stderr and "--bogus" in done.stderr


def test_hub_ids_and_local_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    assert is_hub_id("bosonai/higgs-audio-v2-generation-3B-base")
    assert not is_hub_id("models/tinyy")  # ./models exists: a typo of a folder, not a repository
    assert not is_hub_id("./tiny") and not is_hub_id("/abs/tiny") and not is_hub_id("a/b/c")


def test_a_missing_relative_folder_is_said_to_be_missing_not_fetched(tmp_path):
    (tmp_path / "models").mkdir()
    started = time.monotonic()
    done = run_cli("speak", "hi", "-o", "out.wav", "--model", "models/tinyy", cwd=tmp_path)
    assert done.returncode == 2
    assert "models/tinyy' does not exist" in done.stderr
    assert "hf download models/tinyy" not in done.stderr and "hub" not in done.stderr.split("does not exist")[0]
    assert time.monotonic() - started < 60  # no hub retries (the whole run, imports included)


def test_serve_says_a_folder_is_missing_before_importing_torch(tmp_path):
    """A wrong --model or --codec is known from the file system alone: said before torch and transformers
    are imported (they took 19-24 s on 2 cores before the error)."""
    for flags, needle in ((["--model", str(tmp_path / "nope")], "nope' does not exist"),
                          (["--model", str(tmp_path), "--codec", str(tmp_path)], "not the Higgs Audio v2 codec")):
        code = ("import sys\nfrom higgs_agent.cli import main\nrc = main(sys.argv[1:])\n"
                "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'torch was imported'\n"
                "sys.exit(rc)\n")
        if flags[-1] == str(tmp_path):
            (tmp_path / "config.json").write_text('{"model_type": "higgs_audio_v2"}')
        done = subprocess.run([sys.executable, "-c", code, "serve", *flags], cwd=ROOT, capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 2, done.stderr
        assert needle in done.stderr, done.stderr


def test_the_missing_folder_message_names_the_model_once(tmp_path):
    with pytest.raises(ModelNotFoundError) as info:
        load_higgs(str(tmp_path / "nope"))
    assert str(info.value).count("Higgs Audio v2") == 1


def test_a_port_in_use_is_reported_before_the_model_loads(tiny_dir):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run_cli("serve", "--model", str(tiny_dir), "--port", str(port))
    assert done.returncode == 2
    assert f"port {port}" in done.stderr and "use --port" in done.stderr
    assert "model:" not in done.stderr  # refused before loading anything


def test_native_without_a_text_head_is_refused_at_start_up(tiny_dir):
    with pytest.raises(TextHeadMissingFromCheckpoint, match="no text head.*--text-head"):
        load_higgs(str(tiny_dir), device="cpu", use_text_head=True)
    done = run_cli("serve", "--model", str(tiny_dir), "--responder", "native", "--port", "0")
    assert done.returncode == 2 and "no text head" in done.stderr


def test_loading_shows_progress_and_raises_no_deprecation_warnings(tiny_dir):
    code = ("import warnings, logging\nwarnings.simplefilter('error', FutureWarning)\n"
            "warnings.simplefilter('error', DeprecationWarning)\n"
            "from higgs_agent.model import load_higgs\nfrom higgs_agent.model.prompts import SpeechPrompt\n"
            "from higgs_agent.model.sampling import SamplingSettings\n"
            "from higgs_agent.streaming.engine import StreamingEngine\n"
            "lines = []\n"
            f"bundle = load_higgs({str(tiny_dir)!r}, device='cpu', progress=lines.append)\n"
            "engine = StreamingEngine(bundle)\n"
            "engine.generate(SpeechPrompt('Hello there.'), SamplingSettings(greedy=True, max_frames=20))\n"
            "engine.close()\nprint('\\n'.join(lines))\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "model: " in done.stdout and "codec: " in done.stdout and "parameters" in done.stdout


def test_building_the_package_metadata_warns_about_nothing(tmp_path):
    done = subprocess.run([sys.executable, "-W", "error", "-c",
                           "import setuptools.build_meta as b, sys; b.prepare_metadata_for_build_wheel(sys.argv[1])",
                           str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
