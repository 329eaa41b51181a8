"""Build Higgs Audio v2 model inputs: system text, scene, voice references, text to speak.

The layout comes from the processor's chat template (rendered as text); voice references go in as codec
codes on the audio path. References are encoded once (`encode_voice`) and reused as codes, so a voice
cloned at session start costs no codec work per turn; `build_inputs` gives exactly what
`HiggsAudioV2Processor(text, audio)` gives for the same audio (tests hold it to that, one reference or several).

Multi-speaker cloning follows boson-ai/higgs-audio's `examples/generation.py`: each speaker's reference is a
user turn "[SPEAKERn] transcript" followed by an assistant turn holding that speaker's audio, in speaker order,
then the user turn with the tagged text to speak; all in one generation.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from transformers import HiggsAudioV2Processor

from higgs_agent import FRAME_RATE, SAMPLE_RATE
from higgs_agent.audio import resample

DEFAULT_SYSTEM = "Generate audio following instruction."
MAX_REFERENCE_FRAMES = 10 * FRAME_RATE  # longer references add prompt cost without a better voice
_SPEAKER_TAG = re.compile(r"\[SPEAKER(\d+)\]")


@dataclass(frozen=True)
class AudioClip:
    """Mono float32 samples at their own rate: a voice as sound, for an engine that encodes it itself."""

    samples: np.ndarray
    rate: int

    @property
    def seconds(self) -> float:
        return len(self.samples) / self.rate


@dataclass(frozen=True)
class VoiceReference:
    """A voice to clone: its plain codec codes (num_codebooks x frames, no BOS/EOS, no delay) and the
    words spoken in it. A remote engine encodes its references itself: those carry the sound (`audio`) and no
    codes; the local engine is only ever given codes (`StreamingEngine.voice` encodes them)."""

    codes: torch.Tensor | None
    transcript: str
    audio: AudioClip | None = None

    def __post_init__(self) -> None:
        if self.codes is None and self.audio is None:
            raise ValueError("a voice reference needs its codes or its audio")

    @property
    def frames(self) -> int:
        if self.codes is None:
            assert self.audio is not None
            return int(self.audio.seconds * FRAME_RATE)
        return int(self.codes.shape[-1])

    def clipped(self, frames: int = MAX_REFERENCE_FRAMES) -> VoiceReference:
        """Its last `frames` of codes, or as many seconds of its sound; itself when it is no longer (so a voice
        clipped where it is made stays the same object, and a remote's data URI of it is made once)."""
        if self.frames <= frames:
            return self
        if self.codes is None:
            assert self.audio is not None
            keep = frames * self.audio.rate // FRAME_RATE
            return replace(self, audio=AudioClip(self.audio.samples[-keep:], self.audio.rate))
        return replace(self, codes=self.codes[:, -frames:])


@dataclass(frozen=True)
class SpeechPrompt:
    """What to say and how. `voice` clones one voice; `speaker_voices` clones one voice per [SPEAKERn] tag
    (index n) for multi-speaker text. `speakers` describes [SPEAKERn] voices in words (the scene) instead."""

    text: str
    system: str = DEFAULT_SYSTEM
    scene: str | None = None
    voice: VoiceReference | None = None
    speakers: tuple[str, ...] = field(default_factory=tuple)
    speaker_voices: tuple[VoiceReference, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if not self.text.strip():
            raise ValueError("nothing to say: the text is empty")
        if self.voice is not None and self.speaker_voices:
            raise ValueError("give either one voice or one voice per speaker, not both")
        used = {int(n) for n in _SPEAKER_TAG.findall(self.text)}
        if self.speakers and used and max(used) >= len(self.speakers):
            raise ValueError(
                f"the text uses [SPEAKER{max(used)}] but only {len(self.speakers)} speakers are described"
            )
        if self.speaker_voices and used and max(used) >= len(self.speaker_voices):
            raise ValueError(f"the text uses [SPEAKER{max(used)}] but only {len(self.speaker_voices)} speaker "
                             "voices are given")

    @property
    def references(self) -> tuple[VoiceReference, ...]:
        """Every voice reference, in prompt order."""
        return (self.voice,) if self.voice is not None else self.speaker_voices


@dataclass
class ModelInputs:
    """Tensors for `HiggsAudioV2ForConditionalGeneration` (batch of one)."""

    input_ids: torch.Tensor  # (1, L)
    attention_mask: torch.Tensor  # (1, L)
    audio_input_ids: torch.Tensor | None = None  # (1, F, num_codebooks), delay pattern applied
    audio_input_ids_mask: torch.Tensor | None = None  # (1, F)

    def as_kwargs(self, device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
        kwargs = {"input_ids": self.input_ids, "attention_mask": self.attention_mask}
        if self.audio_input_ids is not None:
            kwargs["audio_input_ids"] = self.audio_input_ids
            kwargs["audio_input_ids_mask"] = self.audio_input_ids_mask
        return {k: v.to(device) for k, v in kwargs.items()} if device is not None else kwargs

    @property
    def prompt_frames(self) -> int:
        return 0 if self.audio_input_ids is None else int(self.audio_input_ids.shape[1])


def scene_text(prompt: SpeechPrompt) -> str | None:
    lines = [prompt.scene.strip()] if prompt.scene else []
    if prompt.speakers:
        lines.append("\n".join(f"SPEAKER{i}: {desc}" for i, desc in enumerate(prompt.speakers)))
    return "\n\n".join(lines) if lines else None


def conversation(prompt: SpeechPrompt) -> list[dict]:
    """The chat-template messages for a prompt. A voice reference is a user turn with its transcript
    followed by an assistant turn holding its audio; with several speakers each transcript is tagged
    "[SPEAKERn] " (upstream tags only when there is more than one); then the user turn with the text to speak."""
    messages: list[dict] = [{"role": "system", "content": [{"type": "text", "text": prompt.system}]}]
    scene = scene_text(prompt)
    if scene:
        messages.append({"role": "scene", "content": [{"type": "text", "text": scene}]})
    references = prompt.references
    for index, reference in enumerate(references):
        words = f"[SPEAKER{index}] {reference.transcript}" if len(references) > 1 else reference.transcript
        messages.append({"role": "user", "content": [{"type": "text", "text": words}]})
        messages.append({"role": "assistant", "content": [{"type": "audio"}]})
    messages.append({"role": "user", "content": [{"type": "text", "text": prompt.text}]})
    return messages


def prompt_text(processor: HiggsAudioV2Processor, prompt: SpeechPrompt) -> str:
    """The prompt as template text, one <|AUDIO_OUT|> placeholder per voice reference."""
    return processor.apply_chat_template(conversation(prompt), tokenize=False, add_generation_prompt=True)


def delayed_audio_ids(processor: HiggsAudioV2Processor, codes: torch.Tensor) -> torch.Tensor:
    """Plain codes (num_codebooks, T) -> prompt rows (T + num_codebooks + 1, num_codebooks): stream BOS and
    EOS added, then the delay pattern, exactly as the processor does for audio it encodes itself."""
    codes = codes.to(torch.long)[None]
    bos = codes.new_full((1, codes.shape[1], 1), processor.audio_stream_bos_id)
    eos = codes.new_full((1, codes.shape[1], 1), processor.audio_stream_eos_id)
    return processor.build_delay_pattern(torch.cat([bos, codes, eos], dim=2))[0].transpose(0, 1)


def build_inputs(processor: HiggsAudioV2Processor, prompt: SpeechPrompt) -> ModelInputs:
    text = prompt_text(processor, prompt)
    if any(reference.codes is None for reference in prompt.references):
        raise ValueError("a voice given as sound must be encoded before the local engine speaks in it")
    blocks = [delayed_audio_ids(processor, reference.codes) for reference in prompt.references]
    # Placeholders are in reference order, as the processor expands them; split first, since an expansion
    # itself holds the placeholder token.
    pieces = text.split(processor.audio_token)
    expansions = [processor.get_audio_tokens(rows.shape[0]) for rows in blocks]
    text = pieces[0] + "".join(expansion + piece for expansion, piece in zip(expansions, pieces[1:], strict=True))
    encoded = processor.tokenizer(text, add_special_tokens=False, return_tensors="pt")
    inputs = ModelInputs(encoded["input_ids"], encoded["attention_mask"])
    if blocks:
        rows = torch.cat(blocks, dim=0)
        inputs.audio_input_ids = rows[None]
        inputs.audio_input_ids_mask = torch.ones(1, rows.shape[0], dtype=torch.bool)
    return inputs


@torch.no_grad()
def encode_voice(
    processor: HiggsAudioV2Processor, audio: np.ndarray, sample_rate: int, transcript: str
) -> VoiceReference:
    """Encode a reference recording (any rate, mono float) into codec codes, exactly as the processor does:
    unpadded (`padding=False`, the processor's audio default), so a clip whose length is not a multiple of
    the 960-sample hop gets the processor's codes, not those of a zero-padded clip."""
    wave = resample(np.asarray(audio, dtype=np.float32).reshape(-1), sample_rate, SAMPLE_RATE)
    features = processor.feature_extractor(wave, sampling_rate=SAMPLE_RATE, padding=False, return_tensors="pt")
    codec = processor.audio_tokenizer
    codes = codec.encode(features["input_values"].to(codec.device)).audio_codes
    return VoiceReference(codes=codes[0].cpu(), transcript=transcript)
