"""Conversations on record: every session's items and reply latencies, written as they happen to SQLite or
PostgreSQL (`serve --records-url`), read back per tenant over HTTP (`GET /v1/sessions`).

`store.py` holds the tables and their reads and writes (SQLAlchemy Core); `writer.py` the one thread that
commits them, fed by a bounded queue the event loop never waits on; `http.py` the routes. What a session says
becomes writes in `agent/recording.py` (the session's observer): this package knows nothing of sessions.
"""

from __future__ import annotations

from higgs_agent.records.store import RecordStore
from higgs_agent.records.writer import RecordWriter

__all__ = ["RecordStore", "RecordWriter"]
