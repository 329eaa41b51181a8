"""Text mode (`output_modalities: ["text"]`) and the text harness that tests turn logic without audio: words
arrive as `response.output_text.*`, tool rounds run as they do in speech, and no reply reaches the engine."""

from __future__ import annotations

import contextlib

import pytest
from mcp_server import CANCEL_FAILURE, ORDER_TOOL

from higgs_agent.agent.responders.echo import EchoResponder
from higgs_agent.agent.responders.llm import LLMResponder
from higgs_agent.agent.services import AgentServices
from higgs_agent.agent.tools.spec import ApprovalPolicy, McpServerSpec
from higgs_agent.model.sampling import SamplingSettings
from higgs_agent.streaming.engine import StreamingEngine
from higgs_agent.testing.fake_llm import ToolCall, Turn
from higgs_agent.testing.text_mode import TextConversation



@pytest.fixture
def services(bundle, transcriber, llm):
    engine = StreamingEngine(bundle)
    yield AgentServices(engine=engine, transcriber=transcriber,
                        responders={"echo": EchoResponder(), "llm": LLMResponder(llm.base_url, model="fake")},
                        default_responder="llm", sampling=SamplingSettings(greedy=True, max_frames=60))
    engine.close()


@contextlib.asynccontextmanager
async def shop_conversation(bundle, transcriber, llm, shop, **options):  # noqa: ANN001, ANN201
    """A text conversation whose server runs the shop's MCP tools without asking."""
    spec = McpServerSpec("shop", server_url=shop.url, require_approval=ApprovalPolicy("never"))
    engine = StreamingEngine(bundle)
    services = AgentServices(engine=engine, transcriber=transcriber, default_responder="llm",
                             responders={"llm": LLMResponder(llm.base_url, model="fake")}, mcp_servers=(spec,),
                             **options)
    try:
        async with TextConversation(services) as chat:
            yield chat
    finally:
        engine.close()


async def test_a_text_reply_is_words_only_and_needs_no_engine_slot(services):
    engine = services.engine
    async with TextConversation(services, session={"higgs": {"responder": "echo"}}) as chat, \
            contextlib.AsyncExitStack() as every_slot:
        for _ in range(engine.slots):  # a spoken reply now would fail at_capacity
            await every_slot.enter_async_context(engine.lease("busy"))
        result = await chat.run("The parcel left the depot. It arrives on Thursday.")
        assert chat.output.audio_samples == 0
        assert chat.session.conversation.get(result.response["output"][0]["id"]).text == result.text
    assert result.status == "completed" and result.response["output_modalities"] == ["text"]
    assert result.text == "The parcel left the depot. It arrives on Thursday."
    deltas = result.of("response.output_text.delta")
    assert len(deltas) == 2 and "".join(d["delta"] for d in deltas) == result.text  # a delta per phrase
    assert result.of("response.output_text.done")[0]["text"] == result.text
    assert result.of("response.content_part.added")[0]["part"] == {"type": "text", "text": ""}
    assert result.response["output"][0]["content"] == [{"type": "output_text", "text": result.text}]
    assert not [e for e in result.events if "audio" in e["type"]]
    assert result.response["usage"]["output_token_details"]["audio_tokens"] == 0


async def test_a_function_call_round_in_text(services, llm):
    llm.turns = [Turn(text="Let me check.", tool_calls=[ToolCall("lookup_order", '{"order_number": "A1001"}')]),
                 Turn(text="It shipped on Monday.")]
    async with TextConversation(services, session={"tools": [ORDER_TOOL]}) as chat:
        asked = await chat.run("Where is my order A1001?")
        assert [item["type"] for item in asked.response["output"]] == ["message", "function_call"]
        assert asked.text == "Let me check." and asked.calls[0]["name"] == "lookup_order"
        answered = await chat.answer(asked.calls[0]["call_id"], '{"status": "shipped Monday"}')
    assert answered.text == "It shipped on Monday."
    sent = llm.requests[-1]["messages"]
    assert any(m.get("role") == "tool" and "shipped Monday" in m.get("content", "") for m in sent)
    assert any(m.get("role") == "assistant" and m.get("content") == "Let me check." for m in sent)


