"""A scripted fake Realtime server for the client's unit tests (the real server has its own end-to-end tests).

It checks the API key, answers session.update, collects appended audio and ends a turn on commit (manual) or
when its toy VAD hears `silence_ms` of near-silence after speech; then it sends the GA event sequence of one
reply: a known 440 Hz tone in `delta_samples`-sized audio deltas, a transcript in word deltas, and a
`higgs.turn.latency` event.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

RATE = 24_000
BLOCK = 480  # 20 ms VAD blocks


def tone(seconds: float = 0.5, hz: float = 440.0, amplitude: float = 0.3) -> np.ndarray:
    t = np.arange(round(seconds * RATE)) / RATE
    return np.round(amplitude * 32767 * np.sin(2 * math.pi * hz * t)).astype(np.int16)


class FakeRealtimeServer:
    def __init__(self, *, api_key: str | None = None, reject_status: int = 401, reply: np.ndarray | None = None,
                 delta_samples: int = 2000,
                 transcript: str = "what is the weather like", reply_text: str = "It is sunny and warm today.",
                 silence_ms: int = 500, threshold: float = 0.02, error_on_commit: bool = False,
                 status: str = "completed", latency_after_done: bool = False) -> None:
        self.api_key = api_key
        self.reject_status = reject_status  # our server refuses a WebSocket's key with 403, OpenAI's with 401
        self.reply = tone() if reply is None else reply
        self.delta_samples = delta_samples
        self.transcript = transcript
        self.reply_text = reply_text
        self.silence_ms = silence_ms
        self.threshold = threshold
        self.error_on_commit = error_on_commit
        self.status = status
        self.latency_after_done = latency_after_done
        self.received: list[dict[str, Any]] = []  # every client event, in order
        self.audio = bytearray()  # every appended byte, in order
        self.auth_headers: list[str | None] = []
        self._server: Server | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = next(iter(self._server.sockets)).getsockname()[:2]
        return f"ws://{host}:{port}/v1/realtime"

    async def __aenter__(self) -> FakeRealtimeServer:
        self._server = await serve(self._handle, "127.0.0.1", 0, process_request=self._check)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    @contextmanager
    def in_thread(self) -> Iterator[FakeRealtimeServer]:
        """Serve from a thread of its own, for code under test that runs its own event loop (asyncio.run)."""
        loop = asyncio.new_event_loop()
        started, stop = threading.Event(), asyncio.Event()

        async def main() -> None:
            async with self:
                started.set()
                await stop.wait()

        thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
        thread.start()
        started.wait(10)
        try:
            yield self
        finally:
            loop.call_soon_threadsafe(stop.set)
            thread.join(10)
            loop.close()

    def _check(self, connection: ServerConnection, request: Request) -> Response | None:
        parts = urlsplit(request.path)
        if parts.path != "/v1/realtime":
            return connection.respond(HTTPStatus.NOT_FOUND, "not found\n")
        header = request.headers.get("Authorization")
        self.auth_headers.append(header)
        if self.api_key is not None:
            query_key = parse_qs(parts.query).get("api_key", [None])[0]
            if header != f"Bearer {self.api_key}" and query_key != self.api_key:
                return connection.respond(HTTPStatus(self.reject_status), "invalid or missing API key\n")
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        try:
            await self._serve(ws)
        except ConnectionClosed:  # the client went away mid-reply: fine
            pass

    async def _serve(self, ws: ServerConnection) -> None:
        session: dict[str, Any] = {"type": "realtime", "audio": {"input": {
            "format": {"type": "audio/pcm", "rate": RATE},
            "turn_detection": {"type": "server_vad", "silence_duration_ms": self.silence_ms}}}}
        turn = _VadState()

        async def emit(kind: str, **fields: Any) -> None:
            await ws.send(json.dumps({"type": kind, "event_id": f"event_{uuid.uuid4().hex[:12]}", **fields}))

        await emit("session.created", session=session)
        async for message in ws:
            event = json.loads(message)
            self.received.append(event)
            kind = event.get("type")
            if kind == "session.update":
                update = event.get("session") or {}
                input_update = (update.get("audio") or {}).get("input") or {}
                if "turn_detection" in input_update:
                    session["audio"]["input"]["turn_detection"] = input_update["turn_detection"]
                session.update({k: v for k, v in update.items() if k != "audio"})
                await emit("session.updated", session=session)
            elif kind == "input_audio_buffer.append":
                pcm = base64.b64decode(event["audio"])
                self.audio.extend(pcm)
                if session["audio"]["input"]["turn_detection"] is not None:
                    for stop in turn.feed(pcm, self.threshold, self.silence_ms):
                        if stop is None:
                            await emit("input_audio_buffer.speech_started", audio_start_ms=turn.start_ms,
                                       item_id=turn.item_id)
                        else:
                            await emit("input_audio_buffer.speech_stopped", audio_end_ms=stop, item_id=turn.item_id)
                            await self._reply(emit, turn.item_id)
                            turn.next_item()
            elif kind == "input_audio_buffer.commit":
                if self.error_on_commit or not self.audio:
                    await emit("error", error={"type": "invalid_request_error",
                                               "code": "input_audio_buffer_commit_empty", "message": "buffer too small",
                                               "param": None, "event_id": event.get("event_id")})
                    continue
                await self._commit(emit, turn.item_id)
                turn.next_item()
            elif kind == "response.create":
                await self._respond(emit)

    async def _commit(self, emit, item_id: str) -> None:  # noqa: ANN001 - the local emit closure
        item = {"id": item_id, "type": "message", "role": "user", "status": "completed",
                "content": [{"type": "input_audio", "transcript": None}]}
        await emit("input_audio_buffer.committed", item_id=item_id, previous_item_id=None)
        await emit("conversation.item.added", item=item, previous_item_id=None)
        await emit("conversation.item.done", item=item, previous_item_id=None)
        await emit("conversation.item.input_audio_transcription.completed", item_id=item_id, content_index=0,
                   transcript=self.transcript, language="en")

    async def _reply(self, emit, item_id: str) -> None:  # noqa: ANN001
        await self._commit(emit, item_id)
        await self._respond(emit)

    async def _respond(self, emit) -> None:  # noqa: ANN001
        rid, iid = f"resp_{uuid.uuid4().hex[:12]}", f"item_{uuid.uuid4().hex[:12]}"
        where = {"response_id": rid, "item_id": iid, "output_index": 0, "content_index": 0}
        item = {"id": iid, "type": "message", "role": "assistant", "status": "in_progress", "content": []}
        await emit("response.created", response={"id": rid, "object": "realtime.response", "status": "in_progress",
                                                  "output": []})
        await emit("response.output_item.added", response_id=rid, output_index=0, item=item)
        await emit("conversation.item.added", item=item, previous_item_id=None)
        await emit("response.content_part.added", **where, part={"type": "audio", "transcript": ""})
        words = self.reply_text.split(" ")
        chunks = [self.reply[i:i + self.delta_samples] for i in range(0, len(self.reply), self.delta_samples)]
        for n in range(max(len(words), len(chunks))):
            if n < len(words):
                space = "" if n == len(words) - 1 else " "
                await emit("response.output_audio_transcript.delta", **where, delta=words[n] + space)
            if n < len(chunks):
                await emit("response.output_audio.delta", **where,
                           delta=base64.b64encode(chunks[n].astype("<i2").tobytes()).decode("ascii"))
            await asyncio.sleep(0)
        await emit("response.output_audio.done", **where)
        await emit("response.output_audio_transcript.done", **where, transcript=self.reply_text)
        latency = {"response_id": rid, "item_id": iid,
                   "latency_ms": {"transcript": 120.5, "first_text": 310.0, "first_audio_frame": 450.25,
                                  "first_audio_sent": None}}
        if not self.latency_after_done:
            await emit("higgs.turn.latency", **latency)
        done_item = {**item, "status": "completed",
                     "content": [{"type": "output_audio", "transcript": self.reply_text}]}
        await emit("response.content_part.done", **where, part={"type": "audio", "transcript": self.reply_text})
        await emit("response.output_item.done", response_id=rid, output_index=0, item=done_item)
        await emit("conversation.item.done", item=done_item, previous_item_id=None)
        await emit("response.done", response={"id": rid, "object": "realtime.response", "status": self.status,
                                              "output": [done_item]})
        if self.latency_after_done:
            await emit("higgs.turn.latency", **latency)


class _VadState:
    """Toy VAD: speech is a 20 ms block louder than `threshold`; the turn ends after `silence_ms` of quiet."""

    def __init__(self) -> None:
        self.samples = 0  # samples seen this session
        self.pending = np.zeros(0, dtype=np.int16)
        self.speaking = False
        self.start_ms = 0
        self.last_speech_end = 0  # samples
        self.next_item()

    def next_item(self) -> None:
        self.item_id = f"item_{uuid.uuid4().hex[:12]}"

    def feed(self, pcm: bytes, threshold: float, silence_ms: int) -> list[int | None]:
        """Returns None for speech started, audio_end_ms for speech stopped, in order."""
        out: list[int | None] = []
        self.pending = np.concatenate([self.pending, np.frombuffer(pcm, dtype="<i2")])
        while len(self.pending) >= BLOCK:
            block, self.pending = self.pending[:BLOCK], self.pending[BLOCK:]
            loud = float(np.sqrt(np.mean((block / 32768.0) ** 2))) > threshold
            self.samples += BLOCK
            if loud:
                if not self.speaking:
                    self.speaking = True
                    self.start_ms = (self.samples - BLOCK) * 1000 // RATE
                    out.append(None)
                self.last_speech_end = self.samples
            elif self.speaking and (self.samples - self.last_speech_end) * 1000 >= silence_ms * RATE:
                self.speaking = False
                out.append(self.last_speech_end * 1000 // RATE)
        return out
