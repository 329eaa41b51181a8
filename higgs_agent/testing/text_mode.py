"""A session driven in text, for testing turn logic in milliseconds: typed turns in, every event out, no audio.

The conversation core runs as it does behind any transport (the same `Session`, responders, tool rounds, MCP
calls and approvals), with `output_modalities: ["text"]` so no reply reaches the engine and nothing is
spoken. What a test asserts is what a client would read: each event as JSON off the wire.

    async with TextConversation(services, session={"tools": [...]}) as chat:
        result = await chat.run("what's the weather in Paris?")
        assert result.calls[0]["name"] == "get_weather"
        result = await chat.answer(result.calls[0]["call_id"], '{"sky": "clear"}')
        assert "clear" in result.text

Anchor: LiveKit Agents' `AgentSession.run(user_input=...)` (text-mode tests of an agent's turn logic).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from higgs_agent.agent.events import DomainEvent
from higgs_agent.agent.services import AgentServices
from higgs_agent.agent.session import Session
from higgs_agent.transport.realtime_codec import RealtimeEncoder, deliver

DEFAULT_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class TurnResult:
    """What one response did, read from its events."""

    response: dict[str, Any]  # response.done's `response`
    events: list[dict[str, Any]]  # every event from the turn's start to its response.done

    @property
    def status(self) -> str:
        return str(self.response["status"])

    @property
    def text(self) -> str:
        """The assistant's words in this response (its text parts, in order)."""
        return " ".join(part.get("text") or part.get("transcript") or ""
                        for item in self.response["output"] if item["type"] == "message"
                        for part in item["content"]).strip()

    @property
    def calls(self) -> list[dict[str, Any]]:
        """The function calls the response handed to the client to run (name, call_id, arguments); a call the
        model got wrong stays in the output as `incomplete` and is not one of them."""
        return [item for item in self.response["output"]
                if item["type"] == "function_call" and item["status"] == "completed"]

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [event for event in self.events if event["type"] == kind]


class RecordingOutput:
    """A `SessionOutput` that keeps every event as a client would read it; audio, if any, is only counted."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.audio_samples = 0
        self.encoder = RealtimeEncoder()
        self._arrived = asyncio.Condition()

    async def send_event(self, event: DomainEvent) -> None:
        texts = self.encoder.texts(event)
        async with self._arrived:
            self.events.extend(json.loads(text) for text in texts)
            self._arrived.notify_all()

    async def send_audio(self, response_id: str, item_id: str, samples: np.ndarray) -> None:
        self.audio_samples += len(samples)

    async def flush_audio(self, response_id: str) -> None:
        pass

    def discard_audio(self, item_id: str) -> int:
        return 0

    def heard_ms(self, item_id: str) -> float:
        return 0.0

    def hold_audio(self) -> bool:
        return False

    def release_audio(self) -> None:
        pass

    async def next_of(self, kind: str, since: int, timeout: float) -> int:
        """The index of the first `kind` event at or after `since`, once it has arrived."""
        async with asyncio.timeout(timeout):
            async with self._arrived:
                while True:
                    for index in range(since, len(self.events)):
                        if self.events[index]["type"] == kind:
                            return index
                    await self._arrived.wait()


class TextConversation:
    """A session in text mode. `session` is a `session.update` body applied on entry (turn detection is off:
    typed turns are answered by `run`, as a client would ask with `response.create`)."""

    def __init__(self, services: AgentServices, session: dict[str, Any] | None = None,
                 timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.output = RecordingOutput()
        self.session = Session(services, self.output)
        self._update = {"output_modalities": ["text"], "audio": {"input": {"turn_detection": None}},
                        **(session or {})}
        self.timeout_s = timeout_s

    async def __aenter__(self) -> TextConversation:
        await self.session.open()
        await self.send({"type": "session.update", "session": self._update})
        errors = [event for event in self.output.events if event["type"] == "error"]
        if errors:
            raise ValueError(f"the session refused the settings: {errors[0]['error']['message']}")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.session.close()

    async def send(self, event: dict[str, Any]) -> None:
        """A client event, as JSON off the wire."""
        await deliver(self.session, json.dumps(event))

    async def run(self, user_input: str | None = None) -> TurnResult:
        """Say `user_input` (if any) and return the response it gets."""
        if user_input is not None:
            await self.send({"type": "conversation.item.create", "item": {
                "type": "message", "role": "user", "content": [{"type": "input_text", "text": user_input}]}})
        return await self._respond()

    async def answer(self, call_id: str, output: str) -> TurnResult:
        """Give a function call's output back, and return the response that follows."""
        await self.send({"type": "conversation.item.create", "item": {
            "type": "function_call_output", "call_id": call_id, "output": output}})
        return await self._respond()

    async def _respond(self) -> TurnResult:
        start = len(self.output.events)
        await self.send({"type": "response.create"})
        done = await self.output.next_of("response.done", start, self.timeout_s)
        return TurnResult(self.output.events[done]["response"], self.output.events[start:done + 1])
