"""Tool calling in the conversation, over a real socket: function calls handed to the client, MCP tools the
server runs itself (a real MCP server over HTTP and stdio), and a barge-in during a tool call (#14). The turn
logic of tool rounds (invalid arguments, failing and slow tools, responders without tools) is tested in text
mode, in milliseconds: tests/test_text_mode.py."""

from __future__ import annotations

import asyncio
import json

import pytest
from agent_server import Client, running_server
from higgs_agent.testing.fake_llm import ToolCall, Turn
from mcp_server import ORDER_TOOL, STDIO_COMMAND
from speech import pad, synthesize

from higgs_agent.agent.responders.echo import EchoResponder
from higgs_agent.agent.responders.llm import LLMResponder
from higgs_agent.agent.services import AgentServices
from higgs_agent.agent.tools.spec import ApprovalPolicy, McpServerSpec
from higgs_agent.model.sampling import SamplingSettings
from higgs_agent.streaming.engine import StreamingEngine

pytestmark = pytest.mark.timeout(300)
GREEDY = SamplingSettings(greedy=True, max_frames=120)


def make_services(bundle, transcriber, llm, **options) -> AgentServices:
    return AgentServices(engine=StreamingEngine(bundle), transcriber=transcriber,
                         responders={"echo": EchoResponder(), "llm": LLMResponder(llm.base_url, model="fake")},
                         default_responder="llm", sampling=GREEDY, **options)


@pytest.fixture(scope="module")
def server(bundle, transcriber, llm):
    with running_server(make_services(bundle, transcriber, llm)) as base:
        yield base


