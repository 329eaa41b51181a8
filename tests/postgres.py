"""A real PostgreSQL for a test: Debian's binaries, a cluster made with initdb in a temporary folder, started with
pg_ctl on a free port that listens on a Unix socket only, stopped and removed on leaving."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from higgs_agent.testing.serve_process import free_port


def postgres_bin() -> Path | None:
    """The newest installed PostgreSQL's bin folder (Debian puts them in /usr/lib/postgresql/N/bin)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


@dataclass
class Postgres:
    bin: Path
    data: Path
    socket_dir: Path
    port: int
    as_user: list[str]  # runuser -u postgres -- when the tests run as root (PostgreSQL refuses to)

    @property
    def url(self) -> str:
        return f"postgresql://postgres@/postgres?host={self.socket_dir}&port={self.port}"

    def ctl(self, *args: str) -> None:
        subprocess.run([*self.as_user, str(self.bin / "pg_ctl"), "-D", str(self.data), "-w", *args],
                       check=True, capture_output=True, timeout=60)

    def start(self) -> None:
        self.ctl("-o", f"-p {self.port} -k {self.socket_dir} -c listen_addresses=''",
                 "-l", str(self.data.parent / "postgres.log"), "start")

    def stop(self) -> None:
        self.ctl("-m", "immediate", "stop")


@contextmanager
def running_postgres() -> Iterator[Postgres]:
    folder = postgres_bin()
    if folder is None:
        import pytest

        pytest.skip("PostgreSQL is not installed (apt-get install postgresql; scripts/install.sh --test does)")
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    with tempfile.TemporaryDirectory(prefix="higgs-pg-") as scratch:
        root = Path(scratch)
        data, sockets = root / "data", root / "sockets"
        sockets.mkdir()
        if as_user:
            shutil.chown(root, "postgres")
            shutil.chown(sockets, "postgres")
        subprocess.run([*as_user, str(folder / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                        "--no-sync", "-E", "UTF8"], check=True, capture_output=True, timeout=120)
        server = Postgres(folder, data, sockets, free_port(), as_user)
        server.start()
        try:
            yield server
        finally:
            try:
                server.stop()
            except subprocess.CalledProcessError:
                pass  # a test stopped it already
