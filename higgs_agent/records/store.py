"""The records' tables, and every read and write of them, through SQLAlchemy Core: SQLite (a file) or PostgreSQL.

Four tables: `record_sessions` (one row per session: its tenant, transport, model, when it started and ended),
`record_items` (the session's conversation items in the order they appeared: role, kind, words, status, the
caller's context, a tool call, where a barge-in cut a reply), `record_latencies` (each reply's latency by
stage) and `record_audio` (with `serve --records-audio`: both sides' audio in FLAC chunks, records/audio.py).
Writes are `Write`s (plain data, made on the event loop by the recorder) that the writer thread applies; reads
answer the HTTP routes. Nothing here knows of sessions or events.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Connection,
    Engine,
    Float,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    and_,
    create_engine,
    delete,
    event,
    exists,
    insert,
    literal,
    or_,
    select,
    update,
)

from higgs_agent.records.audio_codec import encode_flac

metadata = MetaData()

sessions = Table(
    "record_sessions", metadata,
    Column("id", String(64), primary_key=True),
    Column("tenant", String(64), nullable=False, index=True),
    Column("transport", String(16), nullable=False),
    Column("model", Text),
    Column("started_at", Float, nullable=False, index=True),  # unix seconds
    Column("ended_at", Float),
)

items = Table(
    "record_items", metadata,
    Column("session_id", String(64), primary_key=True),
    Column("item_id", String(64), primary_key=True),
    Column("seq", Integer, nullable=False),  # the order the session first told of it
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("role", String(16)),
    Column("kind", String(32)),
    Column("content_type", String(16)),
    Column("text", Text),
    Column("status", String(16)),
    Column("language", String(16)),
    Column("response_id", String(64)),
    Column("context", JSON),  # a user turn's speaker, emotion, language (higgs.input.context's fields)
    Column("call", JSON),  # a tool call: name, arguments, output, error, server_label
    Column("truncated", Boolean, nullable=False, default=False),
    Column("heard_ms", Float),  # a cut reply: how much of its audio the listener heard
    Column("deleted", Boolean, nullable=False, default=False),  # the client deleted it from the conversation
)

latencies = Table(
    "record_latencies", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("session_id", String(64), nullable=False, index=True),
    Column("response_id", String(64), nullable=False),
    Column("user_item_id", String(64)),
    Column("reply_item_id", String(64)),
    Column("at", Float, nullable=False),
    Column("stages_ms", JSON),
)

# Both sides' audio, chunk by chunk as the call goes (AudioWrite's `track` says what a row is).
audio = Table(
    "record_audio", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("session_id", String(64), nullable=False, index=True),
    Column("track", String(8), nullable=False),
    Column("item_id", String(64)),
    Column("start", Integer, nullable=False),  # its first sample: on the caller's clock, or in its item
    Column("samples", Integer, nullable=False),
    Column("rate", Integer, nullable=False),
    Column("at_ms", Float),  # agent: where on the caller's clock the item's audio began to go out
    Column("codec", String(8)),  # flac; None: a turn's span of the caller track, no audio of its own
    Column("data", LargeBinary),
)

_ITEM_FIELDS = ("role", "kind", "content_type", "text", "status", "language", "response_id", "context", "call",
                "truncated", "heard_ms", "deleted")


@dataclass(frozen=True)
class SessionStarted:
    session_id: str
    tenant: str
    transport: str
    model: str | None
    at: float


@dataclass(frozen=True)
class SessionEnded:
    session_id: str
    at: float


@dataclass(frozen=True)
class ItemWrite:
    """What is now known of an item (fields absent: unchanged); inserted at `seq` the first time."""

    session_id: str
    item_id: str
    seq: int
    at: float
    fields: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LatencyWrite:
    session_id: str
    response_id: str
    user_item_id: str | None
    reply_item_id: str | None
    at: float
    stages_ms: Mapping[str, float | None]


@dataclass(frozen=True)
class AudioWrite:
    """A chunk of audio, raw (16-bit mono PCM, little-endian), compressed by the writer thread as it is stored.

    `track` is `caller` (everything the server heard, at 16 kHz: `start` counts samples from the session's
    start), `agent` (a reply's audio as it went out, at 24 kHz: `start` counts samples from the item's start;
    `at_ms`: where on the caller's clock the item began), `turn` (no audio: a user turn's span of the caller
    track, `start` and `samples` on its clock) or `item` (the audio of an item the client created)."""

    session_id: str
    track: str
    item_id: str | None
    start: int
    rate: int
    pcm: bytes = b""
    samples: int = 0
    at_ms: float | None = None

    def __post_init__(self) -> None:
        if self.pcm and not self.samples:
            object.__setattr__(self, "samples", len(self.pcm) // 2)


Write = SessionStarted | SessionEnded | ItemWrite | LatencyWrite | AudioWrite


class RecordStore:
    """The database behind the records: `url` is SQLAlchemy's (sqlite:///path.db, postgresql://...).
    ValueError for a URL SQLAlchemy cannot use (a typo, a driver not installed)."""

    def __init__(self, url: str) -> None:
        self.url = url
        try:
            self.engine: Engine = create_engine(_with_driver(url), pool_pre_ping=True)
        except Exception as exc:  # noqa: BLE001 - ArgumentError, NoSuchModuleError, ImportError...
            raise ValueError(f"--records-url {url!r} cannot be used: {exc}") from None
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self.ready = False

    @property
    def where(self) -> str:
        """The URL without its password, for the log."""
        return self.engine.url.render_as_string(hide_password=True)

    def create(self) -> None:
        """The tables, if they are not there yet (OperationalError and kin when the database is unreachable)."""
        metadata.create_all(self.engine)
        self.ready = True

    def write(self, writes: list[Write]) -> None:
        """Apply writes in one transaction (committed when this returns)."""
        if not self.ready:
            self.create()
        # audio compressed before the transaction, so the database's write lock is held for the inserts only
        flac = {id(write): encode_flac(write.pcm, write.rate) for write in writes
                if isinstance(write, AudioWrite) and write.pcm}
        with self.engine.begin() as conn:
            for write in writes:
                _apply(conn, write, flac.get(id(write)))

    # --- reads -----------------------------------------------------------------------------------------

    def list_sessions(self, tenant: str, limit: int, after: str | None = None) -> tuple[list[dict], bool]:
        """A tenant's sessions, newest first, `limit` of them after the session `after`; and whether more follow."""
        query = select(sessions).where(sessions.c.tenant == tenant)
        with self.engine.connect() as conn:
            if after is not None:
                cursor = conn.execute(select(sessions.c.started_at).where(
                    sessions.c.id == after, sessions.c.tenant == tenant)).scalar()
                if cursor is None:
                    raise KeyError(after)
                query = query.where(or_(sessions.c.started_at < cursor,
                                        and_(sessions.c.started_at == cursor, sessions.c.id < after)))
            rows = conn.execute(query.order_by(sessions.c.started_at.desc(), sessions.c.id.desc())
                                .limit(limit + 1)).mappings().all()
        return [dict(row) for row in rows[:limit]], len(rows) > limit

    def get_session(self, tenant: str, session_id: str) -> dict | None:
        """A tenant's session with its items (in order) and latencies; None if the tenant has no such session."""
        with self.engine.connect() as conn:
            row = conn.execute(select(sessions).where(sessions.c.id == session_id,
                                                      sessions.c.tenant == tenant)).mappings().first()
            if row is None:
                return None
            found = dict(row)
            found["items"] = [dict(r) for r in conn.execute(
                select(items).where(items.c.session_id == session_id).order_by(items.c.seq)).mappings()]
            found["latencies"] = [dict(r) for r in conn.execute(
                select(latencies).where(latencies.c.session_id == session_id).order_by(latencies.c.id)).mappings()]
        return found

    def get_audio(self, tenant: str, session_id: str, item_id: str | None = None) -> SessionAudio | None:
        """A tenant's session's audio rows (of one item, and the caller chunks its turn spans, when `item_id` is
        given) with its items; None if the tenant has no such session."""
        with self.engine.connect() as conn:
            if conn.execute(select(sessions.c.id).where(sessions.c.id == session_id,
                                                        sessions.c.tenant == tenant)).first() is None:
                return None
            mine = audio.c.session_id == session_id
            query = select(audio).where(mine)
            if item_id is not None:
                query = query.where(audio.c.item_id == item_id)
            rows = [dict(row) for row in conn.execute(query.order_by(audio.c.id)).mappings()]
            spans = [row for row in rows if row["track"] == "turn"]
            if item_id is not None and spans:  # a turn's audio is its span of the caller track
                first, last = spans[-1]["start"], spans[-1]["start"] + spans[-1]["samples"]
                rows += [dict(row) for row in conn.execute(select(audio).where(
                    mine, audio.c.track == "caller", audio.c.start < last,
                    audio.c.start + audio.c.samples > first).order_by(audio.c.id)).mappings()]
            found = [dict(row) for row in conn.execute(
                select(items.c.item_id, items.c.seq, items.c.role, items.c.truncated, items.c.heard_ms)
                .where(items.c.session_id == session_id).order_by(items.c.seq)).mappings()]
        return SessionAudio(rows, found)

    def delete_session(self, tenant: str, session_id: str) -> bool:
        """Delete a tenant's session and all of its rows; False if the tenant has no such session."""
        with self.engine.begin() as conn:
            gone = conn.execute(delete(sessions).where(sessions.c.id == session_id, sessions.c.tenant == tenant))
            if gone.rowcount == 0:
                return False
            _delete_rows(conn, [session_id])
        return True

    def prune(self, days: float, now: float | None = None) -> int:
        """Delete the sessions that started more than `days` ago; how many went."""
        if not self.ready:
            self.create()
        cutoff = (time.time() if now is None else now) - days * 86400.0
        with self.engine.begin() as conn:
            old = list(conn.execute(select(sessions.c.id).where(sessions.c.started_at < cutoff)).scalars())
            for start in range(0, len(old), 500):
                chunk = old[start:start + 500]
                conn.execute(delete(sessions).where(sessions.c.id.in_(chunk)))
                _delete_rows(conn, chunk)
        return len(old)

    def close(self) -> None:
        self.engine.dispose()


