"""`higgs-agent bench translate`: the translation flow's latency per phrase, as the listener gets it.

A real server (this process), espeak-ng speech of several phrases with pauses between them sent at real-time
pace, the real ASR, and as the translator a local OpenAI-compatible server that answers at once with the words
it was given (`higgs_agent.testing.fake_llm`, `echo`: a "translation" as long as its source, so a clause's
speech is as long as the clause): so the figure is this agent's own share — the VAD's decision,
transcription, cloning the speaker's voice, speaking — without any LLM's time. Baseline in the same run: the
engine alone speaking the first phrase (its time to first audio). The phrases are translated whole (comparable
with runs before simultaneous interpreting); `one_long_turn` compares clause by clause with whole.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
from typing import TYPE_CHECKING

import numpy as np

from higgs_agent import SAMPLE_RATE

if TYPE_CHECKING:
    from higgs_agent.translation import Interpretation

PHRASES = ("good morning, I would like a large coffee with milk",
           "and could you also bring me a glass of water please",
           "we are sitting at the table by the window",
           "thank you very much, that is all for now")
TRANSLATION = "Bonjour, je voudrais un grand café au lait."
# One turn of four clauses with no pause the VAD would end it on: simultaneous interpreting vs whole turns.
CLAUSES = ("I arrived at the station early this morning", "then I walked to the old market by the river",
           "and after that I met my sister for lunch near the bridge",
           "because she wanted to show me her new apartment")
CLAUSE_GAP_S = 0.15


def _speech(count: int) -> np.ndarray:
    from higgs_agent.bench.agent import espeak

    pause = np.zeros(SAMPLE_RATE * 9 // 10, dtype=np.float32)  # long enough for the VAD to end the phrase
    parts = []
    for text in (PHRASES * count)[:count]:
        parts += [espeak(text), pause]
    return np.concatenate(parts)


def run_translate_bench(args: argparse.Namespace) -> dict:
    from higgs_agent.agent.responders.echo import EchoResponder
    from higgs_agent.agent.responders.llm import LLMResponder
    from higgs_agent.agent.services import AgentServices
    from higgs_agent.bench.agent import _engine_ttfa_ms
    from higgs_agent.bench.common import describe, load_bench_model, note
    from higgs_agent.model.asr import Transcriber
    from higgs_agent.model.sampling import SamplingSettings
    from higgs_agent.server import serve_in_background
    from higgs_agent.streaming.engine import StreamingEngine
    from higgs_agent.testing.fake_llm import FakeLLM
    from higgs_agent.translation import interpret

    bundle, model = load_bench_model(args)
    transcriber = Transcriber.load(args.asr_model)
    transcriber.warmup()
    with FakeLLM(reply=TRANSLATION, chunk_chars=8) as llm:
        llm.echo = True
        services = AgentServices(engine=StreamingEngine(bundle), transcriber=transcriber,
                                 responders={"echo": EchoResponder(),
                                             "llm": LLMResponder(llm.base_url, model="fake")},
                                 default_responder="echo",
                                 sampling=SamplingSettings(greedy=True, max_frames=args.max_frames))
        with serve_in_background(services) as base:
            url = base.replace("http://", "ws://") + "/v1/realtime"
            note(f"translating {args.phrases} phrases at real-time pace ...")
            # whole phrases, as before simultaneous interpreting: these figures compare with earlier runs
            result = asyncio.run(interpret(url, _speech(args.phrases), SAMPLE_RATE, "fr", "en", simultaneous=False))
            speech, clause_ends = _one_long_turn()
            continuous = {}
            for simultaneous in (True, False):
                note(f"one turn of {len(CLAUSES)} clauses, {'clause by clause' if simultaneous else 'whole'} ...")
                run = asyncio.run(interpret(url, speech, SAMPLE_RATE, "fr", "en", simultaneous=simultaneous))
                continuous["simultaneous" if simultaneous else "whole_turn"] = _lag(run, clause_ends)
    baseline = [asyncio.run(_engine_ttfa_ms(services, PHRASES[0])) for _ in range(3)]
    latencies = [p.latency_ms for p in result.phrases if p.latency_ms is not None]
    stages = {stage: [p.server_latency_ms.get(stage) for p in result.phrases if p.server_latency_ms]
              for stage in ("transcript", "first_text", "first_audio_frame", "first_audio_sent")}
    services.engine.close()
    return {
        "phrases": len(result.phrases),
        "translated": sum(p.status == "completed" for p in result.phrases),
        "phrase_to_first_audio_ms": [round(v, 1) for v in latencies],
        "phrase_to_first_audio_ms_p50": round(statistics.median(latencies), 1) if latencies else None,
        **{f"{stage}_ms_p50": round(statistics.median([v for v in values if v is not None]), 1)
           for stage, values in stages.items() if any(v is not None for v in values)},
        "engine_ttfa_ms_p50": round(statistics.median(baseline), 1),
        "first_phrase_heard_before_speaker_finished": bool(
            len(result.phrases) > 1 and result.phrases[0].first_audio_s is not None
            and result.phrases[-1].phrase_end_s is not None
            and result.phrases[0].first_audio_s < result.phrases[-1].phrase_end_s),
        "one_long_turn": continuous,
        "asr": transcriber.name, **describe(bundle, model),
    }


def _one_long_turn() -> tuple[np.ndarray, list[float]]:
    """The clauses spoken one after another (gaps shorter than the VAD's silence: one turn), and where each
    ends in the recording, in seconds."""
    from higgs_agent.bench.agent import espeak
    from higgs_agent.bench.common import speech_edges_ms

    gap = np.zeros(int(SAMPLE_RATE * CLAUSE_GAP_S), dtype=np.float32)
    parts, ends, at = [gap], [], CLAUSE_GAP_S
    for text in CLAUSES:
        spoken = espeak(text)
        start_ms, end_ms = speech_edges_ms(spoken, SAMPLE_RATE)  # espeak-ng's own silences cut off
        spoken = spoken[SAMPLE_RATE * start_ms // 1000: SAMPLE_RATE * end_ms // 1000]
        parts += [spoken, gap]
        at += len(spoken) / SAMPLE_RATE
        ends.append(at)
        at += CLAUSE_GAP_S
    return np.concatenate(parts), ends


def _lag(run: Interpretation, clause_ends: list[float]) -> dict:
    """How far the translation lags the speaker: for each translation heard, from the end of the last clause it
    covers (placed by counting words) to its first audio, and to its response's start; and how long before (+)
    or after (-) the speaker's last word the first translated audio came."""
    from higgs_agent.bench.common import normalize_text

    bounds = np.cumsum([len(normalize_text(text).split()) for text in CLAUSES])
    lags, handed, said = [], [], 0
    for phrase in run.phrases:
        said += len(normalize_text(phrase.heard).split())
        clause = min(int(np.searchsorted(bounds, max(said, 1))), len(CLAUSES) - 1)
        spoken_at = run.sending_from_s + clause_ends[clause]
        if phrase.first_audio_s is not None:
            lags.append((phrase.first_audio_s - spoken_at) * 1000.0)
        if phrase.created_s is not None:
            handed.append((phrase.created_s - spoken_at) * 1000.0)
    heard = [p.first_audio_s for p in run.phrases if p.first_audio_s is not None]
    speaker_done = run.sending_from_s + clause_ends[-1]
    return {"translations": len(run.phrases), "clauses_translated_early": sum(p.part == "clause" for p in run.phrases),
            "lag_ms": [round(v, 1) for v in lags],
            "lag_ms_p50": round(statistics.median(lags), 1) if lags else None,
            # the clause's end -> its translation's response began (the agreed transcript's delay, and any reply
            # still being made before it)
            "handed_ms": [round(v, 1) for v in handed],
            "first_audio_before_speaker_finished_ms": round((speaker_done - min(heard)) * 1000.0, 1) if heard else None}
