"""`higgs-agent serve`: load the models named on the command line, build the shared services, run uvicorn."""

from __future__ import annotations

import argparse
import asyncio
import errno
import gc
import logging
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch loads only when serving
    from higgs_agent.agent.responders.base import Responder
    from higgs_agent.agent.services import AgentServices
    from higgs_agent.model.loader import HiggsBundle
    from higgs_agent.model.sampling import SamplingSettings
    from higgs_agent.records.store import RecordStore
    from higgs_agent.records.writer import RecordWriter
    from higgs_agent.streaming.engine import StreamingEngine
    from higgs_agent.voices.library import VoiceLibrary

log = logging.getLogger(__name__)
SHUTDOWN_GRACE_S = 5.0  # on Ctrl-C: open HTTP bodies get this long, then the server stops regardless
WS_MAX_BYTES = 16 << 20  # frames past this are refused by the WebSocket layer itself (close 1009)


def default_responder(args: argparse.Namespace) -> str:
    return args.responder or ("local" if args.reply_model else "llm" if args.llm_url else "echo")


def check_serve_args(args: argparse.Namespace) -> str | None:
    """A usage error message, or None."""
    responder = default_responder(args)
    if responder == "llm" and not (args.llm_url and args.llm_model):
        return "--responder llm needs --llm-url URL and --llm-model NAME"
    if responder == "local" and not args.reply_model:
        return "--responder local needs --reply-model ID_OR_DIR (e.g. Qwen/Qwen2.5-1.5B-Instruct)"
    if bool(args.voice) != bool(args.voice_text):
        return "--voice and --voice-text go together"
    if args.engine_url and responder == "native":
        return "--responder native needs the model in this process: it cannot be used with --engine-url"
    if args.engine_url and args.voice_presets:
        return "--voice-presets needs the model in this process (the library keeps codec codes); not with --engine-url"
    if args.mcp_server and responder not in ("llm", "local"):
        return ("--mcp-server needs a responder that calls tools: llm (--llm-url URL --llm-model NAME) or local "
                "(--reply-model ID_OR_DIR)")
    try:
        mcp_servers(args)
    except ValueError as exc:
        return str(exc)
    if args.records_days is not None and (not args.records_url or args.records_days <= 0):
        return "--records-days N needs --records-url and N > 0"
    if getattr(args, "records_audio", False) and not args.records_url:
        return "--records-audio needs --records-url"
    if getattr(args, "otlp_endpoint", None) and not args.otlp_endpoint.startswith(("http://", "https://")):
        return "--otlp-endpoint needs an http:// or https:// URL (OTLP over HTTP, e.g. http://collector:4318)"
    return None


def records_store(args: argparse.Namespace) -> RecordStore | None:
    """The database of `--records-url` (a bare path is a SQLite file); None without one. ValueError for a URL
    that cannot be used (no connection is made yet: a database that is down is not a reason to refuse calls)."""
    from higgs_agent.records.store import RecordStore

    if not args.records_url:
        return None
    url = args.records_url if "://" in args.records_url else f"sqlite:///{args.records_url}"
    return RecordStore(url)


def records_writer(store: RecordStore | None, days: float | None, metrics: Any,  # noqa: ANN401
                   audio: bool = False) -> RecordWriter | None:
    """The records' writer thread, started, counting what it writes and drops in `metrics` (AgentMetrics);
    `audio`: both sides' audio too."""
    from higgs_agent.records.writer import RecordWriter

    if store is None:
        return None
    writer = RecordWriter(store, days, on_drop=lambda reason, count: metrics.records_dropped.labels(reason).inc(count),
                          on_write=metrics.records_written.inc, audio=audio)
    writer.start()
    return writer


def mcp_servers(args: argparse.Namespace) -> tuple:  # tuple[McpServerSpec, ...]
    """The operator's --mcp-server flags, parsed (ValueError with the flag's problem)."""
    if not args.mcp_server:
        return ()
    from higgs_agent.agent.tools.mcp_client import parse_mcp_server_flag

    return tuple(parse_mcp_server_flag(flag) for flag in args.mcp_server)


