"""`higgs-agent bench translate`: the translation flow's latency per phrase, as the listener gets it.

A real server (this process), espeak-ng speech of several phrases with pauses between them sent at real-time
pace, the real ASR, and as the translator a local OpenAI-compatible server that answers at once with a fixed
translation (`higgs_agent.testing.fake_llm`): so the figure is this agent's own share — the VAD's decision,
transcription, cloning the speaker's voice, speaking — without any LLM's time. Baseline in the same run: the
engine alone speaking the same translation in the same voice (its time to first audio).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics

import numpy as np

from higgs_agent import SAMPLE_RATE

PHRASES = ("good morning, I would like a large coffee with milk",
           "and could you also bring me a glass of water please",
           "we are sitting at the table by the window",
           "thank you very much, that is all for now")
TRANSLATION = "Bonjour, je voudrais un grand café au lait."


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
        services = AgentServices(engine=StreamingEngine(bundle), transcriber=transcriber,
                                 responders={"echo": EchoResponder(),
                                             "llm": LLMResponder(llm.base_url, model="fake")},
                                 default_responder="echo",
                                 sampling=SamplingSettings(greedy=True, max_frames=args.max_frames))
        with serve_in_background(services) as base:
            note(f"translating {args.phrases} phrases at real-time pace ...")
            result = asyncio.run(interpret(base.replace("http://", "ws://") + "/v1/realtime",
                                           _speech(args.phrases), SAMPLE_RATE, "fr", "en"))
    baseline = [asyncio.run(_engine_ttfa_ms(services, TRANSLATION)) for _ in range(3)]
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
        "asr": transcriber.name, **describe(bundle, model),
    }
