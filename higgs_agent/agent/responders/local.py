"""`local`: reply text and function calls from an instruct LLM loaded in this process (`serve --reply-model`).

The prompt is the conversation the `llm` responder sends (the session's instructions and caller context,
every turn, function calls and outputs in the strict chat shape of `tools.chat_history.well_formed`),
rendered by the model's own chat template with the request's tools (`apply_chat_template(messages,
tools=...)`). The model runs on its own thread (`model.reply_model.ReplyGenerator`), batched with the other
sessions' replies; each token comes back to the event loop as it is made, is decoded, and goes through
`ToolCallText` (calls written as `<tool_call>` JSON, or a Llama-3 JSON reply) and the `ReplyAssembler` the
`llm` responder uses: the same phrases, the same schema checks, the same function-call events.

`tool_choice` "none" leaves the tools out of the prompt; "required" and a named function are forced by
writing the opening of the call into the prompt on the model's behalf (for templates with `<tool_call>`;
other templates get the tools and choose themselves). Closing the iterator (barge-in) cancels the
generation at the next token.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from higgs_agent.agent.responders.assembly import ReplyAssembler
from higgs_agent.agent.responders.base import ReplyEvent, ReplyRequest, ResponderError
from higgs_agent.agent.tools.calls import MalformedToolCall
from higgs_agent.agent.tools.chat_history import well_formed, with_argument_objects
from higgs_agent.agent.tools.text_calls import OPEN, ToolCallText
from higgs_agent.model.reply_model import ReplyGenerator

log = logging.getLogger(__name__)
DEFAULT_MAX_NEW_TOKENS = 256


class LocalResponder:
    """Replies written by the in-process reply model. One responder (one model thread) serves every session."""

    name = "local"
    supports_tools = True

    def __init__(self, generator: ReplyGenerator, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
                 min_chars: int = 24, max_chars: int = 160) -> None:
        self.generator = generator
        self.tokenizer = generator.reply_model.tokenizer
        self.max_new_tokens = max_new_tokens
        self.min_chars = min_chars
        self.max_chars = max_chars

    def prompt(self, request: ReplyRequest) -> tuple[str, str]:
        """(the prompt text, the part of the reply it writes on the model's behalf: a forced call's opening)."""
        messages = with_argument_objects(well_formed(request.messages))
        choice = request.tool_choice
        tools = [tool.to_chat_tool() for tool in request.tools] if request.tools and choice.mode != "none" else None
        text = self.tokenizer.apply_chat_template(messages, tools=tools, add_generation_prompt=True, tokenize=False)
        forced = ""
        if tools and self.generator.reply_model.writes_tool_tags:
            if choice.mode == "required":
                forced = f"{OPEN}\n"
            elif choice.mode == "function" and choice.name:
                forced = f'{OPEN}\n{{"name": {json.dumps(choice.name)}, "arguments": '
        return text + forced, forced

    def prompt_ids(self, request: ReplyRequest) -> tuple[list[int], str]:
        try:
            text, forced = self.prompt(request)
        except Exception as exc:  # noqa: BLE001 - jinja2 template errors, a template refusing a role, ...
            raise ResponderError(f"the reply model's chat template cannot render this conversation: "
                                 f"{type(exc).__name__}: {exc}") from exc
        return self.tokenizer(text, add_special_tokens=False)["input_ids"], forced

    async def reply(self, request: ReplyRequest) -> AsyncIterator[ReplyEvent]:
        ids, forced = await asyncio.to_thread(self.prompt_ids, request)
        loop = asyncio.get_running_loop()
        arrived: asyncio.Queue[tuple[int | None, BaseException | None]] = asyncio.Queue()

        def deliver(token: int | None, error: BaseException | None) -> None:  # on the model's thread
            loop.call_soon_threadsafe(arrived.put_nowait, (token, error))

        try:
            job = self.generator.submit(ids, deliver, self.max_new_tokens)
        except RuntimeError as exc:
            raise ResponderError(f"the reply model is not running: {exc}") from exc
        reply = ReplyAssembler(request, self.min_chars, self.max_chars)
        calls = ToolCallText(forced, json_calls=bool(request.tools))
        decoder = IncrementalDecoder(self.tokenizer)
        try:
            while True:
                token, error = await arrived.get()
                if token is None:
                    if error is not None:
                        raise ResponderError(f"the reply model failed: {type(error).__name__}: {error}")
                    break
                for event in _events(reply, calls.feed(decoder.add(token))):
                    yield event
            for event in _events(reply, calls.feed(decoder.flush()) + calls.finish()):
                yield event
            for event in reply.finish():
                yield event
        except MalformedToolCall as exc:
            raise ResponderError(f"malformed tool call from the reply model: {exc}") from None
        finally:
            job.cancel()
            log.debug("local reply: %d tokens", job.made)

    async def aclose(self) -> None:
        await asyncio.to_thread(self.generator.close)


def _events(reply: ReplyAssembler, items: list[str | dict[str, Any]]) -> list[ReplyEvent]:
    events: list[ReplyEvent] = []
    for item in items:
        events += reply.text(item) if isinstance(item, str) else reply.pieces([item])
    return events


class IncrementalDecoder:
    """Token ids in, text out as soon as it is whole: a character split over several byte tokens is held
    until its last byte arrives (the decoded text would end in U+FFFD), for at most the 3 tokens a UTF-8
    character can still need; bytes that never make a character go out as U+FFFD. Special tokens are left out."""

    MAX_HELD = 3

    def __init__(self, tokenizer: Any) -> None:  # noqa: ANN401 - a transformers tokenizer
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.sent = 0  # characters of the decoded text already returned
        self.held = 0  # tokens held back for an unfinished character

    def add(self, token: int) -> str:
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd") and self.held < self.MAX_HELD:
            self.held += 1
            return ""
        self.held = 0
        new, self.sent = text[self.sent:], len(text)
        return new

    def flush(self) -> str:
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        new, self.sent = text[self.sent:], len(text)
        return new