def build_responders(args: argparse.Namespace, bundle: HiggsBundle | None,
                     engine: StreamingEngine | None) -> dict[str, Responder]:
    from higgs_agent.agent.responders.echo import EchoResponder

    responders: dict[str, Responder] = {"echo": EchoResponder()}
    if args.llm_url:
        from higgs_agent.agent.responders.llm import LLMResponder

        responders["llm"] = LLMResponder(args.llm_url, args.llm_model, api_key=args.llm_api_key)
    if getattr(args, "reply_model", None):
        responders["local"] = local_responder(args, bundle)
    if bundle is not None and engine is not None and bundle.model.text_lm_head is not None:  # use_text_head=True
        from higgs_agent.agent.responders.native import NativeResponder

        responders["native"] = NativeResponder(bundle, run=engine.run)  # its model steps on the model worker
    return responders


def local_responder(args: argparse.Namespace, bundle: HiggsBundle | None) -> Responder:
    """The --reply-model on the Higgs model's device (ModelLoadError, saying how to get one, if it cannot load)."""
    from higgs_agent.agent.responders.local import LocalResponder
    from higgs_agent.model.loader import pick_device
    from higgs_agent.model.reply_model import ReplyGenerator, load_reply_model

    dtype = None if args.dtype == "auto" else args.dtype
    model = load_reply_model(args.reply_model, device=bundle.device if bundle is not None else pick_device(args.device),
                             dtype=dtype)
    generator = ReplyGenerator(model, max_batch=args.reply_batch)
    # two tokens on its thread while the server starts: the first caller does not pay for first-call set-up
    generator.submit(model.tokenizer("Hello.", add_special_tokens=False)["input_ids"], lambda token, error: None, 2)
    return LocalResponder(generator, max_new_tokens=args.reply_max_tokens)


def build_services(args: argparse.Namespace, bundle: HiggsBundle | None, sampling: SamplingSettings,
                   records: RecordStore | None = None) -> AgentServices:
    """Everything sessions share. `bundle` None: replies are spoken by the --engine-url remotes."""
    from higgs_agent import SAMPLE_RATE
    from higgs_agent.agent.noise import NoiseReduction, load_rnnoise
    from higgs_agent.agent.services import AgentServices
    from higgs_agent.audio import read_wav
    from higgs_agent.metrics import AgentMetrics
    from higgs_agent.model.asr import Transcriber
    from higgs_agent.model.prompts import AudioClip, VoiceReference, encode_voice
    from higgs_agent.otlp import start_traces
    from higgs_agent.streaming.engine import StreamingEngine
    from higgs_agent.streaming.speech_engine import SpeechEngine

    started = time.perf_counter()
    transcriber = Transcriber.load(args.asr_model, window=getattr(args, "asr_window", "fitted"))
    transcriber.warmup()
    log.info("ASR: %s from %s (%.1f s)", transcriber.name, transcriber.source, time.perf_counter() - started)
    turn_model = _load_turn_model()
    metrics = AgentMetrics()
    voice = None
    local: StreamingEngine | None = None
    if bundle is None:  # the model runs elsewhere: voices travel as sound, the remote encodes them
        engine: SpeechEngine = remote_engines(args, metrics)
        if args.voice:
            voice = VoiceReference(codes=None, transcript=args.voice_text,  # clipped once, not per phrase
                                   audio=AudioClip(read_wav(args.voice), SAMPLE_RATE)).clipped()
        voices = None
    else:
        if args.voice:
            voice = encode_voice(bundle.processor, read_wav(args.voice), SAMPLE_RATE, args.voice_text)
        engine = local = StreamingEngine(bundle, slots=args.slots)
        _warm_up_engine(local, sampling)
        voices = voice_library(args.voices_dir, args.voice_presets, bundle, local)
    analyzer = None
    if not args.no_understanding:
        from higgs_agent.understanding.analyzer import TurnAnalyzer

        started = time.perf_counter()
        analyzer = TurnAnalyzer.load(args.speaker_model, args.emotion_model, args.speaker_threshold)
        analyzer.warm_up_in_background()  # seconds of librosa/numba first calls: not before serving
        log.info("understanding: speaker %s, emotion %s (%.1f s; still warming up in the background)",
                 args.speaker_model or "Resemblyzer GE2E", args.emotion_model or "prosody rules",
                 time.perf_counter() - started)
    load_rnnoise()  # any session may ask for noise_reduction
    return AgentServices(engine=engine, transcriber=transcriber, responders=build_responders(args, bundle, local),
                         default_responder=default_responder(args), sampling=sampling, voice=voice,
                         extension_events=args.extension_events, mcp_servers=mcp_servers(args),
                         noise_reduction=NoiseReduction.from_flag(getattr(args, "noise_reduction", "off")),
                         allow_client_mcp=args.allow_client_mcp, mcp_call_timeout_s=args.mcp_call_timeout,
                         analyzer=analyzer, voices=voices, turn_model=turn_model, metrics=metrics,
                         records=records_writer(records, args.records_days, metrics,
                                                getattr(args, "records_audio", False)),
                         traces=start_traces(getattr(args, "otlp_endpoint", None)))


