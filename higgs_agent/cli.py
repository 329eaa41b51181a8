"""The `higgs-agent` command line: make-tiny-model, make-tiny-reply-model, speak, serve, talk, translate, bench.

Only argparse lives here; each command imports its own machinery when it runs, so `--help` and usage errors
answer at once (torch and transformers take seconds to import).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence

from higgs_agent.defaults import (
    DEFAULT_ASR_MODEL,
    DEFAULT_HOST,
    DEFAULT_MODEL,
    DEFAULT_PORT,
    DEFAULT_REALTIME_URL,
    DEFAULT_SLOTS,
)
from higgs_agent.transport.webrtc import add_webrtc_args  # argparse only: no aiortc at import
from higgs_agent.transport.phone.cli import add_phone_args  # argparse and dataclasses only


def _env(name: str) -> str | None:
    import os

    return os.environ.get(name)


def _add_model_args(parser: argparse.ArgumentParser, default_model: str | None = DEFAULT_MODEL) -> None:
    model_help = ("Higgs Audio v2 model: a hub id or a local folder (default: %(default)s)" if default_model
                  else "model folder (default: a mini random-weight model made on the fly)")
    parser.add_argument("--model", default=default_model, help=model_help)
    parser.add_argument("--codec", default=None,
                        help="codec (audio tokenizer): hub id or folder (default: the model folder's "
                             "audio_tokenizer/, else bosonai/higgs-audio-v2-tokenizer)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present) | cpu | cuda | cuda:N")
    parser.add_argument("--dtype", default="auto", help="auto (bf16 on CUDA, fp32 on CPU) | bf16 | fp16 | fp32")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU intra-op threads (default: half the cores; a decode step is memory-bound)")


def _add_sampling_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, default=None, help="random seed for reproducible sampling")
    parser.add_argument("--greedy", action="store_true", help="argmax decoding (deterministic)")
    parser.add_argument("--temperature", type=float, default=0.7, help="sampling temperature (default: %(default)s)")
    parser.add_argument("--top-k", type=int, default=50, help="sample among the k likeliest codes (default: %(default)s)")
    parser.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling mass (default: %(default)s)")
    parser.add_argument("--max-frames", type=int, default=1500,
                        help="most audio frames per generation; 25 frames = 1 s (default: %(default)s)")


def _add_bench_args(parser: argparse.ArgumentParser) -> None:
    _add_model_args(parser, default_model=None)
    parser.add_argument("--json", action="store_true", help="print only the JSON line (no notes on stderr)")


def _add_reply_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reply-model", default=None, metavar="ID_OR_DIR",
                        help="an instruct LLM to load in this process for the replies (the local responder): a "
                             "hub id such as Qwen/Qwen2.5-1.5B-Instruct or a folder; on the same device as --model")
    parser.add_argument("--reply-max-tokens", type=int, default=256,
                        help="most tokens per reply of the reply model (default: %(default)s)")
    parser.add_argument("--reply-batch", type=int, default=8,
                        help="most replies the reply model writes at once, one batch (default: %(default)s)")


def _add_serve_args(serve: argparse.ArgumentParser) -> None:
    serve.add_argument("--host", default=DEFAULT_HOST, help="address to listen on (default: %(default)s; "
                       "0.0.0.0 for every interface)")
    serve.add_argument("--port", type=int, default=DEFAULT_PORT, help="port to listen on (default: %(default)s)")
    serve.add_argument("--api-key", default=_env("HIGGS_API_KEY"),
                       help="require this key on every endpoint but the page and liveness "
                            "(Authorization: Bearer KEY, ?api_key=KEY, or the openai-insecure-api-key.KEY "
                            "subprotocol); default: $HIGGS_API_KEY")
    serve.add_argument("--cors-origins", default=None,
                       help="comma-separated origins whose pages may call the API from a browser "
                            "(e.g. https://app.example.com, or * for any); default: same origin only")
    serve.add_argument("--asr-model", default=None,
                       help=f"speech recognition: a faster-whisper model name or CTranslate2 folder "
                            f"(default: {DEFAULT_ASR_MODEL}, installed with the package)")
    serve.add_argument("--asr-window", choices=("fitted", "full"), default="fitted",
                       help="Whisper's encoder window: fitted to the turn (4x faster on a CPU, same accuracy: "
                            "bench turns) or faster-whisper's full 30 s (default: %(default)s)")
    serve.add_argument("--responder", choices=["echo", "llm", "local", "native"], default=None,
                       help="who writes the replies: echo (says back what it heard), llm (an OpenAI-compatible "
                            "chat endpoint), local (the --reply-model in this process), native (the Higgs "
                            "model's own text head; needs a checkpoint with it); default: local when "
                            "--reply-model is given, else llm when --llm-url is given, else echo")
    _add_reply_model_args(serve)
    serve.add_argument("--llm-url", default=None,
                       help="OpenAI-compatible API base including /v1, e.g. http://127.0.0.1:8080/v1 "
                            "(llama.cpp, vLLM, Ollama)")
    serve.add_argument("--llm-model", default=None, help="model name to ask the LLM endpoint for")
    serve.add_argument("--llm-api-key", default=_env("HIGGS_LLM_API_KEY"),
                       help="key for the LLM endpoint (default: $HIGGS_LLM_API_KEY, else none)")
    serve.add_argument("--voice", default=None, help="recording of the voice the agent speaks in (cloned)")
    serve.add_argument("--voice-text", default=None, help="transcript of --voice")
    serve.add_argument("--voices-dir", default=_env("HIGGS_VOICES_DIR") or "voices",
                       help="where uploaded voices are kept (POST /v1/voices) (default: $HIGGS_VOICES_DIR or "
                            "./voices)")
    serve.add_argument("--voice-presets", default=None,
                       help="a folder of preset voices any key may use: NAME.wav + NAME.txt (its transcript)")
    serve.add_argument("--api-keys", default=_env("HIGGS_API_KEYS"),
                       help="a keys file, one 'tenant: key' per line: each tenant has its own voices "
                            "(default: $HIGGS_API_KEYS; with --api-key too, that key is the tenant 'default')")
    serve.add_argument("--slots", type=int, default=DEFAULT_SLOTS,
                       help="speech generations the engine runs at once (default: %(default)s)")
    serve.add_argument("--engine-url", action="append", default=[], metavar="URL",
                       help="speak replies through a remote speech engine instead of a model in this process "
                            "(repeatable: the least-loaded one that is up speaks each reply): our own serve "
                            "(http://host:8000) or vLLM-Omni serving Higgs Audio v2; --model is then not loaded")
    serve.add_argument("--engine-kind", choices=("higgs", "vllm-omni"), default="higgs",
                       help="what the --engine-url servers are: higgs (higgs-agent serve: reports its slots) or "
                            "vllm-omni (default: %(default)s)")
    serve.add_argument("--engine-model", default=None,
                       help="the model name to ask the remote engines for (vLLM-Omni: its served model name)")
    serve.add_argument("--engine-api-key", default=_env("HIGGS_ENGINE_API_KEY"),
                       help="key for the remote engines (default: $HIGGS_ENGINE_API_KEY, else none)")
    serve.add_argument("--engine-health-interval", type=float, default=2.0, metavar="SECONDS",
                       help="how often each remote engine's /health is asked (default: %(default)s)")
    serve.add_argument("--mcp-server", action="append", default=[], metavar="LABEL=URL|LABEL=stdio:CMD|JSON",
                       help="an MCP server whose tools every session's replies may call, run by this server "
                            "(repeatable): LABEL=http://host/mcp, 'LABEL=stdio:command args', or a JSON mcp tool")
    serve.add_argument("--allow-client-mcp", action="store_true",
                       help="let clients name MCP servers (session.tools type mcp) for this server to connect to; "
                            "off by default, since it makes the server open connections where a client says")
    serve.add_argument("--mcp-call-timeout", type=float, default=20.0,
                       help="seconds an MCP tool call may take before it fails (default: %(default)s)")
    serve.add_argument("--records-url", default=_env("HIGGS_RECORDS_URL"), metavar="URL|FILE",
                       help="keep every session on record (items, latencies; read back at GET /v1/sessions): a "
                            "SQLite file (records.db, sqlite:///records.db) or postgresql://user:pass@host/db "
                            "(default: $HIGGS_RECORDS_URL, else nothing is kept)")
    serve.add_argument("--records-days", type=float, default=None, metavar="N",
                       help="delete sessions on record older than N days, at start and every hour (default: keep)")
    serve.add_argument("--records-audio", action="store_true",
                       help="keep both sides' audio on record too, in the same database (GET /v1/sessions/ID/audio); "
                            "off by default even with --records-url: a voice is personal data")
    serve.add_argument("--otlp-endpoint", default=None, metavar="URL",
                       help="export each answered turn as an OpenTelemetry trace over OTLP/HTTP to this collector "
                            "(http://collector:4318; /v1/traces is added) (default: $OTEL_EXPORTER_OTLP_ENDPOINT, "
                            "else no traces)")
    serve.add_argument("--no-understanding", action="store_true",
                       help="skip the per-turn caller analysis (speaker id, prosody and emotion state) that steers "
                            "what the agent says and how it sounds")
    serve.add_argument("--speaker-model", default=None,
                       help="speaker embeddings: a transformers x-vector hub id or folder (default: Resemblyzer's "
                            "GE2E encoder, installed with the package)")
    serve.add_argument("--speaker-threshold", type=float, default=None,
                       help="cosine similarity above which a turn is a known speaker (default: the model's, "
                            "0.65 for Resemblyzer)")
    serve.add_argument("--emotion-model", default=None,
                       help="a speech-emotion audio-classification model (hub id or folder) reported beside the "
                            "prosody state (default: none)")
    add_webrtc_args(serve)
    add_phone_args(serve)
    serve.add_argument("--noise-reduction", choices=("off", "near_field", "far_field"), default="off",
                       help="suppress noise in every session's incoming audio before VAD and ASR (RNNoise), until "
                            "a session sets audio.input.noise_reduction itself (default: %(default)s)")
    serve.add_argument("--extension-events", action="store_true",
                       help="send our higgs.* events (turn latency, caller context) to every session; by "
                            "default a session opts in with session.update {higgs: {extension_events: true}}")


def _add_talk_args(talk: argparse.ArgumentParser) -> None:
    talk.add_argument("--url", default=DEFAULT_REALTIME_URL, help="Realtime WebSocket URL (default: %(default)s)")
    talk.add_argument("--wav", help="what to say (any audio file soundfile reads); default: the microphone")
    talk.add_argument("-o", "--output", help="write the spoken reply here (WAV, 24 kHz)")
    talk.add_argument("--api-key", default=_env("HIGGS_API_KEY"),
                      help="sent as 'Authorization: Bearer KEY' (default: $HIGGS_API_KEY)")
    talk.add_argument("--manual", action="store_true",
                      help="turn detection off: commit the audio and ask for a response by hand")
    talk.add_argument("--fast", action="store_true", help="send the WAV as fast as possible, not in real time")
    talk.add_argument("--instructions", help="session instructions (the system prompt) for this session")
    talk.add_argument("--timeout", type=float, default=60.0,
                      help="seconds to wait for the whole reply (default: %(default)s)")
    talk.add_argument("--events", action="store_true", help="print each server event type to stderr")
    talk.add_argument("--no-extensions", action="store_true",
                      help="do not ask for higgs.* events (for servers that refuse unknown session fields)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="higgs-agent", description="A streaming real-time voice agent on "
                                     "Boson AI's Higgs Audio v2.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    tiny = commands.add_parser("make-tiny-model", help="write a random-weight Higgs model for offline use",
                               description="Write a Higgs Audio v2 model of the real architecture with random "
                                           "weights (it babbles): for tests and offline trials.")
    tiny.add_argument("dir", help="folder to write (model, codec in audio_tokenizer/, tokenizer)")
    tiny.add_argument("--size", choices=["tiny", "mini"], default="tiny",
                      help="tiny: 9 M parameters, for tests; mini: 131 M, for CPU benchmarks (default: %(default)s)")
    tiny.add_argument("--seed", type=int, default=0, help="weight seed; same seed, same bytes (default: %(default)s)")
    tiny.add_argument("--text-head", action="store_true", help="include a (random) text head, for --responder native")
    tiny_reply = commands.add_parser(
        "make-tiny-reply-model", help="write a tiny instruct LLM for offline tests of --reply-model",
        description="Write a tiny Llama with a ChatML tool-calling chat template, trained for a few seconds on "
                    "CPU to call get_weather when asked about the weather in Paris and to answer from its output "
                    "(it babbles elsewhere); --size small: Qwen2.5-0.5B's shape, random weights, for speed figures.")
    tiny_reply.add_argument("dir", help="folder to write (model, tokenizer, chat template)")
    tiny_reply.add_argument("--size", choices=["tiny", "small"], default="tiny",
                            help="tiny: 0.14 M parameters, trained; small: 494 M, random (default: %(default)s)")
    tiny_reply.add_argument("--seed", type=int, default=0, help="weight seed (default: %(default)s)")

    speak = commands.add_parser("speak", help="synthesise speech, streaming it out as it is generated",
                                description="Speak TEXT, writing audio as it is generated; prints the time to "
                                            "first audio and the real-time factor.")
    speak.add_argument("text", help="what to say; [SPEAKER0]/[SPEAKER1] tags for several speakers")
    speak.add_argument("-o", "--output", required=True, help="WAV file, or - for raw PCM16 24 kHz on stdout")
    speak.add_argument("--voice", action="append", default=[],
                       help="the voice: a recording to clone (with --voice-text), or a voice id or name from "
                            "--voices-dir / --voice-presets; repeat for [SPEAKER0], [SPEAKER1], ... in the text")
    speak.add_argument("--voice-text", action="append", default=[],
                       help="transcript of each --voice recording, in the same order")
    speak.add_argument("--voices-dir", default=None, help="a voice library folder (as serve --voices-dir)")
    speak.add_argument("--voice-presets", default=None, help="a folder of preset voices: NAME.wav + NAME.txt")
    speak.add_argument("--tenant", default="default", help="whose library voices --voice names (default: %(default)s)")
    speak.add_argument("--scene", help="scene description, e.g. 'Audio is recorded from a quiet room.'")
    speak.add_argument("--reference", action="store_true",
                       help="use transformers' generate() and a whole decode instead of the streaming engine")
    _add_model_args(speak)
    _add_sampling_args(speak)

    serve = commands.add_parser("serve", help="run the voice agent server",
                                description="Serve the voice agent: the Realtime WebSocket, the web page, "
                                            "streamed speech, health and metrics, on one port.")
    _add_serve_args(serve)
    _add_model_args(serve)
    _add_sampling_args(serve)

    talk = commands.add_parser("talk", help="speak one turn to a Realtime server and save the reply",
                               description="Stream a WAV (at real-time pace, like a microphone) or the "
                                           "microphone to a Realtime server, print the transcripts and "
                                           "latencies, and save the spoken reply.")
    _add_talk_args(talk)

    translate = commands.add_parser("translate", help="translate a recording phrase by phrase, in the speaker's voice",
                                    description="Speak a recording back in another language, phrase by phrase, "
                                                "in the speaker's own cloned voice: the agent's translation mode "
                                                "on a server in this process.")
    translate.add_argument("--wav", required=True, help="the recording (any audio file soundfile reads)")
    translate.add_argument("--to", required=True, help="the language to speak, as an ISO 639-1 code (fr, de, en)")
    translate.add_argument("--from", dest="source", default=None, help="the recording's language, if known")
    translate.add_argument("-o", "--output", required=True, help="write the translation here (WAV, 24 kHz)")
    translate.add_argument("--llm-url", default=None, help="OpenAI-compatible API base that translates (with /v1)")
    translate.add_argument("--llm-model", default=None, help="model name to ask the LLM endpoint for")
    translate.add_argument("--llm-api-key", default=_env("HIGGS_LLM_API_KEY"), help="key for the LLM endpoint")
    _add_reply_model_args(translate)
    translate.add_argument("--asr-model", default=None, help=f"speech recognition (default: {DEFAULT_ASR_MODEL})")
    translate.add_argument("--fast", action="store_true", help="send the recording as fast as possible")
    translate.add_argument("--whole-turns", action="store_true",
                           help="translate each turn once it ends, not clause by clause while it is spoken")
    _add_model_args(translate)
    _add_sampling_args(translate)

    bench = commands.add_parser("bench", help="benchmarks; each prints its JSON as the last line",
                                description="Benchmarks that measure their own baseline in the same run and "
                                            "print their figures as JSON on the last line.")
    kinds = bench.add_subparsers(dest="bench", required=True, metavar="BENCHMARK")
    engine = kinds.add_parser("engine", help="step loop vs bare forward, TTFA, exactness, codec streaming")
    _add_bench_args(engine)
    engine.add_argument("--frames", type=int, default=150, help="steps per measured run (default: %(default)s)")
    engine.add_argument("--repeats", type=int, default=3, help="measured runs (default: %(default)s)")
    batching = kinds.add_parser("batching", help="many streams per model: throughput, join stall, batched == alone")
    _add_bench_args(batching)
    batching.add_argument("--frames", type=int, default=100,
                          help="measured steps per stream count (default: %(default)s)")
    batching.add_argument("--prefill-chunk", type=int, default=None,
                          help="prompt tokens per step while others decode (default: 64 on CPU, 256 on GPU)")
    agent = kinds.add_parser("agent", help="turn latency of the whole agent over a real socket vs the engine")
    _add_bench_args(agent)
    agent.add_argument("--asr-model", default=None, help=f"faster-whisper model (default: {DEFAULT_ASR_MODEL})")
    agent.add_argument("--turns", type=int, default=5, help="turns per session (default: %(default)s)")
    agent.add_argument("--max-frames", type=int, default=200, help="frame budget per phrase (default: %(default)s)")
    agent.add_argument("--last-word", action="store_true",
                       help="also send the speech at real-time pace, ending at its last word, and compare how the "
                            "turn's end is found: the client committing at once (baseline), server_vad, semantic_vad")
    agent.add_argument("--understanding", action="store_true",
                       help="also run the turns with the caller analysis on, and report what it adds to the "
                            "first audio byte")
    agent.add_argument("--remote-engines", type=int, default=0, metavar="N",
                       help="also run the turns with reply speech from N `serve` engine processes on this machine "
                            "(serve --engine-url) and report the hop it adds")
    agent.add_argument("--records", action="store_true",
                       help="also run the turns with every session on record (a SQLite file), and with both sides' "
                            "audio on record too, and report what each adds")
    agent.add_argument("--traces", action="store_true",
                       help="also run the turns with each one traced (OTLP/HTTP to a receiver in the process) and "
                            "report what it adds, and the tracer's cost on the event loop per turn")
    agent.add_argument("--sessions", type=int, default=1,
                       help="N > 1: rounds of 1 and N callers ending their turns at the same moment; reports "
                            "time to first audio, playback underruns and event-loop lag (default: %(default)s)")
    translate_bench = kinds.add_parser("translate", help="speech translation: each phrase's end to its first "
                                       "translated audio")
    _add_bench_args(translate_bench)
    translate_bench.add_argument("--phrases", type=int, default=4, help="phrases spoken (default: %(default)s)")
    translate_bench.add_argument("--asr-model", default=None, help=f"faster-whisper model (default: {DEFAULT_ASR_MODEL})")
    translate_bench.add_argument("--max-frames", type=int, default=200, help="frame budget per phrase (default: %(default)s)")
    phone = kinds.add_parser("phone", help="phone-call turn latency (simulated Twilio) vs the same turn over "
                             "WebSocket")
    _add_bench_args(phone)
    phone.add_argument("--asr-model", default=None, help=f"faster-whisper model (default: {DEFAULT_ASR_MODEL})")
    phone.add_argument("--turns", type=int, default=5,
                       help="calls (and WebSocket sessions) of one turn each (default: %(default)s)")
    phone.add_argument("--max-frames", type=int, default=100, help="frame budget per phrase (default: %(default)s)")
    soak = kinds.add_parser("soak", help="sessions talking (and misbehaving) in parallel for minutes against one "
                            "serve process: turns, errors, server memory")
    _add_bench_args(soak)
    soak.add_argument("--sessions", type=int, default=4, help="sessions in parallel (default: %(default)s)")
    soak.add_argument("--minutes", type=float, default=3.0, help="how long (default: %(default)s)")
    soak.add_argument("--max-frames", type=int, default=100, help="frame budget per phrase (default: %(default)s)")
    soak.add_argument("--turns", type=int, default=None,
                      help="each session stops after this many turns instead of at --minutes (a fixed workload: "
                           "every 4th turn follows a malformed event, every 5th is talked over, every 6th hangs up)")
    soak.add_argument("--preload", default=None, metavar="LIB",
                      help="LD_PRELOAD for the server, e.g. /usr/lib/x86_64-linux-gnu/libjemalloc.so.2 to compare "
                           "allocators (default: none, glibc's malloc)")
    soak.add_argument("--server-log", default=None, metavar="PATH",
                      help="keep the server's log there (default: thrown away with the scratch folder)")
    startup = kinds.add_parser("startup", help="a new serve: a wrong folder's error, health, the first spoken "
                               "turn's reply, against importing torch + transformers alone")
    _add_bench_args(startup)
    startup.add_argument("--runs", type=int, default=3, help="starts to take the median of (default: %(default)s)")
    captions = kinds.add_parser("captions", help="transcription sessions (live captions): CPU seconds per audio "
                                "second (VAD + Whisper) and transcript latency, for 1 and N sessions at once")
    captions.add_argument("--sessions", default="1,4",
                          help="concurrent sessions of each run, comma-separated (default: %(default)s)")
    captions.add_argument("--asr-model", default=None, help="faster-whisper model (default: Whisper tiny.en)")
    captions.add_argument("--phrases", type=int, default=8, help="phrases each session hears, 1 to 8, about 5 s "
                          "each (default: %(default)s)")
    captions.add_argument("--without-asr", action="store_true", help="Whisper replaced by a stub that answers at "
                          "once: what everything else costs (VAD, resampling, the codec, the session)")
    captions.add_argument("--json", action="store_true", help="print only the JSON line")
    reply = kinds.add_parser("reply", help="the in-process reply model (--reply-model): time to first word and "
                             "words/s of one reply alone and of N at once (batched)")
    reply.add_argument("--reply-model", default=None, metavar="ID_OR_DIR",
                       help="the model to measure (default: one made on the fly, see --size)")
    reply.add_argument("--size", choices=["tiny", "small"], default="tiny",
                       help="the model made when --reply-model is not given: tiny (0.14 M) or small (Qwen2.5-0.5B's "
                            "shape, random weights) (default: %(default)s)")
    reply.add_argument("--sessions", type=int, default=4,
                       help="replies asked at the same moment (default: %(default)s)")
    reply.add_argument("--tokens", type=int, default=64, help="tokens per reply (default: %(default)s)")
    reply.add_argument("--repeats", type=int, default=3, help="rounds per case, median taken (default: %(default)s)")
    reply.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default: %(default)s)")
    reply.add_argument("--dtype", default="auto", help="auto (bf16 on CUDA, fp32 on CPU) | bf16 | fp16 | fp32")
    reply.add_argument("--threads", type=int, default=None, help="CPU threads (default: half the cores)")
    reply.add_argument("--json", action="store_true", help="print only the JSON line")
    turns = kinds.add_parser("turns", help="end of turn and transcripts: Whisper's fitted vs full window (speed, "
                             "WER), the semantic_vad judge's accuracy and verdict time")
    turns.add_argument("--asr-model", default=None, help=f"faster-whisper model (default: {DEFAULT_ASR_MODEL})")
    turns.add_argument("--voices", type=int, default=3, choices=(1, 2, 3),
                       help="espeak-ng voices per sentence (default: %(default)s)")
    turns.add_argument("--language", action="append", choices=("fr", "es", "de"),
                       help="also measure ASR on this language (needs a multilingual --asr-model); repeatable")
    turns.add_argument("--json", action="store_true", help="print only the JSON line")
    noise = kinds.add_parser("noise", help="noise suppression on and off: WER, missed turn ends, false barge-ins "
                             "in white noise, babble and hum at 0/5/10 dB SNR; its CPU per session")
    noise.add_argument("--asr-model", default=None, help=f"faster-whisper model (default: {DEFAULT_ASR_MODEL})")
    noise.add_argument("--sentences", type=int, default=4, help="espeak-ng sentences per condition (default: "
                       "%(default)s, at most 8)")
    noise.add_argument("--cpu-seconds", type=float, default=20.0,
                       help="audio the suppressor's CPU cost is measured on, 3 times (default: %(default)s)")
    noise.add_argument("--json", action="store_true", help="print only the JSON line")
    understanding = kinds.add_parser("understanding", help="caller analysis per turn next to transcription")
    understanding.add_argument("--turns", type=int, default=10, help="espeak-ng turns (default: %(default)s)")
    understanding.add_argument("--asr-model", default=None, help=f"faster-whisper model (default: {DEFAULT_ASR_MODEL})")
    understanding.add_argument("--threads", type=int, default=None, help="CPU threads (default: 1)")
    understanding.add_argument("--speaker-model", default=None, help="x-vector model (default: Resemblyzer)")
    understanding.add_argument("--emotion-model", default=None, help="audio-classification model (default: none)")
    understanding.add_argument("--speech-corpus", default=None,
                               help="a LibriSpeech-layout folder: calibrate the speaker threshold and state rules")
    understanding.add_argument("--json", action="store_true", help="print only the JSON line")
    return parser


def _run_tiny(args: argparse.Namespace) -> int:
    from higgs_agent.model.tiny import make_tiny_model

    print(make_tiny_model(args.dir, size=args.size, seed=args.seed, text_head=args.text_head))
    return 0


def _run_tiny_reply(args: argparse.Namespace) -> int:
    from higgs_agent.model.tiny_reply import make_tiny_reply_model

    print(make_tiny_reply_model(args.dir, size=args.size, seed=args.seed))
    return 0


def _run_speak(args: argparse.Namespace) -> int:
    import asyncio

    from higgs_agent.commands import load_bundle, sampling_settings
    from higgs_agent.speak import run_speak

    return asyncio.run(run_speak(args, load_bundle(args), sampling_settings(args)))


def _run_serve(args: argparse.Namespace) -> int:
    from higgs_agent.server import serve_command

    return serve_command(args)


def _run_talk(args: argparse.Namespace) -> int:
    from higgs_agent.talk import run_talk

    return run_talk(args)


def _run_translate(args: argparse.Namespace) -> int:
    from higgs_agent.translation import translate_command

    return translate_command(args)


def _run_bench(args: argparse.Namespace) -> int:
    if args.bench == "engine":
        from higgs_agent.bench.engine import run_engine_bench as run
    elif args.bench == "batching":
        from higgs_agent.bench.batching import run_batching_bench as run
    elif args.bench == "translate":
        from higgs_agent.bench.translate import run_translate_bench as run
    elif args.bench == "understanding":
        from higgs_agent.bench.understanding import run_understanding_bench as run
    elif args.bench == "turns":
        from higgs_agent.bench.turns import run_turns_bench as run
    elif args.bench == "noise":
        from higgs_agent.bench.noise import run_noise_bench as run
    elif args.bench == "phone":
        from higgs_agent.bench.phone import run_phone_bench as run
    elif args.bench == "soak":
        from higgs_agent.bench.soak import run_soak_bench as run
    elif args.bench == "startup":
        from higgs_agent.bench.startup import run_startup_bench as run
    elif args.bench == "captions":
        from higgs_agent.bench.captions import run_captions_bench as run
    elif args.bench == "reply":
        from higgs_agent.bench.reply import run_reply_bench as run
    else:
        from higgs_agent.bench.agent import run_agent_bench as run
    print(json.dumps(run(args)))
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "make-tiny-model": _run_tiny, "make-tiny-reply-model": _run_tiny_reply, "speak": _run_speak, "serve": _run_serve,
    "talk": _run_talk, "bench": _run_bench,
    "translate": _run_translate,
}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Like `parse_args`, but an unknown option is reported with the usage of the command it was given to
    (argparse would print the top-level usage, which does not show the command's options)."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        command = parser
        for name in (getattr(args, "command", None), getattr(args, "bench", None)):
            subparsers = next((a for a in command._actions if isinstance(a, argparse._SubParsersAction)), None)
            if name is None or subparsers is None:
                break
            command = subparsers.choices[name]
        command.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from higgs_agent.logs import configure_logging
    from higgs_agent.native import bound_native_caches

    bound_native_caches()  # before any command imports torch

    # Benchmarks asked for --json and speech piped to stdout keep stderr to warnings.
    configure_logging(args.verbose, quiet=getattr(args, "json", False))
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
