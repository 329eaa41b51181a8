"""`native` (experimental): the Higgs model's own text head writes the reply, then the same model speaks it.

The model hears the user's turn as codec codes (no transcript needed, though one is used when present) and
writes text token by token (`higgs_agent.model.text_reply`); the prompt and each step run where `run` puts
them (the engine's model worker in the server: one owner of the model), so the event loop stays free, and
phrases are yielded as the splitter completes them. Closing the iterator cancels the
generation at the next step boundary and frees its KV cache. The text head was not trained to call functions:
`supports_tools` is False (the session refuses `session.tools` for it), and function calls and outputs in the
history are left out of its prompt.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from higgs_agent.agent.phrases import PhraseSplitter
from higgs_agent.agent.responders.base import ReplyRequest, ResponderError, spoken_turns
from higgs_agent.model import special_tokens as st
from higgs_agent.model.loader import HiggsBundle
from higgs_agent.model.text_reply import (
    TextGeneration,
    TextSampling,
    allowed_token_mask,
    chat_inputs,
    require_text_head,
)

log = logging.getLogger(__name__)


class NativeResponder:
    """Replies written by the Higgs model loaded with `load_higgs(..., use_text_head=True)`."""

    name = "native"
    supports_tools = False

    def __init__(
        self,
        bundle: HiggsBundle,
        max_new_tokens: int = 256,
        greedy: bool = False,
        temperature: float = 0.7,
        top_k: int | None = 50,
        top_p: float | None = 0.95,
        seed: int | None = None,
        min_chars: int = 24,
        max_chars: int = 160,
        run: Callable[[Callable[[], Any]], Awaitable[Any]] | None = None,
    ) -> None:
        require_text_head(bundle)
        self.bundle = bundle
        self.run = run or asyncio.to_thread  # StreamingEngine.run in the server
        self.sampling = TextSampling(max_new_tokens=max_new_tokens, greedy=greedy, temperature=temperature,
                                     top_k=top_k, top_p=top_p, seed=seed)
        self.min_chars = min_chars
        self.max_chars = max_chars
        tokenizer = bundle.tokenizer
        stops = {tokenizer.convert_tokens_to_ids(st.EOT), tokenizer.convert_tokens_to_ids(st.END_OF_TEXT)}
        self._mask = allowed_token_mask(tokenizer, int(bundle.config.vocab_size), stops)
        self.last_generation: TextGeneration | None = None  # the latest reply's state (tests, stats)

    def start(self, request: ReplyRequest) -> TextGeneration:
        try:
            inputs = chat_inputs(self.bundle.processor, spoken_turns(request.messages), request.user_audio_codes)
        except ValueError as exc:
            raise ResponderError(f"cannot build the native reply prompt: {exc}") from exc
        return TextGeneration(self.bundle, inputs, self.sampling, self._mask)

    async def reply(self, request: ReplyRequest) -> AsyncIterator[str]:
        generation = await self.run(lambda: self.start(request))
        self.last_generation = generation
        splitter = PhraseSplitter(self.min_chars, self.max_chars)
        try:
            while not generation.finished:
                text = await self.run(generation.advance)
                if text:
                    request.first_text()
                    for phrase in splitter.feed(text):
                        yield phrase
            for phrase in splitter.flush():
                yield phrase
        finally:
            generation.cancel()
            log.info("native reply: %d tokens, %s", len(generation.tokens), generation.stop_reason)

    async def aclose(self) -> None:
        return None
