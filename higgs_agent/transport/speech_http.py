"""`POST /v1/audio/speech` as OpenAI defines it, streamed: the body starts while the engine still speaks.

Fields: `input` (required), `voice`, `response_format` (mp3 default, opus, aac, flac, wav, pcm), `instructions`
(how to speak: our scene description), `speed` (only 1.0), `stream_format` ("audio": the encoded bytes;
"sse": `speech.audio.delta` events with base64 chunks, then `speech.audio.done` with usage), plus ours:
`seed`, `max_frames`, `voices` (a voice per [SPEAKERn] of multi-speaker text), and vLLM-Omni's fields, so that
an agent (`serve --engine-url`) speaks through this server the way it speaks through vLLM-Omni: `ref_audio` (a
clip to clone, as a `data:audio/...;base64,` URI or bare base64: WAV, FLAC or anything libsndfile reads) with
`ref_text` (its words), `max_new_tokens` (= `max_frames`), `stream` (accepted: the body always streams).
`voice` is a library voice or preset of the caller's tenant, the server's default, or one of OpenAI's stock
names (the default). Every client mistake is a 4xx with OpenAI's error body {error: {message, type, param,
code}}; 503 with Retry-After when every engine slot is busy.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Literal

import numpy as np
import soundfile
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from higgs_agent.agent.services import AgentServices, UnknownVoiceError
from higgs_agent.defaults import DEFAULT_TENANT
from higgs_agent.model.prompts import SpeechPrompt, build_inputs
from higgs_agent.model.sampling import SamplingSettings
from higgs_agent.protocol.errors import loads_strict
from higgs_agent.streaming.engine import AtCapacityError, Speech, StreamingEngine
from higgs_agent.transport.auth import principal_of
from higgs_agent.transport.speech_formats import DEFAULT_FORMAT, FORMATS, StreamingEncoder

MAX_BODY_BYTES = 4 << 20  # 4096 characters of input and instructions, and a ref_audio clip of ~30 s of 24 kHz WAV
MAX_REF_SECONDS = 30.0  # a reference is clipped to its last 10 s anyway (agent/speaker.py)
MAX_SEED = 2**63 - 1  # what torch.Generator.manual_seed takes without overflow


class SpeechRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")  # fields OpenAI adds later are accepted

    input: str = Field(min_length=1, max_length=4096)
    model: str | None = None  # the server has one model
    voice: str | None = None
    response_format: str = DEFAULT_FORMAT
    instructions: str | None = Field(default=None, max_length=4096)
    speed: float = 1.0
    stream_format: Literal["audio", "sse"] = "audio"
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)
    max_frames: int = Field(default=1500, ge=1, le=7500)
    voices: list[str] | None = Field(default=None, min_length=1, max_length=8)  # ours: one per [SPEAKERn]
    ref_audio: str | None = None  # vLLM-Omni's voice clone: the clip (data URI or base64) ...
    ref_text: str | None = Field(default=None, max_length=4096)  # ... and the words spoken in it
    max_new_tokens: int | None = Field(default=None, ge=1, le=7500)  # vLLM-Omni's name for max_frames
    stream: bool = True  # vLLM-Omni's "stream raw PCM as decoded": this endpoint always streams


class BodyTooLarge(ValueError):
    pass


class RequestError(Exception):
    """A client mistake: becomes a 4xx with OpenAI's error body."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str = "invalid_value") -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def response(self) -> JSONResponse:
        return JSONResponse({"error": {"message": self.message, "type": "invalid_request_error",
                                       "param": self.param, "code": self.code}}, status_code=self.status)


