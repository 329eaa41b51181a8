"""Two ways to use the higgs-agent Realtime client library.

    python clients/python/example.py in.wav                 # one spoken turn, reply saved to reply.wav
    python clients/python/example.py --text "Tell me a joke"  # a text turn, events printed as they arrive

Start a server first (`higgs-agent serve ...`); pass --url and --api-key (or set HIGGS_API_KEY) as needed.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os

from higgs_agent.audio import pcm16_to_float, read_wav, write_wav
from higgs_agent.client import DEFAULT_URL, RealtimeClient, talk


async def spoken_turn(url: str, api_key: str | None, wav: str) -> None:
    """High level: stream a recording at real-time pace; the server's VAD ends the turn."""
    result = await talk(url, read_wav(wav), 24_000, api_key=api_key)
    print("you said:      ", result.user_transcript)
    print("agent replied: ", result.assistant_transcript)
    print("latency (ms):  ", result.latency_ms, "| client-side first audio:", result.first_audio_after_ms)
    write_wav("reply.wav", result.audio, result.sample_rate)


async def text_turn(url: str, api_key: str | None, text: str) -> None:
    """Low level: the raw GA events. Text in, spoken reply out."""
    async with await RealtimeClient.connect(url, api_key=api_key) as client:
        await client.wait_for("session.created")
        await client.update_session(instructions="You are a helpful voice assistant. Answer briefly.")
        await client.send_text(text)
        await client.create_response()
        audio = bytearray()
        async for event in client.events():
            if event["type"] == "response.output_audio.delta":
                audio.extend(base64.b64decode(event["delta"]))
            elif event["type"] == "response.output_audio_transcript.delta":
                print(event["delta"], end="", flush=True)
            elif event["type"] == "error":
                raise SystemExit(f"server error: {event['error'].get('message')}")
            elif event["type"] == "response.done":
                print(f"\n[{event['response']['status']}; {len(audio) / 48_000:.2f} s of audio]")
                break
        write_wav("reply.wav", pcm16_to_float(bytes(audio)), 24_000)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("wav", nargs="?")
    parser.add_argument("--text")
    parser.add_argument("--url", default=DEFAULT_URL)
    parser.add_argument("--api-key", default=os.environ.get("HIGGS_API_KEY"))
    args = parser.parse_args()
    if args.text:
        asyncio.run(text_turn(args.url, args.api_key, args.text))
    elif args.wav:
        asyncio.run(spoken_turn(args.url, args.api_key, args.wav))
    else:
        parser.error("give a WAV file or --text")


if __name__ == "__main__":
    main()
