"""A stand-in for vLLM-Omni serving Higgs Audio v2 (no GPU here to run the real one): its `/v1/audio/speech`
takes exactly the request fields of vLLM-Omni's `OpenAICreateSpeechRequest`
(vllm_omni/entrypoints/openai/protocol/audio.py) and refuses any other with 400, as a strict reading of it
would, checks the streaming and voice-clone rules it documents (`stream: true` needs `response_format` pcm or
wav; `ref_audio` is a URL, base64 or data URI, with `ref_text`), and streams a known tone as raw 24 kHz PCM16
so a test can compare what reaches the client with what was sent. Every accepted request is kept."""

from __future__ import annotations

import asyncio
import base64
import io
from typing import Literal

import numpy as np
import soundfile
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

RATE = 24_000


class VllmOmniSpeechRequest(BaseModel):
    """vLLM-Omni's request fields, names and types as its model has them; `extra="forbid"` so that anything
    we send that it does not define fails the test."""

    model_config = ConfigDict(extra="forbid")

    input: str
    model: str | None = None
    voice: str | None = None
    instructions: str | None = None
    response_format: Literal["wav", "pcm", "flac", "mp3", "aac", "opus"] = "wav"
    speed: float | None = Field(default=1.0, ge=0.25, le=4.0)
    stream_format: Literal["sse", "audio"] | None = "audio"
    stream: bool = False
    task_type: Literal["CustomVoice", "VoiceDesign", "Base"] | None = None
    language: str | None = None
    ref_audio: str | None = None
    ref_text: str | None = None
    x_vector_only_mode: bool | None = None
    speaker_embedding: list[float] | None = None
    max_new_tokens: int | None = None
    initial_codec_chunk_frames: int | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def streaming_needs_pcm(self) -> VllmOmniSpeechRequest:
        if self.stream and self.response_format not in ("pcm", "wav"):
            raise ValueError("Streaming (stream=true) requires response_format='pcm' or 'wav'")
        return self


def tone(seconds: float, hz: float = 220.0) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def decode_ref_audio(ref_audio: str) -> tuple[np.ndarray, int]:
    payload = ref_audio.split(",", 1)[1] if ref_audio.startswith("data:") else ref_audio
    samples, rate = soundfile.read(io.BytesIO(base64.b64decode(payload, validate=True)), dtype="float32")
    return samples, int(rate)


class VllmOmniStandIn:
    def __init__(self, seconds_per_phrase: float = 1.0, chunk_ms: int = 40) -> None:
        self.requests: list[VllmOmniSpeechRequest] = []
        self.sent: list[np.ndarray] = []  # each request's audio, as sent
        self.seconds_per_phrase = seconds_per_phrase
        self.chunk = RATE * chunk_ms // 1000
        self.app = Starlette(routes=[Route("/health", self.health),
                                     Route("/v1/audio/speech", self.speech, methods=["POST"])])

    async def health(self, _: Request) -> Response:
        return Response(status_code=200)  # vLLM's /health: 200 and no body

    async def speech(self, request: Request) -> Response:
        try:
            body = VllmOmniSpeechRequest.model_validate_json(await request.body())
            if body.ref_audio is not None:
                if not body.ref_text:
                    raise ValueError("ref_audio needs ref_text (the transcript of the reference clip)")
                decode_ref_audio(body.ref_audio)
        except (ValidationError, ValueError) as exc:
            return JSONResponse({"error": {"message": str(exc), "type": "BadRequestError", "code": 400}},
                                status_code=400)
        self.requests.append(body)
        audio = tone(self.seconds_per_phrase, hz=220.0 + 20 * len(self.requests))
        self.sent.append(audio)
        pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()

        async def chunks():  # noqa: ANN202
            for start in range(0, len(pcm), 2 * self.chunk):
                yield pcm[start:start + 2 * self.chunk]
                await asyncio.sleep(0)

        return StreamingResponse(chunks(), media_type="audio/pcm")
