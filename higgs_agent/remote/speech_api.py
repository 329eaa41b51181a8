"""One phrase as a request to an OpenAI-compatible streaming speech endpoint (`POST /v1/audio/speech`), for the
two kinds of remote engine, and its streamed PCM back as float32 chunks.

Both kinds take OpenAI's fields (`model`, `input`, `response_format`) and vLLM-Omni's streaming and voice-clone
fields, which our own `serve` accepts too (transport/speech_http.py): `stream: true` with `stream_format: "audio"`
and `response_format: "pcm"` (raw 24 kHz 16-bit little-endian mono as it is decoded; `stream_format` is sent
because newer vLLM-Omni releases answer `stream: true` alone with server-sent events), `ref_audio` (a data URI
of a WAV clip) with `ref_text` (the words spoken in it), `max_new_tokens` (the phrase's budget: audio frames
for Higgs). Each kind then gets only what it takes. Our `serve` also gets `instructions` (the scene and the
caller's emotion) and `seed`. vLLM-Omni's Higgs Audio v2 adapter
(vllm_omni/entrypoints/openai/tts_adapters/higgs_audio_v2.py) refuses `instructions`, `ref_audio` without a
non-empty `ref_text`, and [SPEAKERn] tags in `input`: there the scene is not sent, a voice whose words are not
known is not sent (the model's own voice speaks), and speaker tags are taken out. Both take one `ref_audio`, so
multi-speaker text is spoken remotely in its first speaker's voice (a limit of the wire format).
"""

from __future__ import annotations

import base64
import io
import re
from collections import OrderedDict
from typing import Any, Literal

import numpy as np
import soundfile

from higgs_agent.audio import pcm16_to_float
from higgs_agent.model.prompts import SpeechPrompt, VoiceReference
from higgs_agent.model.sampling import SamplingSettings

EngineKind = Literal["higgs", "vllm-omni"]
KINDS: tuple[str, ...] = ("higgs", "vllm-omni")
PCM_RATE = 24_000  # both kinds stream Higgs Audio v2's codec rate


_URIS: OrderedDict[int, tuple[np.ndarray, str]] = OrderedDict()  # a clip's samples (by identity) -> its data URI
_URIS_KEPT = 256  # voices in use at once (sessions' own, callers', the server's): each ~0.2-0.6 MB of base64
_SPEAKER_TAG = re.compile(r"\[SPEAKER\d+\]\s*")


def wav_data_uri(voice: VoiceReference) -> str:
    """A voice's sound as `data:audio/wav;base64,...` (16-bit PCM at the clip's own rate: the engine resamples).
    Made once per clip (~5-10 ms for 10 s of audio) and reused for every phrase spoken in that voice."""
    if voice.audio is None:
        raise ValueError("a remote engine needs a voice's sound, not its codes (encode nothing for a remote)")
    key = id(voice.audio.samples)
    kept = _URIS.get(key)
    if kept is not None and kept[0] is voice.audio.samples:  # the same array (a reused id is another clip)
        _URIS.move_to_end(key)
        return kept[1]
    buffer = io.BytesIO()
    soundfile.write(buffer, np.clip(voice.audio.samples, -1.0, 1.0), voice.audio.rate, format="WAV",
                    subtype="PCM_16")
    uri = "data:audio/wav;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
    _URIS[key] = (voice.audio.samples, uri)
    while len(_URIS) > _URIS_KEPT:
        _URIS.popitem(last=False)
    return uri


def speech_body(prompt: SpeechPrompt, settings: SamplingSettings, kind: EngineKind,
                model: str | None) -> dict[str, Any]:
    """The JSON body that asks `kind` to speak `prompt`, streamed as raw PCM."""
    text = prompt.text if kind == "higgs" else " ".join(_SPEAKER_TAG.sub(" ", prompt.text).split())
    body: dict[str, Any] = {"input": text, "response_format": "pcm", "stream": True, "stream_format": "audio",
                            "max_new_tokens": settings.max_frames}
    if model:
        body["model"] = model
    voices = prompt.speaker_voices or ((prompt.voice,) if prompt.voice is not None else ())
    voice = voices[0] if voices else None
    if voice is not None and (kind == "higgs" or voice.transcript.strip()):
        body["ref_audio"] = wav_data_uri(voice)
        body["ref_text"] = voice.transcript
    if kind == "higgs":
        if prompt.scene:
            body["instructions"] = prompt.scene
        if settings.seed is not None:
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
        return pcm16_to_float(data[:whole])