def remote_engines(args: argparse.Namespace, metrics: Any) -> Any:  # noqa: ANN401 - AgentMetrics -> RemoteEngines
    from higgs_agent.remote.engines import RemoteEngines

    return RemoteEngines(args.engine_url, kind=args.engine_kind, model=args.engine_model,
                         api_key=args.engine_api_key, metrics=metrics, health_interval_s=args.engine_health_interval)


def _load_turn_model():  # noqa: ANN202 - SmartTurn | None
    """semantic_vad's smart-turn, loaded and run once before serving (None, and a warning, when missing)."""
    import numpy as np

    from higgs_agent.agent.end_of_turn import RATE, SmartTurn, TurnModelMissing

    started = time.perf_counter()
    try:
        model = SmartTurn()
    except TurnModelMissing as exc:
        log.warning("%s; semantic_vad will judge pauses by the words alone", exc)
        return None
    model.probability(np.zeros(RATE, dtype=np.float32))
    log.info("end of turn: smart-turn v3.2 from %s (%.1f s)", model.path, time.perf_counter() - started)
    return model


def _warm_up_engine(engine: StreamingEngine, sampling: SamplingSettings) -> None:
    """One short phrase through the engine and the codec while the server starts serving: the first caller
    does not pay for first-call initialisation (measured by `bench startup`)."""
    from dataclasses import replace

    from higgs_agent.model.prompts import SpeechPrompt

    started = time.perf_counter()
    warm = engine.warm_up(SpeechPrompt(text="Hello."), replace(sampling, max_frames=12))

    def report() -> None:
        if warm.done.wait(60):
            log.info("engine warmed up in %.0f ms (in the background)", (time.perf_counter() - started) * 1000)

    threading.Thread(target=report, name="higgs-warm-up", daemon=True).start()


def voice_library(root: str, presets: str | None, bundle: HiggsBundle, engine: StreamingEngine) -> VoiceLibrary:
    """The voice library, its codes computed on the engine's model worker (callers wait in their own thread)."""
    from higgs_agent.model.prompts import encode_voice
    from higgs_agent.voices.library import VoiceLibrary

    def encode(audio: Any, rate: int) -> Any:  # noqa: ANN401 - float audio in, codes out
        # bounded: a library lookup in a thread must not wait for ever on a stuck worker
        return engine.worker.job(lambda: encode_voice(bundle.processor, audio, rate, "").codes).result(
            engine.limits.job_s)

    return VoiceLibrary(root, encode=encode, presets=presets, codec_id=str(bundle.codec_source))


