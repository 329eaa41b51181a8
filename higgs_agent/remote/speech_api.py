"""One phrase as a request to an OpenAI-compatible streaming speech endpoint (`POST /v1/audio/speech`), for the
two kinds of remote engine, and its streamed PCM back as float32 chunks.

Both kinds take OpenAI's fields (`model`, `input`, `instructions`, `response_format`) and vLLM-Omni's voice-clone
and streaming fields, which our own `serve` accepts too (transport/speech_http.py): `ref_audio` (a data URI of a
WAV clip), `ref_text` (the words spoken in it), `stream: true` with `response_format: "pcm"` (raw 24 kHz 16-bit
little-endian mono as it is decoded), `max_new_tokens` (the phrase's budget: audio frames for Higgs). Each kind
then gets only what it understands: our `serve` also takes `seed`; vLLM-Omni's request model
(vllm_omni/entrypoints/openai/protocol/audio.py, OpenAICreateSpeechRequest) has no `seed` for every model, so
it is not sent. The scene/emotion description goes in `instructions` for both ("Instructions for voice
style/emotion" in vLLM-Omni; our scene). Both take one `ref_audio`: multi-speaker text is spoken remotely in
the first speaker's voice (a limit of the wire format, said in the README).
"""

from __future__ import annotations

import base64
import io
from typing import Any, Literal

import numpy as np
import soundfile

from higgs_agent.model.prompts import SpeechPrompt, VoiceReference
from higgs_agent.model.sampling import SamplingSettings

EngineKind = Literal["higgs", "vllm-omni"]
KINDS: tuple[str, ...] = ("higgs", "vllm-omni")
PCM_RATE = 24_000  # both kinds stream Higgs Audio v2's codec rate


def wav_data_uri(voice: VoiceReference) -> str:
    """A voice's sound as `data:audio/wav;base64,...` (16-bit PCM at the clip's own rate: the engine resamples)."""
    if voice.audio is None:
        raise ValueError("a remote engine needs a voice's sound, not its codes (encode nothing for a remote)")
    buffer = io.BytesIO()
    soundfile.write(buffer, np.clip(voice.audio.samples, -1.0, 1.0), voice.audio.rate, format="WAV",
                    subtype="PCM_16")
    return "data:audio/wav;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def speech_body(prompt: SpeechPrompt, settings: SamplingSettings, kind: EngineKind,
                model: str | None) -> dict[str, Any]:
    """The JSON body that asks `kind` to speak `prompt`, streamed as raw PCM."""
    body: dict[str, Any] = {"input": prompt.text, "response_format": "pcm", "stream": True,
                            "max_new_tokens": settings.max_frames}
    if model:
        body["model"] = model
    if prompt.scene:
        body["instructions"] = prompt.scene
    voices = prompt.speaker_voices or ((prompt.voice,) if prompt.voice is not None else ())
    if voices:
        body["ref_audio"] = wav_data_uri(voices[0])
        body["ref_text"] = voices[0].transcript
    if kind == "higgs" and settings.seed is not None:
        body["seed"] = settings.seed
    return body


class PcmChunks:
    """16-bit little-endian PCM bytes as they arrive (any split) -> float32 chunks of whole samples."""

    def __init__(self) -> None:
        self._odd = b""  # a sample's first byte, when a chunk ended inside it

    def feed(self, data: bytes) -> np.ndarray | None:
        data = self._odd + data
        whole = len(data) - len(data) % 2
        self._odd = data[whole:]
        if whole == 0:
            return None
        return np.frombuffer(data[:whole], dtype="<i2").astype(np.float32) / 32768.0
