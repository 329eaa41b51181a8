"""The voice library over HTTP: upload, list, get and delete voices; each request acts for its key's tenant.

    POST   /v1/voices          multipart: file (the audio), name, transcript (optional: transcribed if missing)
    GET    /v1/voices          {"object": "list", "data": [voice, ...]}: presets, then the tenant's own voices
    GET    /v1/voices/{id}     a voice, by id or name
    DELETE /v1/voices/{id}     {"id", "object": "audio.voice.deleted", "deleted": true}

A voice is `{"id", "object": "audio.voice", "type": "audio_sample", "name", "created_at"}` as OpenAI's custom
voices, plus ours: `transcript`, `duration_s`, `preset`, and on upload `notes` (e.g. that the clip was
trimmed). Errors have OpenAI's shape, `{"error": {"type", "code", "message", "param"}}`, and a 4xx status for
anything the client can fix: 400 (bad clip or field), 401 (no or unknown key), 403 (a preset, or the voice
limit), 404 (no such voice for this key: another tenant's voice reads as missing), 409 (name taken), 413 (file
too large, refused from its Content-Length before any byte is read when it says so).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import numpy as np
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from higgs_agent import SAMPLE_RATE
from higgs_agent.audio import resample
from higgs_agent.voices.clip_check import ClipError, ClipLimits, check_clip_bytes
from higgs_agent.voices.library import (
    MAX_TRANSCRIPT_CHARS,
    InvalidVoiceName,
    PresetReadOnly,
    Voice,
    VoiceLibrary,
    VoiceLibraryError,
    VoiceLimitReached,
    VoiceNameTaken,
    VoiceNotFound,
)

Transcribe = Callable[[np.ndarray], str]  # 16 kHz mono float32 -> text
TenantOf = Callable[[Request], "str | None"]
TenantHandler = Callable[[Request, str], Awaitable[Response]]
Endpoint = Callable[[Request], Awaitable[Response]]
TRANSCRIBE_RATE = 16_000
FORM_OVERHEAD_BYTES = 64 << 10  # boundaries, part headers, name and transcript around the file
_STATUS = {VoiceNotFound: 404, PresetReadOnly: 403, VoiceLimitReached: 403, VoiceNameTaken: 409,
           InvalidVoiceName: 400}


class _UploadTooLarge(Exception):
    pass


def error_response(status: int, code: str, message: str, param: str | None = None) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return JSONResponse({"error": {"type": kind, "code": code, "message": message, "param": param}},
                        status_code=status)


def voice_json(voice: Voice) -> dict:
    return {"id": voice.id, "object": "audio.voice", "type": "audio_sample", "name": voice.name,
            "created_at": voice.created_at, "transcript": voice.transcript, "duration_s": voice.duration_s,
            "preset": voice.preset}


def voice_routes(library: VoiceLibrary, transcribe: Transcribe, tenant_of: TenantOf,
                 limits: ClipLimits = ClipLimits()) -> list[Route]:
    max_body = limits.max_bytes + FORM_OVERHEAD_BYTES

    def tenant_or_401(handler: TenantHandler) -> Endpoint:
        async def endpoint(request: Request) -> Response:
            tenant = tenant_of(request)
            if tenant is None:
                return error_response(401, "invalid_api_key", "missing or unknown API key: send "
                                                               "'Authorization: Bearer KEY'")
            try:
                return await handler(request, tenant)
            except VoiceLibraryError as exc:
                param = "name" if isinstance(exc, (VoiceNameTaken, InvalidVoiceName)) else None
                return error_response(_STATUS.get(type(exc), 400), exc.code, str(exc), param)
        return endpoint

    async def capped_body(request: Request) -> AsyncIterator[bytes]:
        received = 0
        async for chunk in request.stream():
            received += len(chunk)
            if received > max_body:  # a chunked upload has no Content-Length to refuse it by
                raise _UploadTooLarge
            yield chunk

    async def create(request: Request, tenant: str) -> Response:
        if not request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
            return error_response(400, "invalid_content_type", "send multipart/form-data with the parts file, "
                                                               "name and (optional) transcript")
        if int(request.headers.get("content-length") or 0) > max_body:
            return _too_large(limits)
        try:
            form = await MultiPartParser(request.headers, capped_body(request), max_files=1, max_fields=8,
                                         max_part_size=FORM_OVERHEAD_BYTES).parse()
        except _UploadTooLarge:
            return _too_large(limits)
        except MultiPartException as exc:
            return error_response(400, "invalid_multipart", f"the form cannot be read: {exc.message}")
        try:
            upload, name = form.get("file"), form.get("name")
            transcript = form.get("transcript")
            if not isinstance(upload, UploadFile):
                return error_response(400, "missing_file", "attach the audio as the form part 'file'", "file")
            if not isinstance(name, str) or not name.strip():
                return error_response(400, "missing_name", "give the voice a name (form part 'name')", "name")
            if transcript is not None and not isinstance(transcript, str):
                return error_response(400, "invalid_transcript", "'transcript' must be text", "transcript")
            transcript = " ".join(transcript.split()) if transcript else None
            if transcript and len(transcript) > MAX_TRANSCRIPT_CHARS:
                return error_response(400, "invalid_transcript", f"the transcript is longer than "
                                                                 f"{MAX_TRANSCRIPT_CHARS} characters", "transcript")
            data = await upload.read()
        finally:
            await form.close()
        try:
            clip = await asyncio.to_thread(check_clip_bytes, data, allow_trim=transcript is None, limits=limits)
        except ClipError as exc:
            return error_response(413 if exc.code == "file_too_large" else 400, exc.code, exc.message, exc.param)
        if transcript is None:
            heard = await asyncio.to_thread(transcribe, resample(clip.audio, clip.sample_rate, TRANSCRIBE_RATE))
            transcript = " ".join((heard or "").split())
            if not transcript:
                return error_response(400, "transcription_empty", "no words were recognized in the clip; send "
                                                                  "its transcript", "transcript")
        voice = await asyncio.to_thread(library.create, tenant, name, clip.audio, SAMPLE_RATE, transcript)
        return JSONResponse({**voice_json(voice), "notes": list(clip.notes)})

    async def listing(_: Request, tenant: str) -> Response:
        voices = await asyncio.to_thread(library.voices, tenant)
        return JSONResponse({"object": "list", "data": [voice_json(v) for v in voices]})

    create_endpoint, list_endpoint = tenant_or_401(create), tenant_or_401(listing)

    async def collection(request: Request) -> Response:
        return await (create_endpoint if request.method == "POST" else list_endpoint)(request)

    async def one(request: Request, tenant: str) -> Response:
        key = request.path_params["voice_id"]
        if request.method == "DELETE":
            voice = await asyncio.to_thread(library.delete, tenant, key)
            return JSONResponse({"id": voice.id, "object": "audio.voice.deleted", "deleted": True})
        return JSONResponse(voice_json(await asyncio.to_thread(library.get, tenant, key)))

    return [Route("/v1/voices", collection, methods=["GET", "POST"]),
            Route("/v1/voices/{voice_id}", tenant_or_401(one), methods=["GET", "DELETE"])]


def _too_large(limits: ClipLimits) -> Response:
    return error_response(413, "file_too_large", f"the upload exceeds {limits.max_bytes} bytes "
                                                 f"({limits.max_bytes >> 20} MiB) of audio", "file")
