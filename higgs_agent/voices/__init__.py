"""Voices: a library of cloned voices per tenant, upload checks, the caller's own voice, and their HTTP API.

- `library.VoiceLibrary`: voices on disk, encoded once; read-only presets; `reference()` gives the codes
  for a `SpeechPrompt`.
- `clip_check`: decode an upload and refuse what would clone badly, each with its own error code.
- `http.voice_routes`: `/v1/voices` (upload, list, get, delete).
- `caller_voice`: the caller's speech at its wire rate, gathered across turns for "reply in my voice".
"""

from higgs_agent.voices.caller_voice import CallerClip, CallerVoice, WireAudioTape
from higgs_agent.voices.clip_check import (
    CheckedClip,
    ClipError,
    ClipLimits,
    check_clip,
    check_clip_bytes,
)
from higgs_agent.voices.library import (
    PresetReadOnly,
    Voice,
    VoiceLibrary,
    VoiceLibraryError,
    VoiceLimitReached,
    VoiceNameTaken,
    VoiceNotFound,
)

__all__ = ["CallerClip", "CallerVoice", "CheckedClip", "ClipError", "ClipLimits", "PresetReadOnly", "Voice",
           "VoiceLibrary", "VoiceLibraryError", "VoiceLimitReached", "VoiceNameTaken", "VoiceNotFound",
           "WireAudioTape", "check_clip", "check_clip_bytes"]
