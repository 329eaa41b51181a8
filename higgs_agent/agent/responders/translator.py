"""`translator`: speech translation. Each of the caller's turns comes back in another language, phrase by
phrase, usually in the caller's own voice (the session's translation mode picks the voice).

The translation comes from the `llm` responder (else the `local` reply model) with an interpreter's prompt
and only the turn to translate (earlier turns are context for a conversation, not for a translation), or, for
English when the server's ASR model is multilingual and no LLM is configured, from Whisper's own `translate`
task on the turn's audio.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from higgs_agent.agent.phrases import PhraseSplitter
from higgs_agent.agent.responders.base import ReplyEvent, ReplyRequest, Responder, ResponderError
from higgs_agent.model.asr import Transcriber

PROMPT = ("You are a simultaneous interpreter. Translate what the speaker says{source} into the language with "
          "ISO 639-1 code '{to}'. Reply with the translation only: no notes, no quotes, no explanations.")


def translation_prompt(to: str, source: str | None = None) -> str:
    return PROMPT.format(to=to, source=f" (in '{source}')" if source else "")


class Translator:
    name = "translator"
    supports_tools = False

    def __init__(self, to: str, source: str | None = None, llm: Responder | None = None,
                 transcriber: Transcriber | None = None, text: str | None = None) -> None:
        if llm is None and (to != "en" or transcriber is None or transcriber.english_only):
            raise ValueError("translation needs an LLM, or a multilingual Whisper model for translation into en")
        self.to, self.source, self.llm, self.transcriber = to, source, llm, transcriber
        self.text = text  # what to translate (None: the caller's last turn)

    @property
    def simultaneous(self) -> bool:
        """It can translate words without their audio (a clause of a turn still being spoken): an LLM does."""
        return self.llm is not None

    def for_text(self, text: str) -> Translator:
        """The same interpreter, for these words (a clause, the rest of a turn) instead of the last turn."""
        return Translator(self.to, self.source, self.llm, self.transcriber, text)

    async def reply(self, request: ReplyRequest) -> AsyncIterator[ReplyEvent]:
        text = (request.last_user_text() if self.text is None else self.text).strip()
        if not text:
            return
        if self.llm is not None:
            asked = ReplyRequest(messages=[{"role": "system", "content": translation_prompt(self.to, self.source)},
                                           {"role": "user", "content": text}], on_first_text=request.on_first_text)
            async for event in self.llm.reply(asked):
                if isinstance(event, str):
                    yield event
            return
        if request.user_audio16k is None:
            raise ResponderError("no audio of the turn to translate")
        assert self.transcriber is not None
        translated = await self.transcriber.transcribe_async(request.user_audio16k, self.source, task="translate")
        request.first_text()
        splitter = PhraseSplitter()
        for phrase in splitter.feed(translated.text) + splitter.flush():
            yield phrase

    async def aclose(self) -> None:
        return None
