"""Streaming text-to-speech over HTTP in the OpenAI `/v1/audio/speech` shape (mounted by `transport.app`)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

from pydantic import BaseModel, Field, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from higgs_agent import SAMPLE_RATE
from higgs_agent.audio import float_to_pcm16
from higgs_agent.model.prompts import SpeechPrompt, build_inputs
from higgs_agent.model.sampling import SamplingSettings
from higgs_agent.streaming.engine import StreamingEngine
from higgs_agent.streaming.generation import AtCapacityError
from higgs_agent.streaming.speech import stream_pcm


class BodyTooLarge(ValueError):
    pass


class SpeechRequest(BaseModel):
    input: str = Field(min_length=1, max_length=4096)
    model: str | None = None  # accepted for OpenAI compatibility; the server has one model
    response_format: str = Field(default="pcm", pattern="^pcm$")  # raw PCM16 mono 24 kHz, streamed
    instructions: str | None = None  # used as the scene description
    seed: int | None = None
    max_frames: int = Field(default=1500, ge=1, le=7500)


MAX_BODY_BYTES = 64 << 10  # 4096 characters of input, with room to spare


async def _body(request: Request) -> bytes:
    """The body, refused past MAX_BODY_BYTES even without a Content-Length (chunked uploads)."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise BodyTooLarge(f"the body exceeds {MAX_BODY_BYTES} bytes")
    return body


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": {"type": "invalid_request_error", "message": message}}, status_code=status)


def speech_endpoint(engine: StreamingEngine) -> Callable[[Request], Awaitable[Response]]:
    bundle = engine.bundle

    async def speech(request: Request) -> Response:
        if int(request.headers.get("content-length") or 0) > MAX_BODY_BYTES:
            return _error(413, f"the body exceeds {MAX_BODY_BYTES} bytes")
        try:
            body = SpeechRequest.model_validate(json.loads(await _body(request)))
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
            return _error(400, "the body must be JSON")
        except BodyTooLarge as exc:
            return _error(413, str(exc))
        except ValidationError as exc:
            return _error(400, exc.errors()[0]["msg"] + f" ({'.'.join(map(str, exc.errors()[0]['loc']))})")
        try:
            prompt = SpeechPrompt(body.input, scene=body.instructions)
        except ValueError as exc:  # e.g. an input of whitespace only
            return _error(400, f"{exc} (input)")
        inputs = build_inputs(bundle.processor, prompt)
        try:
            generation = engine.start(inputs, SamplingSettings(seed=body.seed, max_frames=body.max_frames))
        except AtCapacityError as exc:
            return JSONResponse({"error": {"type": "server_error", "code": "at_capacity", "message": str(exc)}},
                                status_code=503, headers={"Retry-After": "1"})

        async def pcm():
            async for chunk in stream_pcm(engine, generation):  # a client that leaves closes this: cancel
                yield float_to_pcm16(chunk)

        return StreamingResponse(pcm(), media_type=f"audio/pcm;rate={SAMPLE_RATE};channels=1;encoding=s16le")

    return speech
