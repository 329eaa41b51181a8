"""A client for Realtime servers (ours, or any speaking the OpenAI Realtime GA event schema over WebSocket).

Two layers:
- `RealtimeClient`: one WebSocket, JSON events in and out, small helpers for the client events a voice
  agent sends, `events()` / `wait_for()` to read server events.
- `talk()`: one spoken turn: stream a recording (at real-time pace, like a microphone, or as fast as
  possible), let the server's VAD end the turn (or commit by hand), collect transcripts, reply audio and
  latencies, return a `TalkResult`.

Audio on the wire is PCM16 little-endian mono at 24 kHz, base64 in the JSON events.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import numpy as np
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import (
    ConcurrencyError,
    ConnectionClosed,
    InvalidHandshake,
    InvalidStatus,
    InvalidURI,
)

from higgs_agent import SAMPLE_RATE
from higgs_agent.audio import float_to_pcm16, pcm16_to_float, resample
from higgs_agent.audio_formats import StreamResampler
from higgs_agent.defaults import DEFAULT_REALTIME_URL

DEFAULT_URL = DEFAULT_REALTIME_URL
_MAX_MESSAGE = 16 * 1024 * 1024  # a session.updated with long instructions, or a big audio delta
_BYTES_PER_MS = SAMPLE_RATE * 2 // 1000  # PCM16 mono at 24 kHz


class RealtimeConnectionError(ConnectionError):
    """Could not connect (refused, timed out, HTTP 401/403/404...) or the server closed the connection."""


class RealtimeError(Exception):
    """The server answered with an `error` event; `.error` holds its {type, code, message, param, event_id}."""

    def __init__(self, event: dict[str, Any]) -> None:
        self.event = event
        self.error: dict[str, Any] = event.get("error") or {}
        self.code = self.error.get("code")
        self.type = self.error.get("type")
        details = ", ".join(f"{k}={self.error[k]}" for k in ("type", "code", "param", "event_id") if self.error.get(k))
        super().__init__(f"{self.error.get('message') or 'server error'}" + (f" ({details})" if details else ""))


def _event_id() -> str:
    return f"evt_{uuid.uuid4().hex[:24]}"


class RealtimeClient:
    """One Realtime WebSocket session. Read events from one task at a time (`events()` or `wait_for()`);
    sending is safe from any task."""

    def __init__(self, ws: ClientConnection, url: str) -> None:
        self.ws = ws
        self.url = url

    @classmethod
    async def connect(cls, url: str = DEFAULT_URL, api_key: str | None = None, *,
                      open_timeout: float = 10.0) -> RealtimeClient:
        """Open the WebSocket (sending `Authorization: Bearer KEY` when a key is given)."""
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
        if url.startswith(("ws://", "wss://")) and urlsplit(url).path in ("", "/"):
            raise RealtimeConnectionError(f"{url}: the URL has no path; the Realtime endpoint is "
                                          f"{url.rstrip('/')}/v1/realtime")
        try:
            ws = await connect(url, additional_headers=headers, open_timeout=open_timeout, max_size=_MAX_MESSAGE)
        except InvalidStatus as exc:
            status = exc.response.status_code
            body = exc.response.body.decode("utf-8", "replace").strip() if exc.response.body else ""
            said = f": {body[:200]}" if body else ""
            if status in (401, 403):
                why = ("the server refused the API key" if api_key else
                       "the server requires an API key (pass api_key / --api-key, or set HIGGS_API_KEY)")
                raise RealtimeConnectionError(f"{url}: {why} (HTTP {status}{said})") from None
            if status == 404:
                raise RealtimeConnectionError(f"{url}: no Realtime endpoint at this path (HTTP 404); "
                                              f"the server serves ws://HOST:PORT/v1/realtime") from None
            raise RealtimeConnectionError(f"{url}: the server rejected the WebSocket (HTTP {status}{said})") from None
        except InvalidURI as exc:
            raise RealtimeConnectionError(f"{url}: not a WebSocket URL ({exc}); "
                                          f"use ws://HOST:PORT/v1/realtime") from None
        except TimeoutError:
            raise RealtimeConnectionError(f"{url}: timed out after {open_timeout:g} s opening the connection") from None
        except (OSError, InvalidHandshake) as exc:
            if isinstance(exc, ConnectionRefusedError):
                reason = "connection refused"
            else:
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc) or type(exc).__name__
            raise RealtimeConnectionError(f"could not connect to {url}: {reason}; is the server running?") from None
        return cls(ws, url)

    async def __aenter__(self) -> RealtimeClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the WebSocket, reading (and dropping) what the server still sends: a client that stopped
        reading would otherwise not see the server's close frame behind a full receive queue."""
        drain = asyncio.create_task(self._drain())
        try:
            await self.ws.close()
        finally:
            drain.cancel()
            await asyncio.gather(drain, return_exceptions=True)

    async def _drain(self) -> None:
        try:
            while True:
                await self.ws.recv()
        except (ConnectionClosed, ConcurrencyError):  # closed, or another task is reading anyway
            pass

    # --- client -> server ---------------------------------------------------------------------------------

    async def send(self, event: dict[str, Any]) -> str:
        """Send one event (an `event_id` is added when missing); returns its event_id."""
        if "event_id" not in event:
            event = {"event_id": _event_id(), **event}
        try:
            await self.ws.send(json.dumps(event))
        except ConnectionClosed as exc:
            raise RealtimeConnectionError(f"{self.url}: connection closed ({self._closed_why(exc)})") from None
        return event["event_id"]

    async def update_session(self, **session: Any) -> str:
        """`session.update` with `session.type = "realtime"` and the given fields, e.g.
        `instructions="..."`, `audio={"input": {"turn_detection": None}}`."""
        return await self.send({"type": "session.update", "session": {"type": "realtime", **session}})

    async def append_audio(self, pcm16: bytes) -> str:
        """Append PCM16 LE mono 24 kHz audio to the input buffer."""
        return await self.send({"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm16).decode("ascii")})

    async def commit(self) -> str:
        return await self.send({"type": "input_audio_buffer.commit"})

    async def clear(self) -> str:
        return await self.send({"type": "input_audio_buffer.clear"})

    async def create_response(self, **response: Any) -> str:
        event: dict[str, Any] = {"type": "response.create"}
        if response:
            event["response"] = response
        return await self.send(event)

    async def cancel_response(self, response_id: str | None = None) -> str:
        event: dict[str, Any] = {"type": "response.cancel"}
        if response_id:
            event["response_id"] = response_id
        return await self.send(event)

    async def truncate(self, item_id: str, audio_end_ms: int, content_index: int = 0) -> str:
        """Tell the server how much of an assistant item the listener actually heard."""
        return await self.send({"type": "conversation.item.truncate", "item_id": item_id,
                                "content_index": content_index, "audio_end_ms": int(audio_end_ms)})

    async def send_text(self, text: str) -> str:
        """Add a user text message to the conversation (follow with `create_response()` for a reply)."""
        return await self.send({"type": "conversation.item.create", "item": {
            "type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}})

    # --- server -> client ---------------------------------------------------------------------------------

    async def recv(self) -> dict[str, Any] | None:
        """The next server event, or None once the connection is closed."""
        while True:
            try:
                message = await self.ws.recv()
            except ConnectionClosed:
                return None
            if isinstance(message, str):
                return json.loads(message)

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        """Server events as dicts, until the connection closes."""
        while (event := await self.recv()) is not None:
            yield event

    async def wait_for(self, *types: str, timeout: float | None = 10.0) -> dict[str, Any]:
        """Read until an event of one of `types` arrives and return it; events before it are dropped.
        An `error` event raises `RealtimeError` (unless "error" is among `types`)."""
        try:
            async with asyncio.timeout(timeout):
                while (event := await self.recv()) is not None:
                    if event.get("type") in types:
                        return event
                    if event.get("type") == "error":
                        raise RealtimeError(event)
        except TimeoutError:
            raise TimeoutError(f"{self.url}: no {' or '.join(types)} within {timeout:g} s") from None
        raise RealtimeConnectionError(f"{self.url}: connection closed ({self.closed_reason}) "
                                      f"while waiting for {' or '.join(types)}")

    @property
    def closed_reason(self) -> str:
        code, reason = self.ws.close_code, self.ws.close_reason
        return f"code {code}" + (f": {reason}" if reason else "") if code is not None else "no close frame"

    def _closed_why(self, exc: ConnectionClosed) -> str:
        frame = exc.rcvd or exc.sent
        return f"code {frame.code}" + (f": {frame.reason}" if frame.reason else "") if frame else "no close frame"


# --- one spoken turn ----------------------------------------------------------------------------------------


@dataclass
class TalkResult:
    """What came back for one spoken turn. Latencies are in ms from the end of the user's speech."""

    user_transcript: str
    assistant_transcript: str
    audio: np.ndarray  # float32 mono, the reply of the final response
    sample_rate: int = SAMPLE_RATE
    status: str = ""  # response.done's status: completed | cancelled | failed | incomplete
    latency_ms: dict[str, float | None] = field(default_factory=dict)  # the server's higgs.turn.latency figures
    events: list[str] = field(default_factory=list)  # server event types, in order
    first_audio_after_ms: float | None = None  # client-side: end of sent speech -> first reply audio delta
    response: dict[str, Any] = field(default_factory=dict)  # response.done's response object

    @property
    def pcm16(self) -> bytes:
        """The reply exactly as received (PCM16 LE)."""
        return np.round(self.audio * 32768.0).astype("<i2").tobytes()

    @property
    def duration_s(self) -> float:
        return len(self.audio) / self.sample_rate


@dataclass
class _Turn:
    """What the reader has collected so far; the sender reads `stop_sending`."""

    events: list[str] = field(default_factory=list)
    user_transcripts: list[str] = field(default_factory=list)
    audio: dict[str, bytearray] = field(default_factory=dict)  # response id -> PCM16
    text: dict[str, list[str]] = field(default_factory=dict)  # response id -> transcript deltas
    final_text: dict[str, str] = field(default_factory=dict)  # response id -> output_audio_transcript.done
    first_audio_t: dict[str, float] = field(default_factory=dict)
    latency: dict[str, dict] = field(default_factory=dict)  # response id -> latency_ms
    done: dict[str, Any] | None = None  # the final response.done's response object
    speaking: bool = False  # speech_started seen and not yet stopped
    stop_sending: asyncio.Event = field(default_factory=asyncio.Event)
    speech_end_t: float | None = None  # when the last chunk of the user's speech was sent
    sent_all_speech: bool = False
    heard_end_t: float | None = None  # live only: when the chunk where the server's VAD heard speech end was sent
    live: bool = False  # a live source (microphone): the server's VAD ends it
    sent: list[tuple[float, float]] = field(default_factory=list)  # (ms of audio sent so far, when), live only


async def talk(url: str, audio: np.ndarray | AsyncIterable[np.ndarray], rate: int, *, api_key: str | None = None,
               realtime_pace: bool = True, chunk_ms: int = 20, tail_silence_ms: int = 1500,
               manual_commit: bool = False, session: dict[str, Any] | None = None,
               on_event: Callable[[dict[str, Any]], None] | None = None, timeout_s: float = 60.0,
               open_timeout: float = 10.0, extension_events: bool = True) -> TalkResult:
    """Speak one turn to the server at `url` and return its reply.

    `audio` is float32 mono at `rate` Hz: a whole recording (sent in `chunk_ms` chunks, at real-time pace
    unless `realtime_pace=False`), or an async iterable of chunks that are already live (a microphone).
    With server VAD (the default) `tail_silence_ms` of silence follows the speech so the server hears the
    turn end; sending stops as soon as the server reports `speech_stopped`. With `manual_commit` turn
    detection is switched off (`turn_detection: null`) and the turn ends with commit + response.create.
    `session` adds fields to the session.update (e.g. instructions). `on_event` sees every server event.
    `extension_events` asks a higgs-agent server for its `higgs.*` events (the turn's latency stages); turn it
    off for servers that refuse unknown session fields.
    Raises RealtimeConnectionError, RealtimeError (an `error` event) or TimeoutError.
    """
    turn = _Turn(live=not isinstance(audio, np.ndarray))
    try:
        async with asyncio.timeout(timeout_s):
            async with await RealtimeClient.connect(url, api_key, open_timeout=open_timeout) as client:
                fields = dict(session or {})
                if extension_events:
                    fields["higgs"] = {"extension_events": True, **(fields.get("higgs") or {})}
                if manual_commit:
                    audio_cfg = dict(fields.get("audio") or {})
                    audio_cfg["input"] = {**(audio_cfg.get("input") or {}), "turn_detection": None}
                    fields["audio"] = audio_cfg
                if fields:
                    await client.update_session(**fields)
                sender = asyncio.create_task(_send_turn(client, turn, audio, rate, realtime_pace=realtime_pace,
                                                        chunk_ms=chunk_ms, tail_silence_ms=tail_silence_ms,
                                                        manual_commit=manual_commit))
                try:
                    await _read_turn(client, turn, sender, on_event)
                finally:
                    sender.cancel()
                    await asyncio.gather(sender, return_exceptions=True)
    except TimeoutError:
        hint = ("; the server's VAD never reported speech (too quiet? try manual_commit / --manual)"
                if turn.sent_all_speech and not manual_commit and "input_audio_buffer.speech_started" not in turn.events
                else "")
        raise TimeoutError(f"{url}: no complete reply within {timeout_s:g} s "
                           f"(last events: {', '.join(turn.events[-8:]) or 'none'}){hint}") from None
    return _result(turn)


async def _chunks(audio: np.ndarray | AsyncIterable[np.ndarray], rate: int, chunk_ms: int) -> AsyncIterator[bytes]:
    if isinstance(audio, np.ndarray):
        pcm = float_to_pcm16(resample(np.asarray(audio, dtype=np.float32).reshape(-1), rate, SAMPLE_RATE))
        step = chunk_ms * _BYTES_PER_MS
        for start in range(0, len(pcm), step):
            yield pcm[start:start + step]
    else:
        resampler = StreamResampler(rate, SAMPLE_RATE)
        try:
            async for chunk in audio:
                yield float_to_pcm16(resampler.push(np.asarray(chunk, dtype=np.float32).reshape(-1)))
        finally:
            if hasattr(audio, "aclose"):
                await audio.aclose()


async def _send_turn(client: RealtimeClient, turn: _Turn, audio: np.ndarray | AsyncIterable[np.ndarray], rate: int,
                     *, realtime_pace: bool, chunk_ms: int, tail_silence_ms: int, manual_commit: bool) -> None:
    paced = realtime_pace and isinstance(audio, np.ndarray)  # a live source is paced by itself
    start = time.monotonic()
    sent_ms = 0.0

    async def send(pcm: bytes) -> None:
        nonlocal sent_ms
        sent_ms += len(pcm) / _BYTES_PER_MS
        if paced:  # like a microphone: a chunk leaves once all of it has been "spoken"
            await asyncio.sleep(max(0.0, start + sent_ms / 1000 - time.monotonic()))
        await client.append_audio(pcm)
        if turn.live:
            turn.sent.append((sent_ms, time.monotonic()))

    async with aclosing(_chunks(audio, rate, chunk_ms)) as chunks:  # closing a live source stops its recording
        async for pcm in chunks:
            if turn.stop_sending.is_set():
                break
            if not pcm:
                continue
            await send(pcm)
            turn.speech_end_t = time.monotonic()
    turn.sent_all_speech = True
    if manual_commit:
        await client.commit()
        await client.create_response()
        return
    silence = bytes(chunk_ms * _BYTES_PER_MS)
    for _ in range(-(-tail_silence_ms // chunk_ms)):
        if turn.stop_sending.is_set():
            return
        await send(silence)


async def _read_turn(client: RealtimeClient, turn: _Turn, sender: asyncio.Task,
                     on_event: Callable[[dict[str, Any]], None] | None) -> None:
    """Collect events until the reply to the whole turn is done (plus a moment for a late latency event)."""
    async for event in client.events():
        kind = event.get("type", "")
        turn.events.append(kind)
        if on_event is not None:
            on_event(event)
        response_id = event.get("response_id") or ""
        if kind == "error":
            raise RealtimeError(event)
        if kind == "input_audio_buffer.speech_started":
            turn.speaking = True
        elif kind == "input_audio_buffer.speech_stopped":
            turn.speaking = False
            if turn.live:  # the end of speech is where the server heard it, not when the user pressed a key
                turn.heard_end_t = _sent_at(turn.sent, event.get("audio_end_ms"))
            if turn.sent_all_speech or turn.live:
                turn.stop_sending.set()  # the server heard the end: no need for the rest of the tail
        elif kind == "conversation.item.input_audio_transcription.completed":
            turn.user_transcripts.append(event.get("transcript") or "")
        elif kind == "response.output_audio.delta":
            turn.first_audio_t.setdefault(response_id, time.monotonic())
            turn.audio.setdefault(response_id, bytearray()).extend(base64.b64decode(event.get("delta") or ""))
        elif kind == "response.output_audio_transcript.delta":
            turn.text.setdefault(response_id, []).append(event.get("delta") or "")
        elif kind == "response.output_audio_transcript.done":
            turn.final_text[response_id] = event.get("transcript") or ""
        elif kind == "higgs.turn.latency":
            turn.latency[response_id] = event.get("latency_ms") or {}
        elif kind == "response.done":
            response = event.get("response") or {}
            # A response to the first half of a split utterance is not the reply to the turn: wait for more.
            if (turn.sent_all_speech or turn.stop_sending.is_set()) and not turn.speaking:
                turn.done = response
                turn.stop_sending.set()
                if response.get("id") not in turn.latency:
                    await _late_latency(client, turn, response.get("id"), on_event)
                return
    if sender.done() and not sender.cancelled() and sender.exception() is not None:
        raise sender.exception()
    raise RealtimeConnectionError(f"{client.url}: the server closed the connection ({client.closed_reason}) "
                                  f"before the reply was done")


async def _late_latency(client: RealtimeClient, turn: _Turn, response_id: str | None,
                        on_event: Callable[[dict[str, Any]], None] | None, wait_s: float = 0.25) -> None:
    """Servers may report a turn's latency just after response.done; give it a moment."""
    try:
        async with asyncio.timeout(wait_s):
            while (event := await client.recv()) is not None:
                turn.events.append(event.get("type", ""))
                if on_event is not None:
                    on_event(event)
                if event.get("type") == "higgs.turn.latency":
                    turn.latency[event.get("response_id") or ""] = event.get("latency_ms") or {}
                    if event.get("response_id") == response_id:
                        return
    except TimeoutError:
        pass


def _sent_at(sent: list[tuple[float, float]], audio_end_ms: float | None) -> float | None:
    """When the chunk holding `audio_end_ms` (ms of audio since the session began) was sent."""
    if not sent:
        return None
    if audio_end_ms is not None:
        for sent_ms, when in sent:
            if sent_ms >= audio_end_ms:
                return when
    return sent[-1][1]


def _result(turn: _Turn) -> TalkResult:
    response = turn.done or {}
    rid = response.get("id") or ""
    if rid not in turn.audio and rid not in turn.text and turn.audio:
        rid = next(reversed(turn.audio))  # a server that leaves response ids out of deltas
    pcm = bytes(turn.audio.get(rid, b""))
    text = turn.final_text.get(rid) or "".join(turn.text.get(rid, []))
    latency = turn.latency.get(rid) or (next(reversed(turn.latency.values())) if turn.latency else {})
    first_audio = None
    speech_end_t = turn.heard_end_t or turn.speech_end_t
    if rid in turn.first_audio_t and speech_end_t is not None:
        first_audio = (turn.first_audio_t[rid] - speech_end_t) * 1000.0
    return TalkResult(user_transcript=" ".join(t.strip() for t in turn.user_transcripts if t.strip()),
                      assistant_transcript=text.strip(), audio=pcm16_to_float(pcm), status=response.get("status", ""),
                      latency_ms=dict(latency), events=list(turn.events), first_audio_after_ms=first_audio,
                      response=response)
