"""Reply speech from remote engines (`serve --engine-url URL ...`): the `SpeechEngine` a session speaks through
when the model runs elsewhere, our own `serve` processes or vLLM-Omni, over `POST /v1/audio/speech`.

- Choice: each response leases the least-loaded engine that is up (its replies in flight here, or the busy
  slots our `serve` reports on /health if more: other agents use it too); all its phrases go there. An engine
  whose slots are all taken is skipped; none up or none free is `AtCapacityError` (the reply fails at once
  with `at_capacity`, never a hang).
- Health: every `health_interval_s` each engine's /health is asked (with the engine key); an engine that does not
  answer, or that fails a request, is down until its /health answers again.
- Failover: an engine that fails before the reply has any of its audio (refused connection) is passed over for
  the next one within the same reply; one that fails mid-reply (its stream cut, an error status) fails that reply
  with `EngineError` (`response.done` failed, `engine_error`), and the next reply goes to another engine.
- Barge-in: leaving a stream closes its HTTP response (and so its connection): the engine sees the client go and
  frees its slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np

from higgs_agent.metrics import AgentMetrics
from higgs_agent.model.prompts import AudioClip, SpeechPrompt, VoiceReference
from higgs_agent.model.sampling import SamplingSettings
from higgs_agent.remote.speech_api import PCM_RATE, EngineKind, PcmChunks, speech_body
from higgs_agent.streaming.generation import AtCapacityError
from higgs_agent.streaming.scheduler import Lease
from higgs_agent.streaming.speech_engine import EngineError

log = logging.getLogger(__name__)
CHARS_PER_TOKEN = 4  # usage's text tokens without the remote's tokenizer: OpenAI's rule of thumb
FULL_RETRY_S = 3.0  # a reply's engine that is full between two of its phrases is asked again this long
HEALTH_TIMEOUT_S = 2.0  # a /health that takes longer is a miss
MISSES_DOWN = 2  # health checks missed in a row before an engine is down (one slow answer is not a death)


@dataclass
class Remote:
    """What this agent knows of one engine."""

    url: str
    kind: EngineKind
    up: bool = True  # until a check or a request says otherwise
    in_flight: int = 0  # responses of this agent leasing it
    streams: int = 0  # this agent's phrases being spoken by it now
    slots: int | None = None  # from our serve's /health (vLLM-Omni does not say)
    others: int = 0  # slots busy for other clients, at the last check (its busy slots less our streams then)
    misses: int = 0  # health checks failed in a row
    requests: int = 0  # phrases it was asked for
    errors: int = 0
    last_error: str | None = None
    health_ms: float | None = None
    first_audio_ms: list[float] = field(default_factory=list)  # the last 100

    @property
    def load(self) -> int:
        return self.in_flight + self.others

    @property
    def full(self) -> bool:
        return self.slots is not None and self.load >= self.slots

    def failed(self, why: str) -> None:
        self.up, self.errors, self.last_error = False, self.errors + 1, why

    @property
    def busy_slots(self) -> int:
        return self.others + self.streams

    def report(self) -> dict[str, Any]:
        recent = sorted(self.first_audio_ms)
        return {"url": self.url, "kind": self.kind, "up": self.up, "in_flight": self.in_flight,
                "slots": self.slots, "busy_slots": self.busy_slots, "requests": self.requests, "errors": self.errors,
                "last_error": self.last_error, "health_ms": self.health_ms,
                "first_audio_ms_p50": recent[len(recent) // 2] if recent else None}


class RequestRefused(EngineError):
    """An engine refused the request itself (a 4xx other than a key or path problem): another would too."""


class RemoteLease(Lease):
    """A response's engine: chosen once; `heard` once any of its audio came back (after that, no failover)."""

    def __init__(self, name: str, remote: Remote) -> None:
        super().__init__(name)
        self.remote = remote
        self.heard = False

    @property
    def engine(self) -> str:  # type: ignore[override]
        return self.remote.url


