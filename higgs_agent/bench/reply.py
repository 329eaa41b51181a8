"""`bench reply`: the in-process reply model (`serve --reply-model`) through the `local` responder as a session
uses it: time to first word and words/s of one reply alone, then of N replies asked at the same moment (one
batch on the model's thread). The baseline is the one reply alone, measured in the same run.

Each reply is exactly `--tokens` tokens (the end-of-turn tokens are switched off), so rounds compare equal work.
Words are counted in the text the responder yields; a random-weight model's "words" are whatever its tokens
spell, so `tokens_per_s` is the figure to compare across models (English from a trained model runs at about
0.75 words per token).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from dataclasses import replace
from typing import Any

from higgs_agent.agent.responders.base import ReplyRequest
from higgs_agent.agent.responders.local import LocalResponder
from higgs_agent.bench.common import note
from higgs_agent.model.loader import set_cpu_threads
from higgs_agent.model.reply_model import ReplyGenerator, ReplyModel, Sampling, load_reply_model
from higgs_agent.model.tiny_reply import make_tiny_reply_model

PROMPT = [{"role": "system", "content": "You are a helpful, concise voice assistant."},
          {"role": "user", "content": "Hello. What can you do for me today?"}]


async def _one(responder: LocalResponder) -> dict[str, float]:
    started = time.perf_counter()
    first: list[float] = []
    words = 0
    request = ReplyRequest(messages=list(PROMPT), on_first_text=lambda: first.append(time.perf_counter()))
    phrase_at = None
    async for phrase in responder.reply(request):
        if isinstance(phrase, str):
            phrase_at = phrase_at or time.perf_counter()
            words += len(phrase.split())
    ended = time.perf_counter()
    first_text = first[0] if first else ended
    return {"first_word_ms": (first_text - started) * 1000, "first_phrase_ms": ((phrase_at or ended) - started) * 1000,
            "seconds": ended - started, "words": words}


async def _round(responder: LocalResponder, sessions: int, tokens: int) -> dict[str, Any]:
    started = time.perf_counter()
    replies = await asyncio.gather(*(_one(responder) for _ in range(sessions)))
    wall = time.perf_counter() - started
    per_reply_s = statistics.median(r["seconds"] - r["first_word_ms"] / 1000 for r in replies)
    return {
        "sessions": sessions,
        "first_word_ms": round(statistics.median(r["first_word_ms"] for r in replies), 1),
        "first_word_ms_max": round(max(r["first_word_ms"] for r in replies), 1),
        "first_phrase_ms": round(statistics.median(r["first_phrase_ms"] for r in replies), 1),
        "tokens_per_s_per_reply": round((tokens - 1) / per_reply_s, 1) if per_reply_s > 0 else None,
        "words_per_s_per_reply": round(statistics.median(r["words"] / max(r["seconds"] - r["first_word_ms"] / 1000,
                                                                         1e-9) for r in replies), 1),
        "tokens_per_s_all": round(sessions * tokens / wall, 1),
        "wall_s": round(wall, 2),
    }


def run_reply_bench(args: argparse.Namespace) -> dict[str, Any]:
    threads = set_cpu_threads(args.threads) if args.device in ("cpu", "auto") else None
    with tempfile.TemporaryDirectory() as scratch:
        source = args.reply_model
        if source is None:
            note(f"making a {args.size} reply model in a scratch folder ...")
            source = str(make_tiny_reply_model(scratch, size=args.size, steps=0 if args.size == "small" else None))
        loaded = load_reply_model(source, device=args.device, dtype=args.dtype, progress=note)
    model: ReplyModel = replace(loaded, stop_ids=())  # every reply exactly --tokens long
    generator = ReplyGenerator(model, Sampling(greedy=True), max_batch=max(args.sessions, 1))
    responder = LocalResponder(generator, max_new_tokens=args.tokens, min_chars=24, max_chars=160)

    async def measure() -> list[dict[str, Any]]:
        await _round(responder, 1, args.tokens)  # warm-up: first-call initialisation is not a reply's cost
        rounds = []
        for sessions in (1, args.sessions):
            for _ in range(args.repeats):
                note(f"{sessions} concurrent repl{'y' if sessions == 1 else 'ies'} of {args.tokens} tokens ...")
                rounds.append(await _round(responder, sessions, args.tokens))
        await responder.aclose()
        return rounds

    rounds = asyncio.run(measure())
    alone = [r for r in rounds if r["sessions"] == 1]
    together = [r for r in rounds if r["sessions"] == args.sessions]
    def median(rs: list[dict[str, Any]], key: str) -> float:
        values = [r[key] for r in rs if r[key] is not None]
        return statistics.median(values) if values else None

    result = {
        "bench": "reply",
        "model": source if args.reply_model else {"tiny": "tiny (trained on its script)",
                                                  "small": "small (Qwen2.5-0.5B shape, random weights)"}[args.size],
        "parameters_m": round(model.parameters() / 1e6, 1),
        "device": str(model.device), "dtype": str(model.dtype).removeprefix("torch."), "threads": threads,
        "tokens": args.tokens, "sessions": args.sessions,
        "alone": {key: median(alone, key) for key in alone[0] if key != "sessions"},
        "together": {key: median(together, key) for key in together[0] if key != "sessions"},
        "batch_sizes": sorted(set(generator.batch_sizes)),
        "rounds": rounds,
    }
    result["throughput_gain"] = round(result["together"]["tokens_per_s_all"] / result["alone"]["tokens_per_s_all"],
                                      2)
    note(f"alone: first word {result['alone']['first_word_ms']} ms, {result['alone']['tokens_per_s_per_reply']} "
         f"tokens/s; {args.sessions} at once: first word {result['together']['first_word_ms']} ms, "
         f"{result['together']['tokens_per_s_per_reply']} tokens/s each, x{result['throughput_gain']} in all")
    return result
