"""Who writes the reply text: `echo` (the user's own words), `llm` (an OpenAI-compatible endpoint) or
`native` (the Higgs model's text head). Each yields speakable phrases as soon as they are complete.

`NativeResponder` is imported on first use: it pulls in torch and transformers, which echo and llm do not need.
"""

from typing import Any

from higgs_agent.agent.responders.base import ReplyRequest, Responder, ResponderError
from higgs_agent.agent.responders.echo import EchoResponder
from higgs_agent.agent.responders.llm import LLMResponder

__all__ = ["EchoResponder", "LLMResponder", "NativeResponder", "ReplyRequest", "Responder", "ResponderError"]


def __getattr__(name: str) -> Any:
    if name == "NativeResponder":
        from higgs_agent.agent.responders.native import NativeResponder

        return NativeResponder
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