async def test_an_mcp_tool_the_server_runs_in_text(bundle, transcriber, llm, shop):
    llm.turns = [Turn(tool_calls=[ToolCall("lookup_order", '{"order_number": "A1001"}')]),
                 Turn(text="It arrives on Thursday.")]
    async with shop_conversation(bundle, transcriber, llm, shop) as chat:
        result = await chat.run("Where is A1001?")
    assert [item["type"] for item in result.response["output"]] == ["mcp_call", "message"]
    assert "Thursday" in result.response["output"][0]["output"] and result.text == "It arrives on Thursday."


async def test_a_failing_and_a_slow_mcp_tool_are_answers_the_model_speaks_about(bundle, transcriber, llm, shop):
    shop.state.reset()
    llm.turns = [Turn(tool_calls=[ToolCall("cancel_order", '{"order_number": "A1001"}'),
                                  ToolCall("slow_report", '{"seconds": 30}')]),
                 Turn(text="Sorry, I could not do either of those just now.")]
    async with shop_conversation(bundle, transcriber, llm, shop, mcp_call_timeout_s=1.0) as chat:
        result = await chat.run("Cancel A1001 and build me a report.")  # never hangs on a tool
    calls = [item for item in result.response["output"] if item["type"] == "mcp_call"]
    assert [c["error"]["type"] for c in calls] == ["tool_execution_error", "protocol_error"]
    assert CANCEL_FAILURE in calls[0]["error"]["message"] and "within 1 s" in calls[1]["error"]["message"]
    assert len(result.of("response.mcp_call.failed")) == 2
    assert shop.state.slow_cancelled.wait(10)  # the timeout reached the server
    assert result.status == "completed" and result.text.startswith("Sorry")
    told = [m["content"] for m in llm.requests[-1]["messages"] if m.get("role") == "tool"]
    assert any(CANCEL_FAILURE in t for t in told) and any("did not answer" in t for t in told)


async def test_arguments_that_break_the_schema_are_reported_not_handed_on(services, llm):
    llm.turns = [Turn(tool_calls=[ToolCall("lookup_order", '{"order": 5}')]),  # missing order_number
                 Turn(text="Which order number do you mean?")]
    async with TextConversation(services, session={"tools": [ORDER_TOOL]}) as chat:
        result = await chat.run("Where is my order?")
    errors = [e["error"] for e in result.of("error")]
    assert errors and errors[0]["code"] == "invalid_tool_call" and "order_number" in errors[0]["message"]
    assert not result.of("response.function_call_arguments.done") and not result.calls  # never the client's
    assert result.text == "Which order number do you mean?"
    retry = llm.requests[-1]["messages"]  # the model was told what was wrong
    assert any(m.get("role") == "tool" and "order_number" in m.get("content", "") for m in retry)


async def test_echo_refuses_tools_with_the_param(services):
    async with TextConversation(services, session={"higgs": {"responder": "echo"}}) as chat:
        start = len(chat.output.events)
        await chat.send({"type": "session.update", "session": {"tools": [ORDER_TOOL]}})
        error, updated = chat.output.events[start:start + 2]
    assert error["type"] == "error" and error["error"]["param"] == "session.tools"
    assert "echo responder cannot call tools" in error["error"]["message"]
    assert updated["type"] == "session.updated" and updated["session"]["tools"] == []
    assert updated["session"]["higgs"]["responder"] == "echo"


async def test_output_modalities_are_audio_or_text_never_both(services):
    async with TextConversation(services, session={"higgs": {"responder": "echo"}}) as chat:
        assert chat.output.events[-1]["session"]["output_modalities"] == ["text"]
        await chat.send({"type": "session.update", "session": {"output_modalities": ["audio", "text"]}})
        refused = chat.output.events[-1]
        assert refused["type"] == "error" and refused["error"]["param"] == "session.output_modalities"
        await chat.send({"type": "session.update", "session": {"output_modalities": ["audio"]}})
        assert chat.output.events[-1]["session"]["output_modalities"] == ["audio"]
        await chat.send({"type": "conversation.item.create", "item": {
            "type": "message", "role": "user", "content": [{"type": "input_text", "text": "Just text, please."}]}})
        start = len(chat.output.events)
        await chat.send({"type": "response.create", "response": {"output_modalities": ["text"]}})
        done = chat.output.events[await chat.output.next_of("response.done", start, 30)]
    assert done["response"]["output_modalities"] == ["text"]
    assert done["response"]["output"][0]["content"] == [{"type": "output_text", "text": "Just text, please."}]
    assert chat.output.audio_samples == 0