async def ask(client: Client, text: str) -> None:
    await client.send({"type": "conversation.item.create", "item": {
        "type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}})
    await client.send({"type": "response.create"})


def of(client: Client, kind: str) -> list[dict]:
    return [e for e in client.events if e["type"] == kind]


async def test_a_function_call_goes_to_the_client_and_its_output_comes_back_to_the_model(server, llm):
    llm.turns = [Turn(text="Let me check that for you.",
                      tool_calls=[ToolCall("lookup_order", '{"order_number": "A1001"}', id="call_7")]),
                 Turn(text="Your order A1001 shipped on Monday and arrives on Thursday.")]
    client = await Client.connect(server)
    await client.send({"type": "session.update", "session": {"tools": [ORDER_TOOL], "tool_choice": "auto"}})
    updated = await client.until("session.updated")
    assert updated["session"]["tools"][0]["name"] == "lookup_order"
    await ask(client, "Where is my order A1001?")
    done = await client.until("response.done")

    # speech first, then the call, as the model wrote them; the response ends with the call
    output = done["response"]["output"]
    assert [item["type"] for item in output] == ["message", "function_call"]
    call = output[1]
    assert (call["call_id"], call["name"], json.loads(call["arguments"])) == ("call_7", "lookup_order",
                                                                              {"order_number": "A1001"})
    deltas = "".join(e["delta"] for e in of(client, "response.function_call_arguments.delta"))
    arguments_done = of(client, "response.function_call_arguments.done")[0]
    assert deltas == arguments_done["arguments"] == call["arguments"]  # streamed in pieces, whole at the end
    assert arguments_done["output_index"] == 1 and arguments_done["call_id"] == "call_7"
    assert len(client.reply_audio(done["response"]["id"])) > 0  # "Let me check" was spoken
    assert llm.requests[-1]["tools"][0]["function"]["name"] == "lookup_order"

    await client.send({"type": "conversation.item.create", "item": {
        "type": "function_call_output", "call_id": "call_7", "output": '{"status": "shipped"}'}})
    await client.send({"type": "response.create"})
    second = await client.until("response.done")
    await client.close()
    assert second["response"]["status"] == "completed"
    assert second["response"]["output"][0]["content"][0]["transcript"].startswith("Your order A1001 shipped")
    sent = llm.requests[-1]["messages"]  # the model saw its call and the client's output
    calls = [m for m in sent if m.get("tool_calls")]
    assert calls and calls[-1]["tool_calls"][0]["id"] == "call_7"
    assert any(m.get("role") == "tool" and m.get("content") == '{"status": "shipped"}' for m in sent)
    assert len(client.reply_audio(second["response"]["id"])) > 0


@pytest.mark.parametrize("transport", ["http", "stdio"])
async def test_an_mcp_tool_is_run_by_the_server_and_the_answer_uses_its_result(bundle, transcriber, llm, shop,
                                                                               transport):
    where = {"server_url": shop.url} if transport == "http" else {"command": STDIO_COMMAND}
    spec = McpServerSpec("shop", require_approval=ApprovalPolicy("never"), **where)
    llm.turns = [Turn(text="One moment.", tool_calls=[ToolCall("lookup_order", '{"order_number": "A1001"}')]),
                 Turn(text="It shipped on Monday and arrives on Thursday.")]
    services = make_services(bundle, transcriber, llm, mcp_servers=(spec,))
    with running_server(services) as base:
        client = await Client.connect(base)
        listed = await client.until("mcp_list_tools.completed", timeout=60)
        await ask(client, "Where is my order A1001?")
        done = await client.until("response.done")
        await client.close()
    tools = next(e for e in of(client, "conversation.item.added") if e["item"]["id"] == listed["item_id"])
    assert "lookup_order" in [t["name"] for t in tools["item"]["tools"]]
    assert done["response"]["status"] == "completed"
    types = [item["type"] for item in done["response"]["output"]]
    assert types == ["message", "mcp_call", "message"]  # one response: words, the call, the answer
    call = done["response"]["output"][1]
    assert call["server_label"] == "shop" and call["output"] == "Order A1001 is shipped on Monday and arriving on Thursday."
    assert of(client, "response.mcp_call.in_progress") and of(client, "response.mcp_call.completed")
    sent = llm.requests[-1]["messages"]
    assert any(m.get("role") == "tool" and "shipped on Monday" in m.get("content", "") for m in sent)
    assert done["response"]["output"][2]["content"][0]["transcript"] == "It shipped on Monday and arrives on Thursday."


async def test_a_barge_in_during_a_tool_call_cancels_it_and_leaves_no_stray_reply(bundle, transcriber, llm, shop):
    shop.state.reset()
    spec = McpServerSpec("shop", server_url=shop.url, require_approval=ApprovalPolicy("never"))
    llm.turns = [Turn(tool_calls=[ToolCall("slow_report", '{"seconds": 20}')]),
                 Turn(text="The report is ready."),  # must never be asked for: the call was cut
                 ]
    services = make_services(bundle, transcriber, llm, mcp_servers=(spec,))
    with running_server(services) as base:
        client = await Client.connect(base)
        await client.until("mcp_list_tools.completed", timeout=60)
        await ask(client, "Build me the sales report.")
        await client.until("response.mcp_call.in_progress")
        assert await asyncio.to_thread(shop.state.slow_started.wait, 10)
        llm.turns = [Turn(text="Sure, what else?")]
        speech, _ = synthesize("stop, never mind", sample_rate=24000)
        await client.send_audio(pad(speech, 24000, lead_ms=200, tail_ms=1200))
        cancelled = await client.until("response.done")
        answer = await client.until("response.done")
        assert await asyncio.to_thread(shop.state.slow_cancelled.wait, 10)  # the server saw the call cancelled
        # A stray reply to the cut call would be asked for by now; the next turn's reply must be the next one.
        llm.turns = [Turn(text="Goodbye.")]
        await ask(client, "That is all.")
        last = await client.until("response.done")
        await client.close()
    assert cancelled["response"]["status"] == "cancelled"
    assert cancelled["response"]["status_details"]["reason"] == "turn_detected"
    assert answer["response"]["status"] == "completed"
    assert last["response"]["output"][0]["content"][0]["transcript"] == "Goodbye."
    assert len(of(client, "response.created")) == 3  # the cut call's result started nothing
    assert not any("report is ready" in e["delta"] for e in of(client, "response.output_audio_transcript.delta"))
