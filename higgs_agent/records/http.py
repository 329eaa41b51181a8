"""The records over HTTP; each request sees only its key's tenant's sessions (another tenant's read as missing).

    GET    /v1/sessions                ?limit=20&after=ID: {"object": "list", "data": [session, ...], "has_more",
                                       "first_id", "last_id"}, newest first
    GET    /v1/sessions/{id}           a session with its `items` in order and its `latencies`
    DELETE /v1/sessions/{id}           {"id", "object": "realtime.session.record.deleted", "deleted": true}
    GET    /v1/sessions/{id}/audio     the whole call as a WAV (serve --records-audio): stereo, 24 kHz, caller
                                       left and agent right, on the caller's clock (records/audio.py);
                                       ?side=caller (mono, 16 kHz) or ?side=agent (mono, 24 kHz): one side alone
    GET    /v1/sessions/{id}/items/{item_id}/audio
                                       one item's audio as a mono WAV: a user turn at 16 kHz, a reply at 24 kHz
                                       as far as it was heard

A session is `{"id", "object": "realtime.session.record", "transport", "model", "created_at", "ended_at"}`
(unix seconds; `ended_at` null while it is open, or if the server was killed). Errors have OpenAI's shape,
`{"error": {"type", "code", "message", "param"}}`: 400 (a bad `limit` or `after`), 404 (no such session for this
key; `audio_not_found`: no audio on record for it), 503 (the database cannot be read now).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from higgs_agent.records.audio import Sound, call_sound, item_sound
from higgs_agent.records.audio_codec import wav_bytes
from higgs_agent.records.store import RecordStore

log = logging.getLogger(__name__)
TenantOf = Callable[[Request], str]
DEFAULT_LIMIT = 20
MAX_LIMIT = 100


def error_response(status: int, code: str, message: str, param: str | None = None) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return JSONResponse({"error": {"type": kind, "code": code, "message": message, "param": param}},
                        status_code=status)


def _not_found(session_id: str) -> JSONResponse:
    return error_response(404, "session_not_found", f"no session on record with id '{session_id}'")


def _session(row: dict[str, Any]) -> dict[str, Any]:
    return {"id": row["id"], "object": "realtime.session.record", "transport": row["transport"],
            "model": row["model"], "created_at": row["started_at"], "ended_at": row["ended_at"]}


def _item(row: dict[str, Any]) -> dict[str, Any]:
    return {"id": row["item_id"], "type": row["kind"], "role": row["role"], "status": row["status"],
            "content_type": row["content_type"], "text": row["text"], "language": row["language"],
            "response_id": row["response_id"], "context": row["context"], "call": row["call"],
            "truncated": row["truncated"], "heard_ms": row["heard_ms"], "deleted": row["deleted"],
            "created_at": row["created_at"]}


def _latency(row: dict[str, Any]) -> dict[str, Any]:
    return {"response_id": row["response_id"], "user_item_id": row["user_item_id"],
            "reply_item_id": row["reply_item_id"], "at": row["at"], "stages_ms": row["stages_ms"]}


AUDIO_READS_AT_ONCE = 2  # a whole call's WAV is built in memory (~1 GB for an hour): a few at a time


def record_routes(store: RecordStore, tenant_of: TenantOf) -> list[Route]:
    # Reads on threads of their own: the database never holds the event loop, and a slow read (a long call's
    # audio) never holds up the default executor's threads that live replies use.
    pool = ThreadPoolExecutor(max_workers=AUDIO_READS_AT_ONCE + 2, thread_name_prefix="higgs-records-read")
    audio_reads = asyncio.Semaphore(AUDIO_READS_AT_ONCE)

    async def read(call: Callable[[], Any]) -> Any:  # noqa: ANN401 - what the store's read returns
        return await asyncio.get_running_loop().run_in_executor(pool, call)

    async def list_sessions(request: Request) -> Response:
        tenant = tenant_of(request)
        try:
            limit = int(request.query_params.get("limit", DEFAULT_LIMIT))
        except ValueError:
            limit = 0
        if not 1 <= limit <= MAX_LIMIT:
            return error_response(400, "invalid_value", f"limit must be an integer from 1 to {MAX_LIMIT}", "limit")
        after = request.query_params.get("after") or None
        try:
            rows, more = await read(lambda: store.list_sessions(tenant, limit, after))
        except KeyError:
            return error_response(400, "invalid_value", f"after: no session on record with id '{after}'", "after")
        except Exception as exc:  # noqa: BLE001 - the database is down: a clear 503, the server goes on
            return _unavailable(exc)
        data = [_session(row) for row in rows]
        return JSONResponse({"object": "list", "data": data, "has_more": more,
                             "first_id": data[0]["id"] if data else None, "last_id": data[-1]["id"] if data else None})

    async def get_session(request: Request) -> Response:
        session_id = request.path_params["session_id"]
        try:
            row = await read(lambda: store.get_session(tenant_of(request), session_id))
        except Exception as exc:  # noqa: BLE001
            return _unavailable(exc)
        if row is None:
            return _not_found(session_id)
        return JSONResponse({**_session(row), "items": [_item(item) for item in row["items"]],
                             "latencies": [_latency(latency) for latency in row["latencies"]]})

    async def delete_session(request: Request) -> Response:
        session_id = request.path_params["session_id"]
        try:
            deleted = await read(lambda: store.delete_session(tenant_of(request), session_id))
        except Exception as exc:  # noqa: BLE001
            return _unavailable(exc)
        if not deleted:
            return _not_found(session_id)
        log.info("records: session %s deleted on request", session_id)
        return JSONResponse({"id": session_id, "object": "realtime.session.record.deleted", "deleted": True})

    async def audio(request: Request) -> Response:
        session_id, item_id = request.path_params["session_id"], request.path_params.get("item_id")
        tenant = tenant_of(request)
        side = request.query_params.get("side") or None
        if side not in (None, "caller", "agent"):
            return error_response(400, "invalid_value", "side must be caller or agent (or absent: both)", "side")

        def wav() -> bytes | None | bool:  # False: no such session for this tenant; None: no audio of it
            found = store.get_audio(tenant, session_id, item_id)
            if found is None:
                return False
            made: Sound | None = item_sound(found, item_id) if item_id is not None else (
                call_sound(found, side) if found.rows else None)
            return None if made is None else wav_bytes(made.samples, made.rate)

        try:
            async with audio_reads:  # others wait their turn rather than each holding a call's audio at once
                made = await read(wav)  # decoding and mixing are work too: off the event loop with the reads
        except Exception as exc:  # noqa: BLE001
            return _unavailable(exc)
        if made is False:
            return _not_found(session_id)
        if made is None:
            return error_response(404, "audio_not_found", f"no audio on record for {item_id or session_id} (the "
                                  "server keeps audio with serve --records-audio)")
        return Response(made, media_type="audio/wav")

    return [Route("/v1/sessions", list_sessions, methods=["GET"]),
            Route("/v1/sessions/{session_id}", get_session, methods=["GET"]),
            Route("/v1/sessions/{session_id}", delete_session, methods=["DELETE"]),
            Route("/v1/sessions/{session_id}/audio", audio, methods=["GET"]),
            Route("/v1/sessions/{session_id}/items/{item_id}/audio", audio, methods=["GET"])]


def _unavailable(exc: Exception) -> JSONResponse:
    log.warning("records: reading the database failed: %s", exc)
    return error_response(503, "records_unavailable", "the records database cannot be read now; try again later")
