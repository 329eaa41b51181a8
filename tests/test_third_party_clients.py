"""OpenAI Realtime clients written by others, unchanged but for their base URL, through a real spoken turn
against the real server: the official `openai` SDK, OpenAI's Agents SDK (`agents.realtime`), LiveKit's
OpenAI realtime plugin and Pipecat's OpenAI Realtime service.

Each test drives the library's own public API with espeak-ng speech at real-time pace and checks what a user
of that library relies on: the user's words come back through the library, reply audio comes back through
it as PCM16 at the rate it expects and byte for byte what the server sent, and the turn ends without the
library raising or logging an error. A `WireTap` between library and server records both directions, so a
failure shows the trace. The last tests check every server event of a spoken turn against openai-python's
own models, and the protocol details these libraries lean on (response metadata, usage, item order,
extension events only for clients that ask).
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from agent_server import Client, echo_services, running_server
from speech import word_error_rate
from third_party import (
    EXTENSION_PREFIX,
    SERVER_EVENT_MODELS,
    ErrorLogs,
    TappedConnection,
    WireTap,
    describe_error,
    paced_chunks,
    pcm16_samples,
    server_event_shape_errors,
    spoken_pcm16,
)

from higgs_agent.agent.services import AgentServices
from higgs_agent.model.sampling import SamplingSettings
from higgs_agent.streaming.engine import StreamingEngine

pytestmark = pytest.mark.timeout(300)
API_KEY = "sk-third-party-clients"  # the server requires it: each library must pass its key as OpenAI expects
MODEL = "gpt-realtime"  # the name the libraries put in the URL; the server speaks with its own model
SENTENCE = "hello, can you tell me the weather forecast for tomorrow"
RATE = 24_000  # PCM16 mono, the rate every one of these libraries sends and expects back
TURN_TIMEOUT_S = 120


@pytest.fixture(scope="module")
def server(bundle, transcriber):
    services = echo_services(bundle, transcriber, max_frames=200)
    with running_server(services, api_key=API_KEY) as base:
        yield base


@pytest.fixture(scope="module")
def speech() -> bytes:
    return spoken_pcm16(SENTENCE, RATE)


async def send_paced(speech: bytes, send: Callable[[bytes], Awaitable[None] | None]) -> None:
    async for chunk in paced_chunks(speech, RATE):
        sent = send(chunk)
        if sent is not None:
            await sent


def wire_audio(wire: TappedConnection) -> bytes:
    """The reply audio the server sent, in order, as bytes."""
    return b"".join(base64.b64decode(e["delta"]) for e in wire.received_of("response.output_audio.delta"))


def assert_heard(transcript: str) -> None:
    assert word_error_rate(SENTENCE, transcript) <= 0.25, f"the library reported the user said {transcript!r}"


def assert_clean_wire(wire: TappedConnection) -> None:
    """No error events, and the session.update the library sent at connect was answered."""
    errors = wire.received_of("error")
    assert not errors, f"the server answered with errors: {json.dumps(errors)}\n{wire.trace()}"
    assert wire.sent_of("session.update"), "the library sent no session.update"
    assert wire.received_of("session.updated"), f"no session.updated\n{wire.trace()}"


# --- 1. the official openai SDK (GA realtime client over WebSocket) --------------------------------------


async def test_openai_sdk_realtime_connection_takes_a_spoken_turn(server, speech):
    from openai import AsyncOpenAI

    async with WireTap(server) as tap:
        client = AsyncOpenAI(base_url=f"{tap.http_base}/v1", api_key=API_KEY)
        async with client.realtime.connect(model=MODEL) as connection:
            await connection.session.update(session={
                "type": "realtime", "output_modalities": ["audio"], "instructions": "Repeat what you hear.",
                "audio": {"input": {"format": {"type": "audio/pcm", "rate": RATE},
                                    "transcription": {"model": "gpt-4o-mini-transcribe"},
                                    "turn_detection": {"type": "server_vad", "silence_duration_ms": 500}},
                          "output": {"format": {"type": "audio/pcm", "rate": RATE}, "voice": "marin"}}})

            async def append(chunk: bytes) -> None:
                await connection.input_audio_buffer.append(audio=base64.b64encode(chunk).decode())

            sending = asyncio.create_task(send_paced(speech, append))
            events: list[Any] = []

            async def until_done() -> None:
                async for event in connection:
                    events.append(event)
                    if event.type == "response.done":
                        return

            await asyncio.wait_for(until_done(), TURN_TIMEOUT_S)
            await sending
        await client.close()
    wire = tap.last()

    assert wire.headers.get("authorization") == f"Bearer {API_KEY}"
    assert_clean_wire(wire)

    updated = next(e for e in events if e.type == "session.updated").session
    assert updated.audio.input.format.rate == RATE and updated.audio.output.format.rate == RATE
    assert updated.audio.input.turn_detection.type == "server_vad"
    assert updated.audio.input.turn_detection.silence_duration_ms == 500
    assert updated.instructions == "Repeat what you hear."

    transcript = next(e for e in events if e.type == "conversation.item.input_audio_transcription.completed")
    assert_heard(transcript.transcript)

    audio = b"".join(base64.b64decode(e.delta) for e in events if e.type == "response.output_audio.delta")
    assert len(audio) > 0 and len(audio) % 2 == 0 and pcm16_samples(audio).any()
    assert audio == wire_audio(wire)

    done = next(e for e in events if e.type == "response.done").response
    assert done.status == "completed"
    said = "".join(e.delta for e in events if e.type == "response.output_audio_transcript.delta")
    assert done.output[0].content[0].transcript == said
    assert said.strip()
    unknown = [e.type for e in events if e.type not in SERVER_EVENT_MODELS]
    assert not unknown, f"events the SDK has no type for reached it: {unknown}"
    assert all(isinstance(e, SERVER_EVENT_MODELS[e.type]) for e in events)


# --- 2. OpenAI's Agents SDK: RealtimeAgent + RealtimeRunner ----------------------------------------------


def agents_history(events: list[Any]) -> list[Any]:
    """The conversation as an Agents SDK app sees it: history_updated carries all of it, history_added one item."""
    history: list[Any] = []
    for event in events:
        if event.type == "history_updated":
            history = list(event.history)
        elif event.type == "history_added":
            history = [item for item in history if item.item_id != event.item.item_id] + [event.item]
    return history


async def test_openai_agents_realtime_session_takes_a_spoken_turn(server, speech):
    from agents.realtime import RealtimeAgent, RealtimeRunner

    agent = RealtimeAgent(name="Assistant", instructions="Repeat what you hear.")
    async with WireTap(server) as tap:
        session = await RealtimeRunner(agent).run(model_config={
            "url": f"{tap.ws_base}/v1/realtime?model={MODEL}", "api_key": API_KEY})
        seen: list[Any] = []
        with ErrorLogs("openai.agents") as logged:
            async with session:
                sending = asyncio.create_task(send_paced(speech, session.send_audio))

                async def until_turn_ends() -> None:
                    async for event in session:
                        seen.append(event)
                        if event.type == "agent_end":
                            return

                await asyncio.wait_for(until_turn_ends(), TURN_TIMEOUT_S)
                await sending
    wire = tap.last()
    history = agents_history(seen)

    assert wire.headers.get("authorization") == f"Bearer {API_KEY}"
    errors = [e for e in seen if e.type == "error"]
    assert not errors, f"the session reported errors: {[describe_error(e.error) for e in errors]}"
    assert not logged.messages(), f"the Agents SDK logged errors: {logged.messages()}"
    assert_clean_wire(wire)

    user = [item for item in history if item.type == "message" and item.role == "user"]
    assert user and user[0].content[0].type == "input_audio"
    assert_heard(user[0].content[0].transcript or "")

    audio = b"".join(e.audio.data for e in seen if e.type == "audio")
    assert len(audio) > 0 and len(audio) % 2 == 0 and pcm16_samples(audio).any()
    assert audio == wire_audio(wire)
    assistant = [item for item in history if item.type == "message" and item.role == "assistant"]
    assert assistant and (assistant[-1].content[0].transcript or "").strip()
    assert any(e.type == "audio_end" for e in seen)


async def test_openai_agents_function_tool_completes_a_tool_turn(bundle, transcriber, speech):
    """The Agents SDK runs its own `function_tool` when our server's reply calls it, sends the output back, and
    the spoken answer follows: the Realtime function-calling flow, unchanged."""
    from agents import function_tool
    from agents.realtime import RealtimeAgent, RealtimeRunner
    from higgs_agent.testing.fake_llm import FakeLLM, ToolCall, Turn

    from higgs_agent.agent.responders.llm import LLMResponder

    asked: list[str] = []

    @function_tool
    def get_order_status(order_number: str) -> str:
        """Look up an order's status."""
        asked.append(order_number)
        return f"Order {order_number} shipped on Monday."

    with FakeLLM(chunk_chars=5) as llm:
        llm.turns = [Turn(text="Let me look that up.",
                          tool_calls=[ToolCall("get_order_status", '{"order_number": "A1001"}')]),
                     Turn(text="Your order shipped on Monday.")]
        services = AgentServices(engine=StreamingEngine(bundle), transcriber=transcriber,
                                 responders={"llm": LLMResponder(llm.base_url, model="fake")},
                                 default_responder="llm", sampling=SamplingSettings(greedy=True, max_frames=200))
        agent = RealtimeAgent(name="Shop", instructions="Help with orders.", tools=[get_order_status])
        with running_server(services, api_key=API_KEY) as base, ErrorLogs("openai.agents") as logged:
            async with WireTap(base) as tap:
                session = await RealtimeRunner(agent).run(model_config={
                    "url": f"{tap.ws_base}/v1/realtime?model={MODEL}", "api_key": API_KEY})
                seen: list[Any] = []
                async with session:
                    sending = asyncio.create_task(send_paced(speech, session.send_audio))

                    async def until_answered() -> None:
                        ends = 0
                        async for event in session:
                            seen.append(event)
                            if event.type == "agent_end":
                                ends += 1
                                if ends == 2:  # the call's turn, then the answer's
                                    return

                    await asyncio.wait_for(until_answered(), TURN_TIMEOUT_S * 2)
                    await sending
        told = [m for m in llm.requests[-1]["messages"] if m.get("role") == "tool"]
    assert asked == ["A1001"]  # the SDK ran its tool with the model's arguments
    assert told and told[-1]["content"] == "Order A1001 shipped on Monday."  # and the output reached the model
    assert any(e.type == "tool_start" for e in seen) and any(e.type == "tool_end" for e in seen)
    errors = [e for e in seen if e.type == "error"]
    assert not errors, f"the session reported errors: {[describe_error(e.error) for e in errors]}"
    assert not logged.messages(), f"the Agents SDK logged errors: {logged.messages()}"
    transcripts = [item.content[0].transcript for item in agents_history(seen)
                   if item.type == "message" and item.role == "assistant"]
    assert "Your order shipped on Monday." in transcripts