@dataclass(frozen=True)
class SessionAudio:
    rows: list[dict]  # record_audio rows
    items: list[dict]  # the session's items: item_id, seq, role, truncated, heard_ms


def _with_driver(url: str) -> str:
    """postgresql:// (and postgres://) mean psycopg 3, the driver the project installs (SQLAlchemy's default
    for a bare postgresql:// is psycopg2)."""
    for bare in ("postgresql://", "postgres://"):
        if url.startswith(bare):
            return "postgresql+psycopg://" + url[len(bare):]
    return url


def _sqlite_pragmas(dbapi_connection: Any, _: Any) -> None:  # noqa: ANN401 - a sqlite3 connection
    """WAL: readers (the HTTP routes) never wait on the writer, and a commit is on disk for any later process
    even if this one is killed; a busy timeout rather than an error when two connections meet."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


def _delete_rows(conn: Connection, session_ids: list[str]) -> None:
    conn.execute(delete(items).where(items.c.session_id.in_(session_ids)))
    conn.execute(delete(latencies).where(latencies.c.session_id.in_(session_ids)))
    conn.execute(delete(audio).where(audio.c.session_id.in_(session_ids)))


def _apply(conn: Connection, write: Write, flac: bytes | None = None) -> None:
    match write:
        case SessionStarted(session_id, tenant, transport, model, at):
            conn.execute(insert(sessions).values(id=session_id, tenant=tenant, transport=transport, model=model,
                                                 started_at=at))
        case SessionEnded(session_id, at):
            conn.execute(update(sessions).where(sessions.c.id == session_id).values(ended_at=at))
        case ItemWrite(session_id, item_id, seq, at, fields):
            values = {name: value for name, value in fields.items() if name in _ITEM_FIELDS}
            done = conn.execute(update(items).where(items.c.session_id == session_id, items.c.item_id == item_id)
                                .values(updated_at=at, **values))
            if done.rowcount == 0:
                _insert_into_session(conn, items, dict(session_id=session_id, item_id=item_id, seq=seq, created_at=at,
                                                       updated_at=at, **{"truncated": False, "deleted": False,
                                                                         **values}))
        case LatencyWrite(session_id, response_id, user_item_id, reply_item_id, at, stages_ms):
            _insert_into_session(conn, latencies, dict(session_id=session_id, response_id=response_id,
                                                       user_item_id=user_item_id, reply_item_id=reply_item_id, at=at,
                                                       stages_ms=json.loads(json.dumps(dict(stages_ms)))))
        case AudioWrite(session_id, track, item_id, start, rate, pcm, samples, at_ms):
            _insert_into_session(conn, audio, dict(session_id=session_id, track=track, item_id=item_id, start=start,
                                                   samples=samples, rate=rate, at_ms=at_ms,
                                                   codec="flac" if pcm else None, data=flac))


def _insert_into_session(conn: Connection, table: Table, values: dict[str, Any]) -> None:
    """Insert a row of a session only while the session is on record: a session deleted on request (or never
    recorded, its start dropped while the database was down) gets no rows from writes still on their way."""
    names = list(values)
    row = select(*[literal(values[name], type_=table.c[name].type).label(name) for name in names])
    conn.execute(insert(table).from_select(names, row.where(exists().where(sessions.c.id == values["session_id"]))))