async def _body(request: Request) -> bytes:
    """The body, refused past MAX_BODY_BYTES even without a Content-Length (chunked uploads)."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise BodyTooLarge(f"the body exceeds {MAX_BODY_BYTES} bytes")
    return body


async def parse_request(request: Request) -> SpeechRequest:
    if int(request.headers.get("content-length") or 0) > MAX_BODY_BYTES:
        raise RequestError(413, f"the body exceeds {MAX_BODY_BYTES} bytes", code="body_too_large")
    try:
        data = loads_strict(await _body(request))
    except BodyTooLarge as exc:
        raise RequestError(413, str(exc), code="body_too_large") from None
    except (ValueError, RecursionError):  # JSONDecodeError, bad UTF-8, ints past Python's digit limit, nesting
        raise RequestError(400, "the body must be a JSON object", code="invalid_json") from None
    if not isinstance(data, dict):
        raise RequestError(400, "the body must be a JSON object", code="invalid_json")
    try:
        body = SpeechRequest.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise RequestError(400, f"{where}: {first['msg']}", param=where or None) from None
    if body.response_format not in FORMATS:
        raise RequestError(400, f"response_format {body.response_format!r} is not supported; use one of "
                           f"{', '.join(FORMATS)}", param="response_format")
    if body.speed != 1.0:
        raise RequestError(400, f"speed {body.speed:g} is not supported: this server speaks at speed 1.0 only",
                           param="speed")
    if not body.input.strip():
        raise RequestError(400, "input is empty: there is nothing to say", param="input")
    if (body.ref_audio is None) != (body.ref_text is None):
        raise RequestError(400, "ref_audio and ref_text go together: the clip to clone and the words spoken in it",
                           param="ref_text" if body.ref_text is None else "ref_audio")
    if body.ref_audio is not None and (body.voice is not None or body.voices is not None):
        raise RequestError(400, "give either ref_audio or a voice name, not both", param="ref_audio")
    return body


def reference_clip(ref_audio: str) -> tuple[np.ndarray, int]:
    """`ref_audio` (a data URI or bare base64 of an audio file) -> mono float32 samples and their rate."""
    payload = ref_audio.split(",", 1)[1] if ref_audio.startswith("data:") else ref_audio
    try:
        samples, rate = soundfile.read(io.BytesIO(base64.b64decode(payload, validate=True)), dtype="float32",
                                       always_2d=True)
    except (ValueError, binascii.Error, soundfile.LibsndfileError) as exc:
        raise RequestError(400, f"ref_audio is not a readable audio file in base64 ({exc})",
                           param="ref_audio") from None
    if len(samples) < rate // 10:
        raise RequestError(400, "ref_audio is shorter than 0.1 s: nothing to clone", param="ref_audio")
    if len(samples) > MAX_REF_SECONDS * rate:
        raise RequestError(400, f"ref_audio is longer than {MAX_REF_SECONDS:g} s", param="ref_audio")
    return samples.mean(axis=1), int(rate)


def speech_endpoint(services: AgentServices) -> Callable[[Request], Awaitable[Response]]:
    engine = services.engine
    bundle = services.bundle
    if bundle is None or not isinstance(engine, StreamingEngine):
        return _no_local_engine
    context = int(bundle.config.max_position_embeddings)

    async def speech(request: Request) -> Response:
        principal = principal_of(request.scope)
        tenant = principal.tenant if principal is not None else DEFAULT_TENANT
        try:
            body = await parse_request(request)
            if body.voices is not None:
                speakers = tuple([await services.voice_reference(name, tenant) for name in body.voices])
                if not all(speakers):
                    raise RequestError(400, "every voice in voices must be a library voice or preset", param="voices")
                prompt = SpeechPrompt(body.input, scene=body.instructions, speaker_voices=speakers)
            elif body.ref_audio is not None:
                assert body.ref_text is not None
                clip, rate = reference_clip(body.ref_audio)
                voice = await engine.voice(clip, rate, body.ref_text, stage="ref_audio")
                prompt = SpeechPrompt(body.input, scene=body.instructions, voice=voice)
            else:
                prompt = SpeechPrompt(body.input, scene=body.instructions,
                                      voice=await services.voice_reference(body.voice, tenant))
        except RequestError as exc:
            return exc.response()
        except UnknownVoiceError as exc:
            return RequestError(400, str(exc), param="voices" if body.voices else "voice").response()
        except ValueError as exc:  # e.g. [SPEAKER2] with two voices
            return RequestError(400, str(exc), param="input").response()
        inputs = await engine.run(lambda: build_inputs(bundle.processor, prompt))  # the tokenizer: off the loop
        prompt_tokens = int(inputs.input_ids.shape[1])
        if prompt_tokens >= context:
            return RequestError(400, f"input and instructions make a prompt of {prompt_tokens} tokens; the model's "
                                f"context holds {context}: shorten them", param="input").response()
        frames = body.max_new_tokens or body.max_frames
        settings = SamplingSettings(seed=body.seed, max_frames=min(frames, context - prompt_tokens))
        stream = engine.stream(inputs, settings)
        try:
            handle = await stream.__aenter__()  # the capacity check happens now, before any byte is sent
        except AtCapacityError as exc:
            return JSONResponse({"error": {"message": str(exc), "type": "server_error", "param": None,
                                           "code": "at_capacity"}}, status_code=503, headers={"Retry-After": "1"})
        fmt = FORMATS[body.response_format]

        async def encoded() -> AsyncIterator[bytes]:
            encoder = StreamingEncoder(fmt)
            try:
                async for chunk in handle.pcm():
                    if data := encoder.encode(chunk):
                        yield data
                if data := encoder.finish():
                    yield data
            finally:  # also when the client leaves mid-body: the stream is let go of, its slot freed
                encoder.close()
                await stream.__aexit__(None, None, None)

        if body.stream_format == "audio":
            return StreamingResponse(encoded(), media_type=fmt.media_type)
        return StreamingResponse(_events(encoded(), handle, prompt_tokens), media_type="text/event-stream")

    return speech


async def _no_local_engine(request: Request) -> Response:
    return JSONResponse({"error": {"message": "this server speaks through remote engines (serve --engine-url): send "
                                   "speech requests to one of them", "type": "invalid_request_error", "param": None,
                                   "code": "no_local_engine"}}, status_code=501)


async def _events(encoded: AsyncIterator[bytes], handle: Speech, prompt_tokens: int) -> AsyncIterator[str]:
    """`stream_format: "sse"`: the encoded audio as base64 deltas, then the usage."""
    async for data in encoded:
        yield _sse({"type": "speech.audio.delta", "audio": base64.b64encode(data).decode("ascii")})
    frames = handle.stats.frames
    yield _sse({"type": "speech.audio.done", "usage": {
        "input_tokens": prompt_tokens, "output_tokens": frames, "total_tokens": prompt_tokens + frames}})


def _sse(event: dict) -> str:
    return f"data: {json.dumps(event)}\n\n"
