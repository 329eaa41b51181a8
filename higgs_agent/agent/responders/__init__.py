"""Who writes the reply text: `echo` (the user's own words), `llm` (an OpenAI-compatible endpoint), `local` (an
instruct LLM in this process) or `native` (the Higgs model's text head). Each yields speakable phrases as soon
as they are complete.

`NativeResponder` and `LocalResponder` are imported on first use: they pull in torch and transformers, which
echo and llm do not need.
"""

from typing import Any

from higgs_agent.agent.responders.base import ReplyRequest, Responder, ResponderError
from higgs_agent.agent.responders.echo import EchoResponder
from higgs_agent.agent.responders.llm import LLMResponder

__all__ = ["EchoResponder", "LLMResponder", "LocalResponder", "NativeResponder", "ReplyRequest", "Responder",
           "ResponderError"]


def __getattr__(name: str) -> Any:
    if name == "NativeResponder":
        from higgs_agent.agent.responders.native import NativeResponder

        return NativeResponder
    if name == "LocalResponder":
        from higgs_agent.agent.responders.local import LocalResponder

        return LocalResponder
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
