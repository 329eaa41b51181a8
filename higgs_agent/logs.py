"""One log format for the whole server, with the session (or call) id on every line logged on its behalf.

The id lives in a context variable: set once where a connection is handled, it follows every task created
from there (asyncio copies the context into each task) and every `asyncio.to_thread` call, so a line logged
deep in the engine's async path names its session without any argument threading.
"""

from __future__ import annotations

import contextvars
import logging
import sys

session_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("higgs_session_id", default=None)
FORMAT = "%(asctime)s %(levelname)-7s %(name)s%(session)s: %(message)s"


class _SessionField(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        current = session_id.get()
        record.session = f" [{current}]" if current else ""
        return True


def configure_logging(verbose: bool = False, quiet: bool = False) -> None:
    """INFO by default (start-up stages, sessions, turns), DEBUG with -v, warnings only with `quiet`.
    Third-party loggers (uvicorn's included) go through the same handler and format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT, datefmt="%H:%M:%S"))
    handler.addFilter(_SessionField())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    ours = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    for name in ("higgs_agent", "uvicorn.error"):
        logging.getLogger(name).setLevel(ours)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []  # uvicorn's own handlers would print a second format
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").setLevel(logging.INFO if verbose else logging.WARNING)
