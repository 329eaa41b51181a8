"""`higgs-agent talk`: speak one turn to a Realtime server (a WAV, or the microphone) and save the reply."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import threading
from collections.abc import AsyncIterator
from typing import Any

import numpy as np

from higgs_agent import SAMPLE_RATE
from higgs_agent.audio import read_wav, write_wav
from higgs_agent.client import (
    RealtimeConnectionError,
    RealtimeError,
    TalkResult,
    talk,
)

_LATENCY_KEYS = ("transcript", "first_text", "first_audio_frame", "first_audio_sent")


class MicrophoneUnavailable(RuntimeError):
    pass


def run_talk(args: argparse.Namespace) -> int:
    """0: a completed reply; 1: a server error, a failed/cancelled reply or no reply in time;
    2: usage or connection error."""
    if args.wav and not os.path.isfile(args.wav):
        print(f"error: {args.wav} does not exist (or is not a file); pass --wav with an audio file", file=sys.stderr)
        return 2
    try:
        if args.wav:
            audio: Any = read_wav(args.wav)
        else:
            audio = microphone()
            print("listening... (speak, then pause; Enter ends the recording)", file=sys.stderr)
    except MicrophoneUnavailable as exc:
        print(f"error: no --wav given and no microphone: {exc}; pass --wav FILE", file=sys.stderr)
        return 2
    except (OSError, RuntimeError) as exc:  # unreadable or missing WAV (soundfile raises RuntimeError subclasses)
        print(f"error: cannot read {args.wav}: {exc}", file=sys.stderr)
        return 2

    def show(event: dict[str, Any]) -> None:
        print(f"  < {event.get('type')}", file=sys.stderr)

    try:
        result = asyncio.run(talk(args.url, audio, SAMPLE_RATE, api_key=args.api_key, realtime_pace=not args.fast,
                                  manual_commit=args.manual, timeout_s=args.timeout,
                                  session={"instructions": args.instructions} if args.instructions else None,
                                  on_event=show if args.events else None,
                                  extension_events=not args.no_extensions))
    except RealtimeConnectionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RealtimeError as exc:
        print(f"error: the server said: {exc}", file=sys.stderr)
        return 1
    except TimeoutError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1

    print(f"user: {result.user_transcript}")
    print(f"assistant: {result.assistant_transcript}")
    print(f"latency: {format_latency(result)}")
    if args.output:
        write_wav(args.output, result.audio, result.sample_rate)
        print(f"wrote {args.output} ({result.duration_s:.2f} s at {result.sample_rate} Hz)", file=sys.stderr)
    if result.status == "completed" and not len(result.audio):
        print("warning: the reply had no audio", file=sys.stderr)
    if result.status != "completed":
        print(f"error: the response ended with status {result.status or 'unknown'}: "
              f"{result.response.get('status_details') or ''}".rstrip(": "), file=sys.stderr)
        return 1
    return 0


def format_latency(result: TalkResult) -> str:
    """One line: the server's figures (from the end of the user's speech) and the client's own."""
    def ms(value: Any) -> str:
        return "-" if value is None else f"{float(value):.0f} ms"

    keys = list(_LATENCY_KEYS) + [k for k in result.latency_ms if k not in _LATENCY_KEYS]
    server = ", ".join(f"{k} {ms(result.latency_ms.get(k))}" for k in keys if k in result.latency_ms)
    client = f"first audio {ms(result.first_audio_after_ms)} after the end of sent speech (client)"
    return f"{server} (server); {client}" if server else client


def microphone(max_s: float = 30.0, block_ms: int = 20) -> AsyncIterator[np.ndarray]:
    """Live 24 kHz mono float32 blocks from the default input device, until Enter or `max_s` (the server's
    VAD usually ends the turn first). Raises MicrophoneUnavailable when there is no sounddevice or device."""
    try:
        import sounddevice as sd
    except ImportError as exc:  # also OSError when PortAudio itself is missing
        raise MicrophoneUnavailable("the 'sounddevice' package is not installed (pip install sounddevice)") from exc
    except OSError as exc:
        raise MicrophoneUnavailable(f"sounddevice cannot load PortAudio ({exc})") from exc
    try:
        sd.check_input_settings(samplerate=SAMPLE_RATE, channels=1, dtype="float32")
    except Exception as exc:  # noqa: BLE001 - PortAudioError or ValueError: no usable input device
        raise MicrophoneUnavailable(f"no usable input device ({exc})") from exc
    return _record(sd, max_s, block_ms)


async def _record(sd: Any, max_s: float, block_ms: int) -> AsyncIterator[np.ndarray]:
    loop = asyncio.get_running_loop()
    blocks: asyncio.Queue[np.ndarray | None] = asyncio.Queue()
    enter = threading.Event()

    def on_block(data: np.ndarray, frames: int, when: Any, status: Any) -> None:
        loop.call_soon_threadsafe(blocks.put_nowait, data[:, 0].copy())

    def wait_enter() -> None:
        sys.stdin.readline()
        enter.set()
        loop.call_soon_threadsafe(blocks.put_nowait, None)

    threading.Thread(target=wait_enter, daemon=True).start()
    with sd.InputStream(samplerate=SAMPLE_RATE, channels=1, dtype="float32",
                        blocksize=SAMPLE_RATE * block_ms // 1000, callback=on_block):
        recorded = 0
        while recorded < max_s * SAMPLE_RATE and not enter.is_set():
            block = await blocks.get()
            if block is None:
                break
            recorded += len(block)
            yield block