@dataclass
class _Stats:
    stop_reason: str | None = None
    frames: int = 0
    prefill_started_at: float | None = None  # perf_counter when the engine answered (began the phrase)


class RemoteSpeech:
    """One phrase's streamed PCM from a remote engine."""

    def __init__(self, response: httpx.Response, on_first_audio: Callable[[], None], max_frames: int) -> None:
        self.frames: list[Any] = []  # a remote sends sound, not codes
        self.stats = _Stats()
        self._response = response
        self._on_first_audio = on_first_audio
        self._max_frames = max_frames

    async def pcm(self, on_frame: Callable[[Any], None] | None = None) -> AsyncIterator[np.ndarray]:
        chunks = PcmChunks()
        samples = 0
        async for data in self._response.aiter_bytes():  # decoded, should a proxy compress it
            chunk = chunks.feed(data)
            if chunk is None:
                continue
            if samples == 0:
                self._on_first_audio()
            samples += len(chunk)
            self.stats.frames = samples * 25 // PCM_RATE
            if on_frame is not None:
                on_frame(None)
            yield chunk
        # a phrase that used its whole budget was cut, not finished (it must not become the session's voice)
        self.stats.stop_reason = "max_frames" if self.stats.frames >= self._max_frames - 1 else "end_of_audio"


