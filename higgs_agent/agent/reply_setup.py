"""What a response is asked for, and what it needs before it can speak.

`ReplySettings`: response.create's settings over the session's (instructions, with the caller's context; the
output modality; the token budget; the tools). `ReplyInputs.preparation`: what is fetched inside the response's
own task, so a barge-in cancels the wait too: the request for the responder (the chat so far, the tools once the
operator's MCP servers are listed, the user's codec codes where the responder or the caller's voice needs them),
the voice to speak in (a library voice, the caller's own clone, one per [SPEAKERn]) and the delivery scene."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from higgs_agent.agent.caller_cloning import CallerCloning
from higgs_agent.agent.config import CALLER_VOICE, SessionConfig, output_modality
from higgs_agent.agent.conversation import Conversation, ConversationItem
from higgs_agent.agent.reply import Preparation
from higgs_agent.agent.responders.base import ReplyRequest, Responder, tools_unsupported
from higgs_agent.agent.services import AgentServices
from higgs_agent.agent.session_tools import SessionTools
from higgs_agent.agent.tools.spec import ToolConfig
from higgs_agent.agent.turn_reading import TurnReader, WireAudio
from higgs_agent.agent.turn_timing import TurnTiming
from higgs_agent.deadlines import StageTimeout, within
from higgs_agent.model.prompts import VoiceReference
from higgs_agent.protocol import client_events as ce
from higgs_agent.protocol.errors import ProtocolError
from higgs_agent.understanding.context import context_line, delivery_scene

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReplySettings:
    instructions: str  # the caller's context appended, when the turn was understood
    text_only: bool  # output_modalities ["text"]
    max_output_tokens: int | str
    metadata: dict[str, str] | None
    tools: ToolConfig | None  # response.create's tools over the session's (None: the session's)

    @classmethod
    def of(cls, params: ce.ResponseParams | None, config: SessionConfig, tools: SessionTools,
           user: ConversationItem | None) -> ReplySettings:
        instructions = params.instructions if params is not None and params.instructions else config.instructions
        context = user.context if user is not None else None
        if context is not None:
            instructions = f"{instructions}\n\n{context_line(context)}"
        modality = (params.output_modalities[0] if params is not None and params.output_modalities
                    else config.output_modality)
        override = None
        if params is not None and (params.tools is not None or params.tool_choice is not None):
            override = tools.config.updated(params.model_dump(include={"tools", "tool_choice"}, exclude_none=True),
                                            "response")
        budget = params.max_output_tokens if params is not None and params.max_output_tokens is not None \
            else config.max_output_tokens
        return cls(instructions, modality == "text", budget, params.metadata if params is not None else None,
                   override)

    @staticmethod
    def check(params: ce.ResponseParams, responder: Responder, tools: SessionTools) -> None:
        """response.create's settings, checked before the response is queued: ProtocolError for what cannot be
        done (tools for a responder that calls none, out-of-band responses, custom input)."""
        if params.output_modalities is not None:
            output_modality(params.output_modalities, "response.output_modalities")
        if (params.tools or params.tool_choice is not None) and not getattr(responder, "supports_tools", False):
            raise ProtocolError("invalid_value", tools_unsupported(responder.name, "response.tools"),
                                param="response.tools")
        if params.tools is not None or params.tool_choice is not None:
            tools.config.updated(params.model_dump(include={"tools", "tool_choice"}, exclude_none=True), "response")
        if params.conversation not in (None, "auto"):
            raise ProtocolError("unsupported_value", "out-of-band responses (conversation 'none') are not "
                                "supported", param="response.conversation")
        if params.input is not None:
            raise ProtocolError("unsupported_value", "custom response input is not supported",
                                param="response.input")


class ReplyInputs:
    def __init__(self, services: AgentServices, tenant: str, conversation: Conversation, tools: SessionTools,
                 cloning: CallerCloning, reader: TurnReader) -> None:
        self._services = services
        self._tenant = tenant
        self._conversation = conversation
        self._tools = tools
        self._cloning = cloning
        self._reader = reader
        self._sampled: tuple[str, VoiceReference] | None = None  # (turn, its clone from a clause's speech)

    def preparation(self, settings: ReplySettings, config: SessionConfig, responder: Responder,
                    user: ConversationItem | None, audio16k: np.ndarray | None,
                    timing: TurnTiming, listing: asyncio.Task | None,
                    voice_sample: tuple[str, WireAudio, str] | None = None) -> Callable[[], Awaitable[Preparation]]:
        """`listing`: the operator's MCP servers being listed, if they still are (their tools wait for it).
        `voice_sample`: (the turn, its speech so far, the words of it), to clone when nothing else is (a clause
        of the caller's first turn, translated while they speak it; cloned once per turn)."""
        caller_voice = config.voice == CALLER_VOICE and not settings.text_only
        wants_turn_voice = caller_voice and self._cloning.reference is None and self._cloning.task is None
        wants_codes = config.responder == "native"
        limits = self._services.reply_limits
        context = user.context if user is not None else None

        def history() -> list[dict[str, Any]]:
            return self._conversation.chat_messages(settings.instructions)

        async def prepare() -> Preparation:
            if listing is not None:  # the operator's tools are offered once listed
                await within("tools_listing", limits.tools_listing_s, asyncio.shield(listing))
            codes = await self._reader.codes(user) if wants_codes else None
            box = self._tools.toolbox(settings.tools) if getattr(responder, "supports_tools", False) else None
            request = ReplyRequest(messages=history(), user_audio_codes=codes,
                                   on_first_text=lambda: timing.mark("first_text"), user_audio16k=audio16k,
                                   tools=box.tools if box else (),
                                   tool_choice=box.tool_choice if box else ToolConfig().tool_choice)
            if caller_voice and self._cloning.cloning:  # the reply speaks in the newest clone
                await within("caller_voice", limits.caller_voice_s, asyncio.shield(self._cloning.task))
            if settings.text_only:  # nothing is spoken: no voice to fetch
                return Preparation(request, history)
            if caller_voice:  # the gathered clone, else this very turn (a first turn has nothing else yet)
                reference = self._cloning.reference or (await self._reader.voice(user) if wants_turn_voice else None)
                if reference is None and voice_sample is not None:
                    reference = await self._sample_voice(*voice_sample)
            else:
                reference = await self._voice(config.voice)
            speakers = tuple([await self._voice(name) for name in config.speakers])
            return Preparation(request, history, reference,
                               scene=delivery_scene(context) if context is not None else None,
                               speaker_voices=speakers if all(speakers) else ())

        return prepare

    async def _sample_voice(self, item_id: str, sample: WireAudio, words: str) -> VoiceReference | None:
        if self._sampled is not None and self._sampled[0] == item_id:
            return self._sampled[1]  # the turn's first clause was cloned: its later clauses speak in that voice
        try:
            reference = await self._services.engine.voice(sample.samples, sample.rate, words, stage="user_codes")
        except StageTimeout as exc:  # spoken in the model's own voice rather than not at all
            log.error("cloning the caller's voice from their speech so far stalled: %s", exc)
            return None
        except Exception:  # noqa: BLE001 - as above
            log.exception("cloning the caller's voice from their speech so far failed")
            return None
        self._sampled = (item_id, reference)
        return self._sampled[1]

    async def _voice(self, name: str) -> VoiceReference | None:
        return await within("voice_reference", self._services.reply_limits.voice_reference_s,
                            self._services.voice_reference(name, self._tenant))

    async def count_tokens(self, text: str) -> int:
        """Text tokens as the engine counts them (for usage)."""
        return await self._services.engine.count_tokens(text)
