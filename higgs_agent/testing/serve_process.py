"""A real `higgs-agent serve` in a subprocess, for tests and benchmarks: started on a free port, waited for
until /health answers (or until it exits, with its log in the error), stopped on leaving."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


class ServeFailed(RuntimeError):
    """`serve` exited at start-up or never answered; the message carries the end of its log."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class ServeProcess:
    process: subprocess.Popen
    base: str  # http://127.0.0.1:PORT
    log_path: Path
    started_at: float  # time.monotonic() when the process was started
    healthy_after_s: float | None = None

    @property
    def ws_url(self) -> str:
        return self.base.replace("http://", "ws://") + "/v1/realtime"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def wait_healthy(server: ServeProcess, timeout_s: float) -> float:
    """Seconds from the process's start until /health answered 200; ServeFailed if it exits or times out."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise ServeFailed(f"higgs-agent serve exited ({server.process.returncode}) at start-up:\n"
                              f"{server.log()[-3000:]}")
        try:
            if httpx.get(f"{server.base}/health", timeout=1).status_code == 200:
                server.healthy_after_s = time.monotonic() - server.started_at
                return server.healthy_after_s
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise ServeFailed(f"higgs-agent serve did not answer /health within {timeout_s:g} s:\n{server.log()[-3000:]}")


@contextmanager
def running_serve(args: Sequence[str], timeout_s: float = 300.0, log_path: Path | None = None,
                  env: dict[str, str] | None = None, wait: bool = True) -> Iterator[ServeProcess]:
    """`higgs-agent serve ARGS --port P` in a subprocess; yields once healthy (or at once with wait=False)."""
    port = free_port()
    with tempfile.TemporaryDirectory() as scratch:
        path = log_path or Path(scratch) / "serve.log"
        with open(path, "w") as log:
            process = subprocess.Popen([sys.executable, "-m", "higgs_agent", "serve", *args, "--port", str(port)],
                                       stdout=log, stderr=subprocess.STDOUT,
                                       env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})
            server = ServeProcess(process, f"http://127.0.0.1:{port}", path, time.monotonic())
            try:
                if wait:
                    wait_healthy(server, timeout_s)
                yield server
            finally:
                process.terminate()
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(10)
