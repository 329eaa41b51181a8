"""`higgs-agent speak`: text (+ optional voice to clone) -> 24 kHz speech, written as it is generated."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from contextlib import ExitStack

import numpy as np
import soundfile as sf
from tqdm import tqdm

from higgs_agent import FRAME_RATE, SAMPLE_RATE
from higgs_agent.audio import float_to_pcm16, read_wav
from higgs_agent.model import HiggsBundle
from higgs_agent.model.prompts import SpeechPrompt, VoiceReference, build_inputs, encode_voice
from higgs_agent.model.reference import synthesize_reference
from higgs_agent.model.sampling import SamplingSettings
from higgs_agent.streaming.engine import StreamingEngine
from higgs_agent.voices.library import VoiceLibrary, VoiceNotFound

_CHARS_PER_SECOND = 15  # rough speaking rate, only to size the progress bar


class PcmSink:
    """Writes float chunks to a WAV file, or as raw PCM16 to stdout (`-`) for piping into a player."""

    def __init__(self, target: str, stack: ExitStack) -> None:
        self.raw = target == "-"
        self.file = None if self.raw else stack.enter_context(
            sf.SoundFile(target, "w", samplerate=SAMPLE_RATE, channels=1, subtype="PCM_16"))
        self.samples = 0

    def write(self, chunk: np.ndarray) -> None:
        self.samples += len(chunk)
        if self.raw:
            sys.stdout.buffer.write(float_to_pcm16(chunk))
            sys.stdout.buffer.flush()
        else:
            self.file.write(chunk)


def _references(args: argparse.Namespace, bundle: HiggsBundle) -> list[VoiceReference]:
    """Each --voice: a recording (paired in order with a --voice-text), or a library voice or preset."""
    library = None
    if args.voices_dir or args.voice_presets:
        library = VoiceLibrary(args.voices_dir or tempfile.mkdtemp(prefix="higgs-voices-"),
                               encode=lambda audio, rate: encode_voice(bundle.processor, audio, rate, "").codes,
                               presets=args.voice_presets, codec_id=bundle.codec_source)
    texts = list(args.voice_text)
    references = []
    for voice in args.voice:
        if os.path.isfile(voice):
            if not texts:
                raise SystemExit(f"--voice {voice} needs a --voice-text: the words spoken in the recording")
            references.append(encode_voice(bundle.processor, read_wav(voice), SAMPLE_RATE, texts.pop(0)))
        elif library is not None:
            try:
                references.append(library.reference(args.tenant, voice))
            except VoiceNotFound:
                raise SystemExit(f"--voice {voice}: no such file, and no voice of that id or name in the library") \
                    from None
        else:
            raise SystemExit(f"--voice {voice} is not a file; for a library voice pass --voices-dir or --voice-presets")
    return references


def _prompt(args: argparse.Namespace, bundle: HiggsBundle) -> SpeechPrompt:
    references = _references(args, bundle)
    try:
        if len(references) > 1:
            return SpeechPrompt(args.text, scene=args.scene, speaker_voices=tuple(references))
        return SpeechPrompt(args.text, scene=args.scene, voice=references[0] if references else None)
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None


async def run_speak(args: argparse.Namespace, bundle: HiggsBundle, settings: SamplingSettings) -> int:
    with ExitStack() as stack:
        sink = PcmSink(args.output, stack)
        if args.reference:
            result = synthesize_reference(bundle, build_inputs(bundle.processor, _prompt(args, bundle)), settings)
            sink.write(result.audio)
            print(f"reference generate(): {result.frames} frames, {sink.samples / SAMPLE_RATE:.2f} s",
                  file=sys.stderr)
            return 0
        engine = StreamingEngine(bundle, slots=1)
        try:
            expected_s = min(settings.max_frames / FRAME_RATE, max(1.0, len(args.text) / _CHARS_PER_SECOND))
            bar = tqdm(total=round(expected_s, 1), unit="s audio", file=sys.stderr, leave=False,
                       disable=args.output == "-" or expected_s < 10)
            async with engine.stream(_prompt(args, bundle), settings) as speech:
                async for chunk in speech.pcm():
                    sink.write(chunk)
                    bar.update(round(len(chunk) / SAMPLE_RATE, 2))
            bar.close()
        finally:
            engine.close()
    stats = speech.stats
    print(f"{sink.samples / SAMPLE_RATE:.2f} s of audio ({stats.frames} frames, {stats.stop_reason}); "
          f"TTFA {stats.ttfa_ms:.0f} ms; real-time factor {stats.real_time_factor:.3f}", file=sys.stderr)
    return 0
