"""Run the real agent app on a real socket inside the test process (so tests can look at its engine and
metrics), and talk to it over WebSocket the way any Realtime client does."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import uvicorn
import websockets

from higgs_agent.agent.services import AgentServices
from higgs_agent.audio import float_to_pcm16, pcm16_to_float
from higgs_agent.server import WS_MAX_BYTES
from higgs_agent.transport.app import create_agent_app


@contextmanager
def running_server(services: AgentServices, api_key: str | None = None) -> Iterator[str]:
    """Serve the agent app on 127.0.0.1 (a free port) in a thread; yield its base URL (http://...)."""
    config = uvicorn.Config(create_agent_app(services, api_key=api_key), host="127.0.0.1", port=0,
                            log_level="warning", ws_max_size=WS_MAX_BYTES, lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not (server.started and server.servers):
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def ws_url(base: str, query: str = "") -> str:
    return base.replace("http://", "ws://") + "/v1/realtime" + (f"?{query}" if query else "")


class Client:
    """A bare Realtime client: JSON events in and out, with helpers to wait for one type."""

    def __init__(self, socket: websockets.ClientConnection) -> None:
        self.socket = socket
        self.events: list[dict] = []

    @classmethod
    async def connect(cls, base: str, **kwargs) -> Client:  # noqa: ANN003
        client = cls(await websockets.connect(ws_url(base), max_size=WS_MAX_BYTES, **kwargs))
        created = await client.next()
        assert created["type"] == "session.created", created
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