def bind_listen_socket(host: str, port: int) -> socket.socket:
    """Bind the server's address before anything slow happens, so a port in use is reported in a second,
    not after the model has loaded. uvicorn then serves on this very socket (no window to lose it in)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise ServeError(f"cannot listen on {host!r}: {exc.strerror}; use --host with an address of this "
                         f"machine (127.0.0.1, 0.0.0.0)") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ServeError(f"port {port} on {host} is already in use (another higgs-agent?); use --port to "
                             f"pick another") from None
        raise ServeError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    return sock


class ServeError(RuntimeError):
    """A start-up problem the user can fix (the message says how)."""


def serve_command(args: argparse.Namespace) -> int:
    """`higgs-agent serve`: check the arguments and the port, load the models, serve until interrupted."""
    from higgs_agent.model.errors import ModelLoadError
    from higgs_agent.model.sources import precheck

    try:  # a wrong folder is said at once, before torch and transformers take seconds to import
        precheck(None if args.engine_url else args.model, None if args.engine_url else args.codec, args.reply_model)
    except ModelLoadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    import uvicorn

    from higgs_agent.commands import load_bundle, sampling_settings
    from higgs_agent.transport.app import create_agent_app
    from higgs_agent.transport.phone.cli import phone_settings
    from higgs_agent.transport.webrtc import webrtc_settings
    from higgs_agent.transport.tenants import TenantKeysError, build_authenticator

    problem = check_serve_args(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    try:
        webrtc = webrtc_settings(args)
        phone = phone_settings(args)
        authenticator = build_authenticator(args.api_key, args.api_keys)
        records = records_store(args)
        sock = bind_listen_socket(args.host, args.port)
    except (ServeError, TenantKeysError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    bundle = None if args.engine_url else load_bundle(args, use_text_head=default_responder(args) == "native")
    try:
        services = build_services(args, bundle, sampling_settings(args), records)
    except (ModelLoadError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    app = create_agent_app(services, cors_origins=_origins(args.cors_origins), authenticator=authenticator,
                           webrtc=webrtc, phone=phone)
    for line in phone.lines if phone is not None else []:
        log.info("phone line: set the %s number's voice webhook to POST %s", line.carrier, line.webhook_url)
    log.info("serving on http://%s:%d (web page /, realtime ws://%s:%d/v1/realtime; responders: %s, default %s)",
             args.host, args.port, args.host, args.port, ", ".join(services.responders), services.default_responder)
    # What is loaded by now (torch, transformers, the models) lives as long as the process: frozen out of the
    # cycle collector's reach, so a full pass scans only what sessions make. Unfrozen, one full pass held the
    # event loop for ~290 ms on 2 vCPUs, a gap in every stream it serves.
    gc.collect()
    gc.freeze()
    server = uvicorn.Server(uvicorn_config(app))
    try:
        server.run(sockets=[sock])
    finally:
        asyncio.run(services.aclose())
    # uvicorn re-raises the signal that stopped it, but inside asyncio.run, whose own SIGINT handler turns it
    # into a cancel that can land after the serving task has finished, so Ctrl-C sometimes ended with 0. The
    # shell's 128 + signal, whichever way the race went:
    captured = getattr(server, "_captured_signals", [])
    return 128 + int(captured[-1]) if captured else 0


def uvicorn_config(app: Any, **options: Any) -> Any:  # noqa: ANN401 - an ASGI app, a uvicorn.Config
    """How every server of ours runs uvicorn: our logging, the WebSocket frame limit, WebSockets that can be
    aborted (a client that stops reading is cut off, see transport/uvicorn_ws.py)."""
    import uvicorn

    from higgs_agent.transport.uvicorn_ws import AbortableWebSocketProtocol

    options.setdefault("timeout_graceful_shutdown", SHUTDOWN_GRACE_S)
    return uvicorn.Config(app, log_config=None, ws_max_size=WS_MAX_BYTES, ws=AbortableWebSocketProtocol,
                          lifespan="off", **options)


def _origins(value: str | None) -> list[str]:
    return [origin.strip() for origin in (value or "").split(",") if origin.strip()]


@contextmanager
def serve_app_in_background(app: Any, send_buffer: int | None = None) -> Iterator[str]:  # noqa: ANN401 - ASGI
    """Any ASGI app on 127.0.0.1 (a free port) in a thread of this process, run as `serve` runs it
    (`uvicorn_config`), for tests and benchmarks that need a real socket and also the server's own objects;
    yields its base URL (http://...). `send_buffer` sets the kernel send buffer of every connection
    (SO_SNDBUF, inherited from the listening socket): a slow network path, where a peer that stops reading
    blocks the server after kilobytes, not megabytes."""
    import uvicorn

    sock = bind_listen_socket("127.0.0.1", 0)
    if send_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer)
    server = uvicorn.Server(uvicorn_config(app))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True, name="test-server")
    thread.start()
    deadline = time.monotonic() + 30
    while not (server.started and server.servers):
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the in-process server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@contextmanager
def serve_in_background(services: AgentServices, api_key: str | None = None, send_buffer: int | None = None,
                        **app_options: Any) -> Iterator[str]:
    """The whole agent app (`create_agent_app(services, api_key, **app_options)`) in the background, as
    `serve_app_in_background`."""
    from higgs_agent.transport.app import create_agent_app

    with serve_app_in_background(create_agent_app(services, api_key=api_key, **app_options), send_buffer) as base:
        yield base