# --- 3. LiveKit's OpenAI realtime plugin, its RealtimeSession without a LiveKit server --------------------


async def read_livekit_generation(generation: Any) -> tuple[list[Any], str]:  # noqa: ANN401
    """Every audio frame and the text of a livekit `GenerationCreatedEvent`, as an agent's output reads them."""
    frames, text = [], ""
    async for message in generation.message_stream:
        async for frame in message.audio_stream:
            frames.append(frame)
        async for delta in message.text_stream:
            text += delta
    return frames, text


class LiveKitSession:
    """A livekit-plugins-openai RealtimeSession through the tap, with what it emits collected."""

    def __init__(self, tap: WireTap, **model_options: Any) -> None:  # noqa: ANN401
        from livekit.plugins.openai.realtime import RealtimeModel

        self.model = RealtimeModel(base_url=f"{tap.http_base}/v1", api_key=API_KEY, model=MODEL, **model_options)
        self.session = self.model.session()
        self.transcripts: list[Any] = []
        self.generations: asyncio.Queue[Any] = asyncio.Queue()
        self.errors: list[Any] = []
        self.session.on("input_audio_transcription_completed", self.transcripts.append)
        self.session.on("generation_created", self.generations.put_nowait)
        self.session.on("error", self.errors.append)

    async def push(self, speech: bytes) -> None:
        from livekit import rtc

        await send_paced(speech, lambda chunk: self.session.push_audio(rtc.AudioFrame(chunk, RATE, 1, len(chunk) // 2)))

    async def aclose(self) -> None:
        await self.session.aclose()
        await self.model.aclose()

    def assert_clean(self, logged: ErrorLogs, wire: TappedConnection) -> None:
        assert wire.headers.get("authorization") == f"Bearer {API_KEY}"
        assert not self.errors, f"the session emitted errors: {[describe_error(e.error) for e in self.errors]}"
        assert not logged.messages(), f"LiveKit logged errors: {logged.messages()}"
        assert_clean_wire(wire)
        final = [t for t in self.transcripts if t.is_final]
        assert final, "no final user transcript"
        assert_heard(final[0].transcript)


def assert_livekit_audio(frames: list[Any], text: str) -> None:
    assert frames and all(f.sample_rate == RATE and f.num_channels == 1 for f in frames)
    assert sum(f.samples_per_channel for f in frames) > 0
    assert text.strip()


async def test_livekit_realtime_session_takes_a_spoken_turn_with_server_turn_detection(server, speech):
    async with WireTap(server) as tap:
        livekit = LiveKitSession(tap)  # the plugin's defaults: semantic_vad, gpt-4o-mini-transcribe, voice marin
        with ErrorLogs("livekit.agents", "livekit.plugins.openai") as logged:
            try:
                await livekit.push(speech)
                generation = await asyncio.wait_for(livekit.generations.get(), TURN_TIMEOUT_S)
                frames, text = await asyncio.wait_for(read_livekit_generation(generation), TURN_TIMEOUT_S)
            finally:
                await livekit.aclose()
    wire = tap.last()

    livekit.assert_clean(logged, wire)
    assert not generation.user_initiated  # the server's VAD ended the turn and answered it
    assert_livekit_audio(frames, text)
    assert b"".join(f.data.tobytes() for f in frames) == wire_audio(wire)


async def test_livekit_generate_reply_after_a_committed_turn(server, speech):
    """Turn detection off (LiveKit's own turn detector decides): commit_audio(), then generate_reply(), which
    waits for the response.created whose response.metadata echoes its client_event_id (10 s, then it fails)."""
    async with WireTap(server) as tap:
        livekit = LiveKitSession(tap, turn_detection=None)
        with ErrorLogs("livekit.agents", "livekit.plugins.openai") as logged:
            try:
                await livekit.push(speech)
                livekit.session.commit_audio()
                generation = await asyncio.wait_for(livekit.session.generate_reply(), 15)
                frames, text = await asyncio.wait_for(read_livekit_generation(generation), TURN_TIMEOUT_S)
            finally:
                await livekit.aclose()
    wire = tap.last()

    livekit.assert_clean(logged, wire)
    assert generation.user_initiated
    assert_livekit_audio(frames, text)
    assert b"".join(f.data.tobytes() for f in frames) == wire_audio(wire)
    client_event_id = wire.sent_of("response.create")[-1]["event_id"]
    assert wire.received_of("response.created")[-1]["response"]["metadata"] == {"client_event_id": client_event_id}


# --- 4. Pipecat's OpenAI Realtime LLM service in a minimal pipeline --------------------------------------


async def test_pipecat_openai_realtime_service_takes_a_spoken_turn(server, speech):
    from loguru import logger
    from pipecat.frames.frames import (
        ErrorFrame,
        InputAudioRawFrame,
        LLMFullResponseEndFrame,
        TranscriptionFrame,
        TTSAudioRawFrame,
    )
    from pipecat.pipeline.pipeline import Pipeline
    from pipecat.pipeline.worker import PipelineParams, PipelineWorker
    from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
    from pipecat.services.openai.realtime import events as rt
    from pipecat.services.openai.realtime.llm import OpenAIRealtimeLLMService
    from pipecat.workers.runner import WorkerRunner

    class FrameLog(FrameProcessor):
        """Passes every frame on and keeps those travelling one way."""

        def __init__(self, direction: FrameDirection) -> None:
            super().__init__()
            self.direction = direction
            self.frames: list[Any] = []
            self.changed = asyncio.Event()

        async def process_frame(self, frame: Any, direction: FrameDirection) -> None:  # noqa: ANN401
            await super().process_frame(frame, direction)
            if direction == self.direction:
                self.frames.append(frame)
                self.changed.set()
            await self.push_frame(frame, direction)

    async def until(log: FrameLog, done: Callable[[list[Any]], bool]) -> None:
        while not done(log.frames):
            log.changed.clear()
            await log.changed.wait()

    logged: list[str] = []
    sink = logger.add(lambda message: logged.append(str(message)[:600]), level="ERROR")
    async with WireTap(server) as tap:
        settings = OpenAIRealtimeLLMService.Settings(
            model=MODEL, system_instruction="Repeat what you hear.",
            session_properties=rt.SessionProperties(audio=rt.AudioConfiguration(
                input=rt.AudioInput(transcription=rt.InputAudioTranscription(model="whisper-1")))))
        llm = OpenAIRealtimeLLMService(api_key=API_KEY, base_url=f"{tap.ws_base}/v1/realtime", settings=settings)
        upstream, downstream = FrameLog(FrameDirection.UPSTREAM), FrameLog(FrameDirection.DOWNSTREAM)
        worker = PipelineWorker(Pipeline([upstream, llm, downstream]), enable_rtvi=False, idle_timeout_secs=None,
                                params=PipelineParams(audio_in_sample_rate=RATE, audio_out_sample_rate=RATE))
        runner = WorkerRunner(handle_sigint=False)
        await runner.add_workers(worker)
        running = asyncio.create_task(runner.run())
        try:
            async def push(chunk: bytes) -> None:
                await worker.queue_frame(InputAudioRawFrame(audio=chunk, sample_rate=RATE, num_channels=1))

            await send_paced(speech, push)

            def turn_over(frames: list[Any]) -> bool:
                audio = [i for i, f in enumerate(frames) if isinstance(f, TTSAudioRawFrame)]
                return bool(audio) and any(isinstance(f, LLMFullResponseEndFrame) for f in frames[audio[0]:])

            await asyncio.wait_for(until(downstream, turn_over), TURN_TIMEOUT_S)
            await asyncio.wait_for(until(upstream, lambda fs: any(isinstance(f, TranscriptionFrame) for f in fs)),
                                   TURN_TIMEOUT_S)
        finally:
            await worker.cancel()
            await asyncio.wait_for(running, 30)
            logger.remove(sink)
    wire = tap.last()

    assert wire.headers.get("authorization") == f"Bearer {API_KEY}"
    errors = [f for f in upstream.frames + downstream.frames if isinstance(f, ErrorFrame)]
    assert not errors, f"the pipeline got errors: {[f.error[:300] for f in errors]}"
    assert not logged, f"Pipecat logged errors: {logged}"
    assert_clean_wire(wire)

    transcripts = [f for f in upstream.frames if isinstance(f, TranscriptionFrame)]
    assert_heard(transcripts[0].text)
    audio_frames = [f for f in downstream.frames if isinstance(f, TTSAudioRawFrame)]
    assert all(f.sample_rate == RATE and f.num_channels == 1 for f in audio_frames)
    audio = b"".join(f.audio for f in audio_frames)
    assert len(audio) > 0 and pcm16_samples(audio).any()
    assert audio == wire_audio(wire)


# --- the exact shape of every server event, and the protocol details the libraries lean on -------------


async def connect(server: str) -> Client:
    return await Client.connect(server, extensions=False, additional_headers={"Authorization": f"Bearer {API_KEY}"})


async def test_every_server_event_of_a_spoken_turn_has_the_openai_sdk_shape(server, speech):
    client = await connect(server)
    await client.send({"type": "session.update", "session": {
        "type": "realtime", "instructions": "Repeat what you hear.",
        "audio": {"input": {"format": {"type": "audio/pcm", "rate": RATE},
                            "transcription": {"model": "whisper-1"},
                            "turn_detection": {"type": "server_vad"}},
                  "output": {"format": {"type": "audio/pcm", "rate": RATE}}}}})
    for start in range(0, len(speech), RATE // 10 * 2):
        await client.send({"type": "input_audio_buffer.append",
                           "audio": base64.b64encode(speech[start:start + RATE // 10 * 2]).decode()})
    done = await client.until("response.done")
    # The other standard events a client meets in a voice turn: on the reply item, the buffer, and a mistake.
    reply_id = done["response"]["output"][0]["id"]
    await client.send({"type": "conversation.item.retrieve", "item_id": reply_id})
    await client.until("conversation.item.retrieved")
    await client.send({"type": "conversation.item.truncate", "item_id": reply_id, "content_index": 0,
                       "audio_end_ms": 100})
    await client.until("conversation.item.truncated")
    await client.send({"type": "conversation.item.delete", "item_id": reply_id})
    await client.until("conversation.item.deleted")
    await client.send({"type": "input_audio_buffer.clear"})
    await client.until("input_audio_buffer.cleared")
    await client.send({"type": "no.such.event"})
    await client.until("error")
    await client.close()

    standard = [e for e in client.events if not e["type"].startswith(EXTENSION_PREFIX)]
    assert {"session.created", "session.updated", "input_audio_buffer.speech_started",
            "conversation.item.input_audio_transcription.completed", "response.output_audio.delta",
            "response.done"} <= {e["type"] for e in standard}
    mismatches = sorted({problem for event in standard for problem in server_event_shape_errors(event)})
    assert not mismatches, "server events that differ from openai-python's models:\n" + "\n".join(mismatches)


async def typed_turn(client: Client, text: str, response: dict[str, Any] | None = None) -> dict[str, Any]:
    """A user text item and response.create; returns response.done."""
    await client.send({"type": "conversation.item.create", "item": {
        "type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}})
    await client.send({"type": "response.create", **({"response": response} if response else {})})
    return await client.until("response.done")


async def test_standard_clients_get_no_extension_events_unless_they_opt_in(server):
    plain = await connect(server)
    await typed_turn(plain, "Good morning.")
    await plain.close()
    extension = [kind for kind in plain.types() if kind.startswith(EXTENSION_PREFIX)]
    assert not extension, f"sent to a client that did not ask for extension events: {extension}"

    opted = await connect(server)
    await opted.send({"type": "session.update", "session": {"higgs": {"extension_events": True}}})
    updated = await opted.until("session.updated")
    assert updated["session"]["higgs"]["extension_events"] is True
    done = await typed_turn(opted, "Good morning.")
    await opted.close()
    latency = [e for e in opted.events if e["type"] == f"{EXTENSION_PREFIX}turn.latency"]
    assert len(latency) == 1 and latency[0]["response_id"] == done["response"]["id"]


async def test_a_text_only_turn_has_the_openai_sdk_shape_and_no_audio(server):
    client = await connect(server)
    await client.send({"type": "session.update", "session": {"type": "realtime", "output_modalities": ["text"]}})
    updated = await client.until("session.updated")
    done = await typed_turn(client, "Good morning. How are you today?")
    await client.close()
    assert updated["session"]["output_modalities"] == ["text"] and done["response"]["output_modalities"] == ["text"]
    text = "".join(e["delta"] for e in client.events if e["type"] == "response.output_text.delta")
    assert text == done["response"]["output"][0]["content"][0]["text"] == "Good morning. How are you today?"
    assert not [e["type"] for e in client.events if "audio" in e["type"]]
    mismatches = sorted({problem for event in client.events for problem in server_event_shape_errors(event)})
    assert not mismatches, "server events that differ from openai-python's models:\n" + "\n".join(mismatches)


async def test_response_metadata_is_echoed_in_created_and_done(server):
    client = await connect(server)
    metadata = {"client_event_id": "response_create_abc123", "topic": "weather"}
    done = await typed_turn(client, "Good morning.", response={"metadata": metadata})
    await client.close()
    created = next(e for e in client.events if e["type"] == "response.created")
    assert created["response"].get("metadata") == metadata
    assert done["response"].get("metadata") == metadata


async def test_response_usage_follows_the_openai_schema(server):
    client = await connect(server)
    done = await typed_turn(client, "Good morning.")
    await client.close()
    usage = done["response"].get("usage")
    assert usage is not None, "response.done has no usage"
    inp, out = usage["input_token_details"], usage["output_token_details"]
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    assert usage["input_tokens"] == inp["text_tokens"] + inp["audio_tokens"]
    assert 0 <= inp["cached_tokens"] <= usage["input_tokens"]
    assert usage["output_tokens"] == out["text_tokens"] + out["audio_tokens"]
    assert inp["text_tokens"] > 0 and out["audio_tokens"] > 0  # the typed words in, the spoken reply out


async def test_item_create_honours_previous_item_id(server):
    client = await connect(server)
    ids = []
    for word, after in (("one", None), ("two", None), ("three", 0)):
        event = {"type": "conversation.item.create", "item": {
            "type": "message", "role": "user", "content": [{"type": "input_text", "text": word}]}}
        if after is not None:
            event["previous_item_id"] = ids[after]
        await client.send(event)
        ids.append((await client.until("conversation.item.added"))["item"]["id"])
    added_three = [e for e in client.events if e["type"] == "conversation.item.added"][-1]
    assert added_three["previous_item_id"] == ids[0]
    await client.send({"type": "response.create"})
    done = await client.until("response.done")
    await client.close()
    # "three" went in after "one", so the conversation ends with "two": the echo answers the last user turn.
    assert done["response"]["output"][0]["content"][0]["transcript"].strip(" .").lower() == "two"
