"""The `higgs-agent` command line: make-tiny-model, speak, serve, talk, bench."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Sequence

from higgs_agent.model.loader import DEFAULT_MODEL
from higgs_agent.model.sampling import SamplingSettings
from higgs_agent.server import add_serve_args
from higgs_agent.talk import add_talk_parser

log = logging.getLogger("higgs_agent")


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=DEFAULT_MODEL, help="hub id or local folder (default: %(default)s)")
    parser.add_argument("--codec", default=None, help="codec hub id or folder (default: the model folder's own, "
                        "else bosonai/higgs-audio-v2-tokenizer)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--dtype", default="auto", help="auto (bf16 on CUDA, fp32 on CPU) | bf16 | fp16 | fp32")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: half the cores)")


def _add_sampling_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--greedy", action="store_true", help="argmax decoding (deterministic)")
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--top-k", type=int, default=50)
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--max-frames", type=int, default=1500, help="step budget (25 frames = 1 s)")


def _sampling(args: argparse.Namespace) -> SamplingSettings:
    return SamplingSettings(greedy=args.greedy, temperature=args.temperature, top_k=args.top_k,
                            top_p=args.top_p, max_frames=args.max_frames, seed=args.seed)


def _load_bundle(args: argparse.Namespace, use_text_head: bool = False):  # noqa: ANN202 - HiggsBundle, lazily
    """Load the model named by --model/--codec/--device/--dtype/--threads, or exit 2 with the loader's advice."""
    from higgs_agent.model import ModelLoadError, load_higgs

    try:
        return load_higgs(args.model, codec=args.codec, device=args.device, dtype=args.dtype, threads=args.threads,
                          use_text_head=use_text_head)
    except ModelLoadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="higgs-agent", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    commands = parser.add_subparsers(dest="command", required=True)

    tiny = commands.add_parser("make-tiny-model", help="write a random-weight Higgs model for offline tests")
    tiny.add_argument("dir")
    tiny.add_argument("--size", choices=["tiny", "mini"], default="tiny")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.add_argument("--text-head", action="store_true", help="include a (random) text head, for --responder native")

    speak = commands.add_parser("speak", help="synthesise speech, streaming it out as it is generated")
    speak.add_argument("text")
    speak.add_argument("-o", "--output", required=True, help="WAV file, or - for raw PCM16 24 kHz on stdout")
    speak.add_argument("--voice", help="reference recording to clone")
    speak.add_argument("--voice-text", help="transcript of --voice")
    speak.add_argument("--scene", help="scene description, e.g. 'Audio is recorded from a quiet room.'")
    speak.add_argument("--reference", action="store_true",
                       help="use transformers' generate() and a whole decode instead of the streaming engine")
    _add_model_args(speak)
    _add_sampling_args(speak)

    serve = commands.add_parser("serve", help="run the voice agent server (realtime WebSocket, speech, health, "
                                "metrics)")
    add_serve_args(serve)
    serve.add_argument("--slots", type=int, default=8, help="streams the engine runs at once (default: %(default)s)")
    _add_model_args(serve)
    _add_sampling_args(serve)

    add_talk_parser(commands)

    bench = commands.add_parser("bench", help="benchmarks; each prints its JSON as the last line")
    bench_kinds = bench.add_subparsers(dest="bench", required=True)
    engine = bench_kinds.add_parser("engine", help="step loop vs bare forward, TTFA, exactness, codec streaming")
    engine.add_argument("--model", default=None, help="model folder (default: a mini model made on the fly)")
    engine.add_argument("--device", default="auto")
    engine.add_argument("--dtype", default="auto")
    engine.add_argument("--threads", type=int, default=None, help="CPU threads (default: half the cores)")
    engine.add_argument("--frames", type=int, default=150, help="steps per measured run")
    engine.add_argument("--repeats", type=int, default=3)
    engine.add_argument("--json", action="store_true", help="print only the JSON line")
    batching = bench_kinds.add_parser("batching", help="many streams per model: throughput vs streams, join "
                                      "stall, batched == alone, codec batching")
    batching.add_argument("--model", default=None, help="model folder (default: a mini model made on the fly)")
    batching.add_argument("--device", default="auto")
    batching.add_argument("--dtype", default="auto")
    batching.add_argument("--threads", type=int, default=None, help="CPU threads (default: half the cores)")
    batching.add_argument("--frames", type=int, default=100, help="measured steps per stream count")
    batching.add_argument("--prefill-chunk", type=int, default=None,
                          help="prompt tokens per step while others decode (default: 64 on CPU, 256 on GPU)")
    batching.add_argument("--json", action="store_true", help="print only the JSON line")
    agent = bench_kinds.add_parser("agent", help="turn latency of the whole agent over a real socket vs the engine")
    agent.add_argument("--model", default=None, help="model folder (default: a mini model made on the fly)")
    agent.add_argument("--asr-model", default=None, help="faster-whisper model (default: tiny.en)")
    agent.add_argument("--device", default="auto")
    agent.add_argument("--dtype", default="auto")
    agent.add_argument("--threads", type=int, default=None, help="CPU threads (default: half the cores)")
    agent.add_argument("--turns", type=int, default=5)
    agent.add_argument("--max-frames", type=int, default=200, help="frame budget per phrase")
    agent.add_argument("--json", action="store_true", help="print only the JSON line")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "make-tiny-model":
        from higgs_agent.model.tiny import make_tiny_model

        print(make_tiny_model(args.dir, size=args.size, seed=args.seed, text_head=args.text_head))
        return 0
    if args.command == "speak":
        from higgs_agent.speak import run_speak

        settings = _sampling(args)
        return asyncio.run(run_speak(args, _load_bundle(args), settings))
    if args.command == "serve":
        from higgs_agent.server import check_serve_args, default_responder, run_server

        problem = check_serve_args(args)
        if problem:
            print(f"error: {problem}", file=sys.stderr)
            return 2
        bundle = _load_bundle(args, use_text_head=default_responder(args) == "native")
        return run_server(args, bundle, _sampling(args))
    if args.command == "talk":
        from higgs_agent.talk import run_talk

        return run_talk(args)
    if args.command == "bench" and args.bench == "engine":
        from higgs_agent.bench.engine import run_engine_bench

        print(json.dumps(run_engine_bench(args)))
        return 0
    if args.command == "bench" and args.bench == "batching":
        from higgs_agent.bench.batching import run_batching_bench

        print(json.dumps(run_batching_bench(args)))
        return 0
    if args.command == "bench" and args.bench == "agent":
        from higgs_agent.bench.agent import run_agent_bench

        print(json.dumps(run_agent_bench(args)))
        return 0
    raise AssertionError(args.command)
