"""Run the real agent app on a real socket inside the test process (so tests can look at its engine and
metrics), and talk to it over WebSocket the way any Realtime client does."""

from __future__ import annotations

import asyncio
import base64
import json
import time

import numpy as np
import websockets
from speech import speech_with_silence

from higgs_agent.agent.responders.echo import EchoResponder
from higgs_agent.agent.services import AgentServices
from higgs_agent.audio import float_to_pcm16, pcm16_to_float
from higgs_agent.model.loader import HiggsBundle
from higgs_agent.model.sampling import SamplingSettings
from higgs_agent.server import WS_MAX_BYTES, serve_in_background
from higgs_agent.streaming.engine import StreamingEngine

# The agent app in a thread of the test process (tests look at its engine and metrics).
running_server = serve_in_background


def echo_services(bundle: HiggsBundle, transcriber, max_frames: int = 60) -> AgentServices:  # noqa: ANN001
    """A server's services that say back what they hear (greedy, `max_frames` per phrase)."""
    return AgentServices(engine=StreamingEngine(bundle), transcriber=transcriber,
                         responders={"echo": EchoResponder()}, default_responder="echo",
                         sampling=SamplingSettings(greedy=True, max_frames=max_frames))


def ws_url(base: str, query: str = "") -> str:
    return base.replace("http://", "ws://") + "/v1/realtime" + (f"?{query}" if query else "")


class Client:
    """A bare Realtime client: JSON events in and out, with helpers to wait for one type."""

    def __init__(self, socket: websockets.ClientConnection) -> None:
        self.socket = socket
        self.events: list[dict] = []

    @classmethod
    async def connect(cls, base: str, extensions: bool = True, **kwargs) -> Client:  # noqa: ANN003
        """Connected, and (`extensions`) opted into our higgs.* events, as our own clients do."""
        client = cls(await websockets.connect(ws_url(base), max_size=WS_MAX_BYTES, **kwargs))
        created = await client.next()
        assert created["type"] == "session.created", created
        if extensions:
            await client.send({"type": "session.update", "session": {"higgs": {"extension_events": True}}})
            await client.until("session.updated")
        return client

    async def send(self, event: dict) -> None:
        await self.socket.send(json.dumps(event))

    async def next(self, timeout: float = 60) -> dict:
        event = json.loads(await asyncio.wait_for(self.socket.recv(), timeout))
        self.events.append(event)
        return event

    async def until(self, kind: str, timeout: float = 120) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            event = await self.next(max(0.1, deadline - time.monotonic()))
            if event["type"] == kind:
                return event

    async def send_audio(self, audio: np.ndarray, chunk_ms: int = 100, rate: int = 24000) -> None:
        step = rate * chunk_ms // 1000
        for start in range(0, len(audio), step):
            pcm = float_to_pcm16(audio[start:start + step])
            await self.send({"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm).decode()})

    def types(self) -> list[str]:
        return [event["type"] for event in self.events]

    def reply_audio(self, response_id: str | None = None) -> np.ndarray:
        chunks = [pcm16_to_float(base64.b64decode(e["delta"])) for e in self.events
                  if e["type"] == "response.output_audio.delta" and response_id in (None, e["response_id"])]
        return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)

    async def close(self) -> None:
        await self.socket.close()


async def spoken_turn(client: Client, text: str) -> dict:
    """`text` spoken (espeak-ng) with silence around it, so the server's VAD ends the turn; its response.done."""
    audio, _ = speech_with_silence(text, lead_ms=300, tail_ms=1200, rate=24_000)
    await client.send_audio(audio)
    return await client.until("response.done", timeout=180)


async def typed_turn(client: Client, text: str) -> dict:
    """A typed user message and response.create; its response.done."""
    await client.send({"type": "conversation.item.create", "item": {
        "type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}})
    await client.send({"type": "response.create"})
    return await client.until("response.done", timeout=180)