class RemoteEngines:
    """Speech from one or more OpenAI-compatible speech endpoints (see the module docstring)."""

    def __init__(self, urls: list[str], kind: EngineKind = "higgs", model: str | None = None,
                 api_key: str | None = None, metrics: AgentMetrics | None = None, health_interval_s: float = 2.0,
                 connect_timeout_s: float = 2.0, read_timeout_s: float = 30.0) -> None:
        if not urls:
            raise ValueError("remote engines need at least one --engine-url")
        self.remotes = [Remote(url.rstrip("/"), kind) for url in urls]
        self.kind = kind
        self.model = model
        self.metrics = metrics or AgentMetrics()
        self.health_interval_s = health_interval_s
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.AsyncClient(headers=headers, timeout=httpx.Timeout(
            read_timeout_s, connect=connect_timeout_s, pool=connect_timeout_s))
        self._checks: asyncio.Task | None = None
        self._first_round: asyncio.Future | None = None

    # -- the SpeechEngine contract ---------------------------------------------------------------------

    @property
    def name(self) -> str:
        return ",".join(remote.url for remote in self.remotes)

    @property
    def model_name(self) -> str:
        return self.model or f"{self.kind} at {self.remotes[0].url}"

    @property
    def slots(self) -> int:
        return sum(remote.slots or 1 for remote in self.remotes if remote.up)

    @property
    def busy_slots(self) -> int:
        return sum(remote.in_flight for remote in self.remotes)

    @asynccontextmanager
    async def lease(self, name: str = "response") -> AsyncIterator[RemoteLease]:
        await self._first_checked()
        lease = RemoteLease(name, self._choose())
        self._hold(lease.remote, +1)
        try:
            yield lease
        finally:
            self._hold(lease.remote, -1)
            lease.released = True

    async def admit(self, name: str) -> None:
        await self._first_checked()
        self._choose()

    @asynccontextmanager
    async def stream(self, prompt: SpeechPrompt, settings: SamplingSettings, lease: RemoteLease | None = None,
                     frames: bool = False) -> AsyncIterator[RemoteSpeech]:
        remote, response, started = await self._opened(prompt, settings, lease)

        def first_audio() -> None:
            elapsed = time.perf_counter() - started
            self.metrics.engine_first_audio.labels(engine=remote.url).observe(elapsed)
            remote.first_audio_ms = [*remote.first_audio_ms[-99:], elapsed * 1000.0]
            if lease is not None:
                lease.heard = True

        speech = RemoteSpeech(response, first_audio, settings.max_frames)
        speech.stats.prefill_started_at = time.perf_counter()  # the engine took it: its headers are here
        outcome = "cancelled"
        remote.streams += 1
        try:
            yield speech
            outcome = "ok" if speech.stats.stop_reason else "cancelled"
        except httpx.TransportError as exc:  # cut mid-phrase: the engine died or the network did
            outcome = "error"
            self._down(remote, f"its stream broke: {exc!r}")
            raise EngineError(f"the speech engine {remote.url} stopped mid-reply: {exc!r}") from exc
        finally:
            remote.streams -= 1
            await response.aclose()  # a barge-in closes the connection: the engine frees the slot
            self.metrics.engine_requests.labels(engine=remote.url, outcome=outcome).inc()

    async def _opened(self, prompt: SpeechPrompt, settings: SamplingSettings,
                      lease: RemoteLease | None) -> tuple[Remote, httpx.Response, float]:
        """The phrase's request, answered 200 by an engine. Until the reply has any audio, an engine that fails
        or is full is passed over for the next; after, the reply stays on its engine (a full one is asked again
        for a few seconds: between two phrases another agent may hold its slot) or fails with EngineError."""
        await self._first_checked()
        tried: set[str] = set()
        full_until: float | None = None
        while True:
            stay = lease is not None and (lease.heard or (lease.remote.up and lease.remote.url not in tried))
            remote = lease.remote if stay and lease is not None else self._choose(exclude=tried)
            if lease is not None and remote is not lease.remote:  # nothing heard yet: the reply moves over
                self._hold(lease.remote, -1)
                lease.remote = remote
                self._hold(remote, +1)
            tried.add(remote.url)
            started = time.perf_counter()
            try:
                return remote, await self._open(remote, prompt, settings), started
            except RequestRefused:  # the same request would be refused anywhere: say why
                raise
            except AtCapacityError:
                if lease is None or not lease.heard:
                    continue  # another engine may have room (none: _choose says at_capacity)
                full_until = full_until or time.monotonic() + FULL_RETRY_S
                if time.monotonic() > full_until:
                    raise
                await asyncio.sleep(0.25)
            except (httpx.TransportError, EngineError) as exc:  # unreachable, timed out, broken, or an error status
                if isinstance(exc, httpx.TransportError):
                    self.metrics.engine_requests.labels(engine=remote.url, outcome="error").inc()
                    self._down(remote, f"request failed: {exc!r}")
                if lease is not None and lease.heard:
                    raise EngineError(f"the speech engine {remote.url} failed during this reply: "
                                      f"{remote.last_error}") from exc

    async def voice(self, audio: np.ndarray, sample_rate: int, transcript: str,
                    stage: str = "encode") -> VoiceReference:
        """Kept as sound, clipped as the local engine clips codes: the remote engine encodes it; sent with each
        phrase as `ref_audio` (made into a data URI once)."""
        clip = AudioClip(np.asarray(audio, dtype=np.float32), sample_rate)
        return VoiceReference(codes=None, transcript=transcript, audio=clip).clipped()

    async def count_tokens(self, text: str) -> int:
        return math.ceil(len(text) / CHARS_PER_TOKEN)

    def health(self) -> dict[str, Any]:
        self._start_checks()
        return {"model": self.model_name, "device": "remote", "slots": self.slots, "busy_slots": self.busy_slots,
                "engines": [remote.report() for remote in self.remotes]}

    def close(self) -> None:
        for task in (self._checks, self._first_round):
            if task is not None:
                task.cancel()
        with contextlib.suppress(RuntimeError):  # no running loop: the process is ending anyway
            asyncio.get_running_loop().create_task(self._client.aclose())

    # -- choosing, holding, checking ---------------------------------------------------------------------

    def _choose(self, exclude: set[str] = frozenset()) -> Remote:  # type: ignore[assignment]
        self._start_checks()
        up = [remote for remote in self.remotes if remote.up and remote.url not in exclude]
        free = [remote for remote in up if not remote.full]
        if not free:
            why = "every speech engine is busy" if up else "no speech engine is reachable"
            details = "; ".join(f"{r.url}: {'up' if r.up else 'down'}" + (f" ({r.last_error})" if not r.up and
                                r.last_error else "") for r in self.remotes)
            raise AtCapacityError(f"{why} ({details}); try again shortly")
        # the least loaded; among equals, the one asked least so far (so idle engines take turns)
        return min(free, key=lambda remote: (remote.load / (remote.slots or 1), remote.load, remote.requests))

    def _hold(self, remote: Remote, change: int) -> None:
        remote.in_flight += change
        self.metrics.engine_in_flight.labels(engine=remote.url).set(remote.in_flight)

    def _down(self, remote: Remote, why: str) -> None:
        if remote.up:
            log.warning("speech engine %s is down: %s", remote.url, why)
        remote.failed(why)
        self.metrics.engine_up.labels(engine=remote.url).set(0)

    async def _open(self, remote: Remote, prompt: SpeechPrompt, settings: SamplingSettings) -> httpx.Response:
        body = speech_body(prompt, settings, remote.kind, self.model)
        request = self._client.build_request("POST", f"{remote.url}/v1/audio/speech", json=body)
        response = await self._client.send(request, stream=True)
        remote.requests += 1
        if response.status_code == 200:
            return response
        try:
            detail = (await response.aread()).decode("utf-8", "replace")[:300]
        finally:
            await response.aclose()
        status = response.status_code
        if status == 503:
            self.metrics.engine_requests.labels(engine=remote.url, outcome="at_capacity").inc()
            raise AtCapacityError(f"the speech engine {remote.url} is at capacity: {detail}")
        self.metrics.engine_requests.labels(engine=remote.url, outcome="error").inc()
        message = f"the speech engine {remote.url} answered {status}: {detail}"
        if status >= 500 or status in (401, 403, 404):  # broken or misconfigured: not asked again until it is well
            self._down(remote, message)
            raise EngineError(message)
        raise RequestRefused(message)

    async def _first_checked(self) -> None:
        """The first reply waits for the first round of health checks (what is up, how many slots), once."""
        self._start_checks()
        if self._first_round is not None and not self._first_round.done():
            await asyncio.shield(self._first_round)

    def _start_checks(self) -> None:
        if self._checks is not None and not self._checks.done():
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # called outside a loop (start-up): the checks begin with the first reply
            return
        self._first_round = loop.create_task(self._check_all())
        self._checks = loop.create_task(self._check_forever(self._first_round), name="engine-health")

    async def _check_all(self) -> None:
        await asyncio.gather(*(self.check(remote) for remote in self.remotes))

    async def _check_forever(self, first_round: asyncio.Future) -> None:
        await first_round
        while True:
            await asyncio.sleep(self.health_interval_s)
            await self._check_all()

    async def check(self, remote: Remote) -> None:
        """Ask one engine's /health: up or down, and (our serve) its slots and how many are busy."""
        started = time.perf_counter()
        ours = remote.streams  # our phrases it is speaking as it answers (its busy slots count them)
        try:
            response = await self._client.get(f"{remote.url}/health", timeout=HEALTH_TIMEOUT_S)
            response.raise_for_status()
        except httpx.HTTPError as exc:
            remote.misses += 1
            if remote.misses >= MISSES_DOWN or isinstance(exc, httpx.ConnectError):
                self._down(remote, f"health check failed: {exc!r}")
            return
        remote.misses = 0
        remote.health_ms = (time.perf_counter() - started) * 1000.0
        with contextlib.suppress(ValueError):
            report = response.json()
            if isinstance(report, dict) and isinstance(report.get("slots"), int):
                busy = int(report.get("busy_slots") or 0)
                remote.slots, remote.others = report["slots"], max(0, busy - min(ours, remote.streams))
        if not remote.up:
            log.info("speech engine %s is up again", remote.url)
        remote.up = True
        self.metrics.engine_up.labels(engine=remote.url).set(1)
