"""Speech translation as a client sees it: speak in one language, hear each phrase back in another, in your own
voice, while you go on speaking.

`interpret()` streams a recording to a Realtime server in translation mode (`session.higgs.translation`) and
collects every translated phrase: the words heard, the translation, its audio, and its latency (from the end
of the phrase to the first byte of its translation). `higgs-agent translate --wav in.wav --to fr -o out.wav`
runs it against a server started in the same process; `bench translate` times it.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from higgs_agent import SAMPLE_RATE
from higgs_agent.audio import float_to_pcm16, pcm16_to_float, resample
from higgs_agent.client import RealtimeClient, RealtimeConnectionError

CHUNK_MS = 20
QUIET_TAIL_S = 1.5  # after the recording: the server's VAD hears the last phrase end


@dataclass
class TranslatedPhrase:
    """One translation the listener hears: of a whole phrase, or (simultaneous interpreting) of a clause the
    speaker closed while going on, or of what a phrase added after its clauses."""

    heard: str = ""  # the words translated, as transcribed
    translation: str = ""
    audio: list[np.ndarray] = field(default_factory=list)  # float32 24 kHz
    phrase_end_s: float | None = None  # when the speaker stopped (client clock, from the start of sending)
    first_audio_s: float | None = None
    server_latency_ms: dict[str, float | None] = field(default_factory=dict)
    status: str | None = None
    item_id: str | None = None  # the speaker's turn it translates
    part: str = "turn"  # turn | clause (spoken while the speaker went on) | rest (the turn's words after its clauses)
    created_s: float | None = None  # when its response started

    @property
    def latency_ms(self) -> float | None:
        """End of the phrase to the first byte of its translation, as the listener receives it (a clause's own
        end is not on the wire: None; `bench translate` knows it from the audio it sent)."""
        if self.phrase_end_s is None or self.first_audio_s is None:
            return None
        return (self.first_audio_s - self.phrase_end_s) * 1000.0


@dataclass
class _Turn:
    end_s: float | None = None
    heard: str | None = None  # its final transcript, once out
    answered: bool = False  # its whole-turn (or rest) translation is done


@dataclass
class Interpretation:
    phrases: list[TranslatedPhrase]
    sent_s: float  # how long the recording took to send
    turn_ends_s: dict[str, float] = field(default_factory=dict)  # when each turn of the speaker's ended
    sending_from_s: float = 0.0  # when the recording's first sample went (the clock of every `_s` here)

    @property
    def audio(self) -> np.ndarray:
        chunks = [chunk for phrase in self.phrases for chunk in phrase.audio]
        return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)


async def interpret(url: str, audio: np.ndarray, rate: int, to: str, source: str | None = None, *,
                    api_key: str | None = None, realtime_pace: bool = True, silence_ms: int = 500,
                    timeout_s: float = 300.0, on_phrase: Callable[[TranslatedPhrase], None] | None = None,
                    simultaneous: bool = True) -> Interpretation:
    """Translate a recording phrase by phrase; returns every phrase once all of them were spoken.
    `simultaneous`: the server translates each clause while the speaker goes on (else each whole turn)."""
    wave = resample(np.asarray(audio, dtype=np.float32), rate, SAMPLE_RATE)
    wave = np.concatenate([wave, np.zeros(int(QUIET_TAIL_S * SAMPLE_RATE), dtype=np.float32)])
    phrases: list[TranslatedPhrase] = []  # in the order the listener hears them
    turn_ends: dict[str, float] = {}
    started = time.perf_counter()
    async with asyncio.timeout(timeout_s), await RealtimeClient.connect(url, api_key) as client:
        await client.update_session(
            higgs={"translation": {"to": to, **({"from": source} if source else {}), "simultaneous": simultaneous},
                   "extension_events": True},
            audio={"input": {"turn_detection": {"type": "server_vad", "silence_duration_ms": silence_ms}}})
        await client.wait_for("session.updated")
        sending_from = time.perf_counter() - started
        sender = asyncio.create_task(_send(client, wave, realtime_pace))
        try:
            await _read(client, sender, phrases, turn_ends, started, on_phrase)
        finally:
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
    return Interpretation([p for p in phrases if p.heard.strip() or p.audio], len(wave) / SAMPLE_RATE, turn_ends,
                          sending_from)


async def _send(client: RealtimeClient, wave: np.ndarray, realtime_pace: bool) -> float:
    step = SAMPLE_RATE * CHUNK_MS // 1000
    begin = time.perf_counter()
    for index, start in enumerate(range(0, len(wave), step)):
        if realtime_pace:
            await asyncio.sleep(max(0.0, begin + index * CHUNK_MS / 1000 - time.perf_counter()))
        await client.append_audio(float_to_pcm16(wave[start:start + step]))
    # A barrier: the server handles a connection's messages in order, so its answer to this empty update comes
    # after every phrase of the recording was heard (their speech_stopped events before it).
    await client.update_session()
    return time.perf_counter() - begin


async def _read(client: RealtimeClient, sender: asyncio.Task, phrases: list[TranslatedPhrase],
                turn_ends: dict[str, float], started: float, on_phrase: Callable[[TranslatedPhrase], None] | None,
                ) -> None:
    """Until the recording is sent and every phrase heard has its translation done. A response names the turn
    it translates in its metadata (`source_item_id`, `source_part`); a server that does not is paired by order."""
    turns: dict[str, _Turn] = {}
    waiting: list[str] = []  # turns heard whose whole translation has not started
    by_response: dict[str, TranslatedPhrase] = {}
    open_responses = 0
    heard_all = False  # the server answered the barrier sent after the recording

    def over() -> bool:
        return heard_all and open_responses == 0 and all(
            turn.answered or (turn.heard is not None and not turn.heard.strip()) for turn in turns.values())

    while True:
        try:  # a short wait, so the end is noticed also when nothing more comes
            event = await asyncio.wait_for(client.recv(), 0.25)
        except TimeoutError:
            if over():
                return
            continue
        if event is None:
            raise RealtimeConnectionError(f"{client.url}: the server closed the connection ({client.closed_reason})")
        kind, now = event["type"], time.perf_counter() - started
        if kind == "session.updated" and sender.done():
            heard_all = True
        if kind == "input_audio_buffer.speech_stopped":
            turns.setdefault(event["item_id"], _Turn()).end_s = turn_ends[event["item_id"]] = now
            waiting.append(event["item_id"])
        elif kind == "conversation.item.input_audio_transcription.completed":
            turns.setdefault(event["item_id"], _Turn()).heard = event["transcript"]
        elif kind == "response.created":
            open_responses += 1
            phrase = _phrase_of(event["response"].get("metadata") or {}, waiting)
            phrase.created_s = now
            if phrase.item_id is not None and phrase.part != "clause":
                turn = turns.setdefault(phrase.item_id, _Turn())
                phrase.phrase_end_s = turn.end_s
                if phrase.part == "turn" and not phrase.heard:  # a server that does not name the words
                    phrase.heard = turn.heard or ""
            by_response[event["response"]["id"]] = phrase
            phrases.append(phrase)
        elif kind == "response.output_audio.delta" and event["response_id"] in by_response:
            phrase = by_response[event["response_id"]]
            phrase.first_audio_s = phrase.first_audio_s or now
            phrase.audio.append(pcm16_to_float(base64.b64decode(event["delta"])))
        elif kind == "response.output_audio_transcript.delta" and event["response_id"] in by_response:
            by_response[event["response_id"]].translation += event["delta"]
        elif kind == "higgs.turn.latency" and event["response_id"] in by_response:
            by_response[event["response_id"]].server_latency_ms = event["latency_ms"]
        elif kind == "response.done":
            open_responses -= 1
            phrase = by_response.get(event["response"]["id"])
            if phrase is not None:
                phrase.status = event["response"]["status"]
                if phrase.item_id is not None and phrase.part != "clause":
                    turns.setdefault(phrase.item_id, _Turn()).answered = True
                if on_phrase is not None and phrase.heard.strip():
                    on_phrase(phrase)
        if over():
            return


def _phrase_of(metadata: dict[str, Any], waiting: list[str]) -> TranslatedPhrase:
    item_id = metadata.get("source_item_id")
    if item_id is None:  # a server that does not say: the oldest turn still waiting
        item_id = waiting.pop(0) if waiting else None
        return TranslatedPhrase(item_id=item_id)
    part = metadata.get("source_part", "turn")
    if part != "clause" and item_id in waiting:
        waiting.remove(item_id)
    return TranslatedPhrase(heard=metadata.get("source_text", ""), item_id=item_id, part=part)


def describe(phrase: TranslatedPhrase) -> str:
    latency = "-" if phrase.latency_ms is None else f"{phrase.latency_ms:.0f} ms"
    return f"{phrase.heard!r} -> {phrase.translation.strip()!r} (first audio {latency} after the phrase ended)"


def summary(result: Interpretation) -> dict[str, Any]:
    latencies = [p.latency_ms for p in result.phrases if p.latency_ms is not None]
    return {"phrases": len(result.phrases), "translated": sum(p.status == "completed" for p in result.phrases),
            "latency_ms": [round(v, 1) for v in latencies],
            "latency_ms_p50": round(float(np.median(latencies)), 1) if latencies else None}


def translate_command(args: Any) -> int:  # noqa: ANN401 - argparse.Namespace
    """`higgs-agent translate --wav IN --to LANG -o OUT`: the agent in translation mode, in this process."""
    import os
    import sys

    from higgs_agent.agent.responders.echo import EchoResponder
    from higgs_agent.agent.services import AgentServices
    from higgs_agent.audio import read_wav, write_wav
    from higgs_agent.commands import load_bundle, sampling_settings
    from higgs_agent.model.asr import Transcriber
    from higgs_agent.server import serve_in_background
    from higgs_agent.streaming.engine import StreamingEngine

    if not os.path.isfile(args.wav):
        print(f"error: {args.wav} does not exist (or is not a file)", file=sys.stderr)
        return 2
    has_llm = bool(args.llm_url or args.reply_model)
    if not has_llm and args.to != "en":
        print("error: translating into anything but English needs an LLM: --llm-url URL --llm-model NAME "
              "(any OpenAI-compatible server: llama.cpp, vLLM, Ollama), or --reply-model ID_OR_DIR (in this "
              "process)", file=sys.stderr)
        return 2
    transcriber = Transcriber.load(args.asr_model)
    if not has_llm and transcriber.english_only:
        print(f"error: {transcriber.name} cannot translate; pass a multilingual --asr-model (e.g. small) or an "
              "LLM with --llm-url URL --llm-model NAME or --reply-model ID_OR_DIR", file=sys.stderr)
        return 2
    responders: dict[str, Any] = {"echo": EchoResponder()}
    if args.llm_url:
        from higgs_agent.agent.responders.llm import LLMResponder

        responders["llm"] = LLMResponder(args.llm_url, args.llm_model, api_key=args.llm_api_key)
    bundle = load_bundle(args)
    if args.reply_model:
        from higgs_agent.model.errors import ModelLoadError
        from higgs_agent.server import local_responder

        try:
            responders["local"] = local_responder(args, bundle)
        except ModelLoadError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    services = AgentServices(engine=StreamingEngine(bundle), transcriber=transcriber, responders=responders,
                             default_responder="echo", sampling=sampling_settings(args))
    with serve_in_background(services) as base:
        url = base.replace("http://", "ws://") + "/v1/realtime"
        result = asyncio.run(interpret(url, read_wav(args.wav), SAMPLE_RATE, args.to, args.source,
                                       realtime_pace=not args.fast, on_phrase=lambda p: print(describe(p)),
                                       simultaneous=not args.whole_turns))
    write_wav(args.output, result.audio)
    figures = summary(result)
    print(f"wrote {args.output}: {len(result.audio) / SAMPLE_RATE:.2f} s, {figures['translated']} of "
          f"{figures['phrases']} phrases translated, first audio {figures['latency_ms_p50']} ms after each "
          "phrase ended (median)", file=sys.stderr)
    asyncio.run(services.aclose())
    return 0
