"""`higgs-agent speak`: text (+ optional voice to clone) -> 24 kHz speech, written as it is generated."""

from __future__ import annotations

import argparse
import sys
from contextlib import ExitStack

import numpy as np
import soundfile as sf
from tqdm import tqdm

from higgs_agent import FRAME_RATE, SAMPLE_RATE
from higgs_agent.audio import float_to_pcm16, read_wav
from higgs_agent.model import HiggsBundle
from higgs_agent.model.prompts import SpeechPrompt, build_inputs, encode_voice
from higgs_agent.model.reference import synthesize_reference
from higgs_agent.model.sampling import SamplingSettings
from higgs_agent.streaming.engine import StreamingEngine

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


def _prompt(args: argparse.Namespace, bundle: HiggsBundle) -> SpeechPrompt:
    voice = None
    if args.voice:
        if not args.voice_text:
            raise SystemExit("--voice needs --voice-text: the words spoken in the reference recording")
        voice = encode_voice(bundle.processor, read_wav(args.voice), SAMPLE_RATE, args.voice_text)
    return SpeechPrompt(args.text, scene=args.scene, voice=voice)


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
