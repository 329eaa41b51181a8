"""Tool calling below the session: tool specs, the llm responder's function calls (against a local
OpenAI-compatible server that streams calls in pieces), and tools on real MCP servers over streamable HTTP and
stdio (tests/mcp_server.py, built with the official SDK)."""

import asyncio
import json
import os
import re
import signal
import socket
from contextlib import aclosing

import pytest
from higgs_agent.testing.fake_llm import FakeLLM, ToolCall, Turn
from mcp_server import CANCEL_FAILURE, ORDERS, STDIO_COMMAND, McpTestServer

from higgs_agent.agent.responders import EchoResponder, LLMResponder, ReplyRequest, Responder, ResponderError
from higgs_agent.agent.responders.base import spoken_turns, tools_unsupported
from higgs_agent.agent.tools import (
    CallAssembler,
    FunctionCallArgumentsDelta,
    FunctionCallDone,
    FunctionCallInvalid,
    FunctionCallStarted,
    FunctionTool,
    InvalidArguments,
    McpServerSpec,
    ToolChoice,
    ToolConfig,
    Toolbox,
    ToolSpecError,
    function_call_message,
    function_output_message,
    parse_tool_choice,
    parse_tools,
    well_formed,
)
from higgs_agent.agent.tools.calls import MalformedToolCall
from higgs_agent.agent.tools.chat_history import NO_OUTPUT
from higgs_agent.agent.tools.mcp_client import (
    McpConnection,
    McpConnections,
    McpServerError,
    parse_mcp_server_flag,
)
from higgs_agent.agent.tools.spec import parse_mcp_server
from higgs_agent.protocol.errors import ProtocolError

# Async tests share the session loop with the async fixtures (an HTTP client pool belongs to one loop).
on_session_loop = pytest.mark.asyncio(loop_scope="session")

LOOKUP_ORDER = {
    "type": "function", "name": "lookup_order", "description": "Look up an order by its order number.",
    "parameters": {"type": "object", "properties": {"order_number": {"type": "string"}},
                   "required": ["order_number"], "additionalProperties": False},
}
WEATHER = {
    "type": "function", "name": "get_weather", "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
HISTORY = [
    {"role": "system", "content": "You are a shop assistant."},
    {"role": "user", "content": "Where is my order A1001?"},
]


def tools(*entries: dict) -> tuple[FunctionTool, ...]:
    return tuple(t for t in parse_tools(list(entries)) if isinstance(t, FunctionTool))


async def collect(iterator) -> list:
    return [event async for event in iterator]


# --- tool specs ---------------------------------------------------------------------------------------------

def test_function_tools_parse_into_chat_tools_and_back():
    (lookup, weather) = tools(LOOKUP_ORDER, WEATHER)
    assert lookup.to_dict() == LOOKUP_ORDER and not lookup.runs_on_server
    assert weather.to_chat_tool() == {"type": "function", "function": {
        "name": "get_weather", "description": "The weather in a city.", "parameters": WEATHER["parameters"]}}
    bare = parse_tools([{"name": "hang_up"}])[0]  # `type` may be left out; no parameters means none
    assert bare.to_chat_tool() == {"type": "function", "function": {
        "name": "hang_up", "parameters": {"type": "object", "properties": {}}}}
    assert bare.check_arguments("") == {} and bare.check_arguments("{}") == {}


@pytest.mark.parametrize(("value", "param", "words"), [
    ({"type": "function"}, "session.tools", "must be a list"),
    ([42], "session.tools.0", "must be an object"),
    ([{"type": "code_interpreter"}], "session.tools.0.type", "'function' or 'mcp'"),
    ([{"type": "function", "name": "look up"}], "session.tools.0.name", "letters, digits"),
    ([{"type": "function", "name": "x" * 65}], "session.tools.0.name", "1 to 64"),
    ([LOOKUP_ORDER, WEATHER, LOOKUP_ORDER], "session.tools.2.name", "two functions are named 'lookup_order'"),
    ([{"type": "function", "name": "f", "description": 3}], "session.tools.0.description", "must be a string"),
    ([{"type": "function", "name": "f", "parameters": "none"}], "session.tools.0.parameters", "JSON Schema object"),
    ([{"type": "function", "name": "f", "parameters": {"type": "string"}}], "session.tools.0.parameters",
     "describe an object"),
    ([WEATHER, {"type": "function", "name": "f", "parameters": {"type": "object", "properties": {
        "n": {"type": "integer", "minimum": "zero"}}}}], "session.tools.1.parameters.properties.n.minimum",
     "not a valid JSON Schema"),
    ([{"type": "mcp", "server_url": "http://127.0.0.1:1/mcp"}], "session.tools.0.server_label", "start with a letter"),
    ([{"type": "mcp", "server_label": "shop"}], "session.tools.0.server_url", "http:// or https://"),
    ([{"type": "mcp", "server_label": "shop", "server_url": "file:///etc/passwd"}], "session.tools.0.server_url",
     "http:// or https://"),
    ([{"type": "mcp", "server_label": "shop", "command": ["rm", "-rf", "/"]}], "session.tools.0.server_url",
     "http:// or https://"),  # a client never starts a process here
    ([{"type": "mcp", "server_label": "gcal", "connector_id": "connector_googlecalendar"}],
     "session.tools.0.connector_id", "not supported"),
    ([{"type": "mcp", "server_label": "a", "server_url": "http://h/mcp"},
      {"type": "mcp", "server_label": "a", "server_url": "http://i/mcp"}], "session.tools.1.server_label",
     "two MCP servers"),
    ([{"type": "mcp", "server_label": "a", "server_url": "http://h/mcp", "headers": {"X-Key": 1}}],
     "session.tools.0.headers", "string values"),
    ([{"type": "mcp", "server_label": "a", "server_url": "http://h/mcp", "allowed_tools": "lookup_order"}],
     "session.tools.0.allowed_tools", "list of tool names or a filter"),
    ([{"type": "mcp", "server_label": "a", "server_url": "http://h/mcp", "allowed_tools": {"read_only": "yes"}}],
     "session.tools.0.allowed_tools.read_only", "true or false"),
    ([{"type": "mcp", "server_label": "a", "server_url": "http://h/mcp", "require_approval": "sometimes"}],
     "session.tools.0.require_approval", "'always', 'never'"),
    ([{"type": "mcp", "server_label": "a", "server_url": "http://h/mcp",
       "require_approval": {"never": {"tool_names": [3]}}}], "session.tools.0.require_approval.never.tool_names",
     "list of tool names"),
])
def test_bad_tools_are_refused_with_the_path_of_the_bad_field(value, param, words):
    with pytest.raises(ToolSpecError, match=words) as info:
        parse_tools(value)
    assert info.value.param == param and info.value.code == "invalid_value"
    assert isinstance(info.value, ProtocolError)  # the session reports it as any bad field


def test_a_response_override_is_checked_by_the_same_code_under_its_own_path():
    with pytest.raises(ToolSpecError) as info:
        ToolConfig().updated({"tools": [WEATHER, {"name": "bad name"}]}, "response")
    assert info.value.param == "response.tools.1.name"


@pytest.mark.parametrize(("value", "expected", "chat"), [
    ("auto", ToolChoice("auto"), "auto"),
    ("none", ToolChoice("none"), "none"),
    ("required", ToolChoice("required"), "required"),
    ({"type": "function", "name": "get_weather"}, ToolChoice("function", name="get_weather"),
     {"type": "function", "function": {"name": "get_weather"}}),
])
def test_tool_choices_parse_and_map_to_chat_completions(value, expected, chat):
    choice = parse_tool_choice(value)
    assert choice == expected and choice.to_dict() == value and choice.to_chat() == chat


def test_an_mcp_tool_choice_names_a_server_and_optionally_a_tool():
    value = {"type": "mcp", "server_label": "shop", "name": "lookup_order"}
    assert parse_tool_choice(value).to_dict() == value
    assert parse_tool_choice({"type": "mcp", "server_label": "shop"}) == ToolChoice("mcp", server_label="shop")


@pytest.mark.parametrize(("value", "param"), [
    ("sometimes", "session.tool_choice"),
    (None, "session.tool_choice"),
    ({"type": "function"}, "session.tool_choice.name"),
    ({"type": "mcp", "server_label": ""}, "session.tool_choice.server_label"),
    ({"type": "file_search"}, "session.tool_choice.type"),
])
def test_bad_tool_choices_name_their_field(value, param):
    with pytest.raises(ToolSpecError) as info:
        parse_tool_choice(value)
    assert info.value.param == param


def test_tool_config_updates_keep_what_is_absent_and_check_the_choice_against_the_tools():
    config = ToolConfig().updated({"tools": [LOOKUP_ORDER, WEATHER],
                                   "tool_choice": {"type": "function", "name": "get_weather"}}, "session")
    assert [t.name for t in config.functions] == ["lookup_order", "get_weather"]
    same = config.updated({"instructions": "unrelated"}, "session")
    assert same == config
    with pytest.raises(ToolSpecError, match="'get_weather', which is not among the tools") as info:
        config.updated({"tools": [LOOKUP_ORDER]}, "session")  # the forced function would be gone
    assert info.value.param == "session.tool_choice"
    with pytest.raises(ToolSpecError, match="MCP server 'shop'") as info:
        config.updated({"tool_choice": {"type": "mcp", "server_label": "shop"}}, "response")
    assert info.value.param == "response.tool_choice"
    cleared = config.updated({"tools": None, "tool_choice": None}, "session")
    assert cleared == ToolConfig() and cleared.to_dict() == {"tools": [], "tool_choice": "auto"}


def test_mcp_server_specs_filter_tools_and_decide_approval():
    spec = parse_mcp_server({"type": "mcp", "server_label": "shop", "server_url": "https://shop.example/mcp",
                             "authorization": "tok", "headers": {"X-Shop": "7"},
                             "allowed_tools": {"read_only": True},
                             "require_approval": {"never": {"tool_names": ["lookup_order"]}}}, "session.tools.0")
    assert spec.headers == {"X-Shop": "7", "Authorization": "Bearer tok"}
    assert spec.allows("lookup_order", read_only=True) and not spec.allows("cancel_order", read_only=False)
    assert not spec.require_approval.requires_approval("lookup_order", read_only=True)
    assert spec.require_approval.requires_approval("server_pid", read_only=True)  # no filter matched: ask
    echoed = spec.to_dict()
    assert echoed["headers"] == {"X-Shop": "<redacted>", "Authorization": "<redacted>"}  # credentials stay here
    assert echoed["require_approval"] == {"never": {"tool_names": ["lookup_order"]}}
    by_name = parse_mcp_server({"server_label": "s", "server_url": "http://h/mcp", "allowed_tools": ["a", "b"]}, "p")
    assert by_name.allows("a", False) and not by_name.allows("c", True)
    assert by_name.require_approval.requires_approval("a", False)  # OpenAI's default: approval required


def test_arguments_are_checked_against_the_schema():
    (lookup,) = tools(LOOKUP_ORDER)
    assert lookup.check_arguments('{"order_number": "A1001"}') == {"order_number": "A1001"}
    with pytest.raises(InvalidArguments, match=r"not JSON"):
        lookup.check_arguments('{"order_number": "A10')
    with pytest.raises(InvalidArguments, match=r"1001 is not of type 'string' \(at \['order_number'\]\)"):
        lookup.check_arguments('{"order_number": 1001}')
    with pytest.raises(InvalidArguments, match="'order_number' is a required property"):
        lookup.check_arguments("")
    with pytest.raises(InvalidArguments, match="must be a JSON object"):
        lookup.check_arguments('["A1001"]')
    with pytest.raises(InvalidArguments, match="Additional properties"):
        lookup.check_arguments('{"order_number": "A1001", "rush": true}')


# --- function calls in the chat history ---------------------------------------------------------------------

def test_a_history_without_calls_is_unchanged():
    assert well_formed(HISTORY) == HISTORY


def test_calls_of_one_turn_merge_behind_their_words_and_outputs_follow_them():
    items = [
        *HISTORY,
        {"role": "assistant", "content": "Let me check both."},
        function_call_message("call_1", "lookup_order", '{"order_number": "A1001"}'),
        function_call_message("call_2", "lookup_order", '{"order_number": "B2002"}'),
        {"role": "user", "content": "Hurry up please."},  # spoken before the client sent the outputs
        function_output_message("call_2", "being packed"),
        function_output_message("call_1", "shipped"),
        {"role": "assistant", "content": "One has shipped, one is being packed."},
    ]
    assert well_formed(items) == [
        *HISTORY,
        {"role": "assistant", "content": "Let me check both.", "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "lookup_order",
                                                              "arguments": '{"order_number": "A1001"}'}},
            {"id": "call_2", "type": "function", "function": {"name": "lookup_order",
                                                              "arguments": '{"order_number": "B2002"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "shipped"},
        {"role": "tool", "tool_call_id": "call_2", "content": "being packed"},
        {"role": "user", "content": "Hurry up please."},
        {"role": "assistant", "content": "One has shipped, one is being packed."},
    ]


def test_an_unanswered_call_gets_a_placeholder_and_a_stray_output_is_dropped():
    items = [*HISTORY, function_call_message("call_1", "lookup_order", "{}"),
             function_output_message("call_unknown", "what?"), {"role": "user", "content": "Hello?"}]
    assert well_formed(items) == [
        *HISTORY, function_call_message("call_1", "lookup_order", "{}"),
        {"role": "tool", "tool_call_id": "call_1", "content": NO_OUTPUT}, {"role": "user", "content": "Hello?"}]


# --- what one response may call -------------------------------------------------------------------------------

def listed(label: str, *names: str) -> list[FunctionTool]:
    return [FunctionTool(name=n, server_label=label, remote_name=n) for n in names]


def test_toolbox_gives_every_tool_a_unique_name_the_endpoint_accepts():
    config = ToolConfig().updated({"tools": [LOOKUP_ORDER, {"type": "mcp", "server_label": "shop",
                                                            "server_url": "http://h/mcp"},
                                             {"type": "mcp", "server_label": "crm", "server_url": "http://i/mcp"}]},
                                  "session")
    box = Toolbox.build(config, {"shop": listed("shop", "lookup_order", "search", "files.read"),
                                 "crm": listed("crm", "search")})
    names = [t.name for t in box.tools]
    assert names == ["lookup_order", "shop_lookup_order", "search", "shop_files_read", "crm_search"]
    crm = box.find("crm_search")
    assert crm is not None and (crm.server_label, crm.remote_name) == ("crm", "search")
    assert box.find("lookup_order").server_label is None  # the client's function keeps its name


def test_toolbox_resolves_an_mcp_tool_choice():
    config = ToolConfig().updated({"tools": [WEATHER, {"type": "mcp", "server_label": "shop",
                                                       "server_url": "http://h/mcp"}],
                                   "tool_choice": {"type": "mcp", "server_label": "shop", "name": "get_weather"}},
                                  "session")
    box = Toolbox.build(config, {"shop": listed("shop", "get_weather", "lookup_order")})
    assert box.tool_choice == ToolChoice("function", name="shop_get_weather")
    anything = Toolbox.build(config.updated({"tool_choice": {"type": "mcp", "server_label": "shop"}}, "session"),
                             {"shop": listed("shop", "get_weather", "lookup_order")})
    assert anything.tool_choice == ToolChoice("required")
    assert [t.name for t in anything.tools] == ["shop_get_weather", "lookup_order"]  # only its own, names kept
    with pytest.raises(ToolSpecError, match="did not list it") as info:
        Toolbox.build(config, {"shop": listed("shop", "lookup_order")})
    assert info.value.param == "session.tool_choice.name"
    with pytest.raises(ToolSpecError, match="has no tools"):
        Toolbox.build(config.updated({"tool_choice": {"type": "mcp", "server_label": "shop"}}, "session"), {})


# --- streamed call pieces -------------------------------------------------------------------------------------

def test_call_pieces_without_index_or_id_still_make_whole_calls():
    assembler = CallAssembler(tools(WEATHER), make_call_id=lambda: "call_made")
    events = [*assembler.piece({"function": {"arguments": '{"ci'}}),  # arguments before the name
              *assembler.piece({"function": {"name": "get_", "arguments": 'ty": '}}),
              *assembler.piece({"function": {"name": "weather"}}),  # a name sent in two pieces is joined
              *assembler.piece({"function": {"arguments": '"Oslo"}'}}),
              *assembler.piece({"id": "call_b", "function": {"name": "get_weather", "arguments": "{}"}}),
              *assembler.finish()]
    assert events == [
        FunctionCallStarted("call_made", "get_"),
        FunctionCallArgumentsDelta("call_made", '{"city": '),
        FunctionCallArgumentsDelta("call_made", '"Oslo"}'),
        FunctionCallInvalid("call_made", "get_", '{"city": "Oslo"}',
                            "the model called the function 'get_', which is not among its tools (get_weather)"),
        FunctionCallStarted("call_b", "get_weather"),
        FunctionCallArgumentsDelta("call_b", "{}"),
        FunctionCallInvalid("call_b", "get_weather", "{}",
                            "the arguments of get_weather do not match its parameters: 'city' is a required "
                            "property (at the arguments)"),
    ]
    with pytest.raises(MalformedToolCall, match="after that call had ended"):
        assembler.piece({"index": 0, "function": {"arguments": "}"}})


# --- the llm responder's function calls ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def llm_server():
    with FakeLLM(chunk_chars=4) as server:
        yield server


@pytest.fixture
def fake(llm_server):
    llm_server.turns = []
    llm_server.delay_s = 0.0
    llm_server.ignore_stream = False
    llm_server.script = None
    return llm_server


@pytest.fixture
async def llm(fake):
    responder = LLMResponder(fake.base_url, model="fake-model")
    yield responder
    await responder.aclose()


def call_events(events: list, call_id: str) -> list:
    return [e for e in events if not isinstance(e, str) and e.call_id == call_id]


@on_session_loop
async def test_llm_speaks_first_then_streams_the_call_with_its_whole_arguments(fake, llm):
    arguments = json.dumps({"order_number": "A1001"})
    fake.turns = [Turn("Let me check that order for you.", [ToolCall("lookup_order", arguments, id="call_abc")])]
    request = ReplyRequest(HISTORY, tools=tools(LOOKUP_ORDER, WEATHER))
    events = await collect(llm.reply(request))
    assert events[0] == "Let me check that order for you."  # the words come before the call
    assert events[1] == FunctionCallStarted("call_abc", "lookup_order")
    deltas = [e for e in events if isinstance(e, FunctionCallArgumentsDelta)]
    assert len(deltas) > 1 and "".join(d.delta for d in deltas) == arguments  # streamed in pieces, all of it
    assert events[-1] == FunctionCallDone("call_abc", "lookup_order", arguments, {"order_number": "A1001"})
    body = fake.requests[-1]
    assert body["tools"] == [t.to_chat_tool() for t in tools(LOOKUP_ORDER, WEATHER)]
    assert body["tool_choice"] == "auto"
    assert isinstance(llm, Responder) and llm.supports_tools


@on_session_loop
async def test_llm_sends_the_call_and_its_output_back_and_speaks_the_answer(fake, llm):
    fake.turns = [Turn("Your order A1001 has shipped. It arrives on Thursday.")]
    arguments = '{"order_number": "A1001"}'
    history = [*HISTORY, {"role": "assistant", "content": "Let me check that order for you."},
               function_call_message("call_abc", "lookup_order", arguments),
               function_output_message("call_abc", f"Order A1001 is {ORDERS['A1001']}.")]
    events = await collect(llm.reply(ReplyRequest(history, tools=tools(LOOKUP_ORDER))))
    assert events == ["Your order A1001 has shipped.", "It arrives on Thursday."]
    sent = fake.requests[-1]["messages"]
    assert sent[-2] == {"role": "assistant", "content": "Let me check that order for you.", "tool_calls": [
        {"id": "call_abc", "type": "function", "function": {"name": "lookup_order", "arguments": arguments}}]}
    assert sent[-1] == {"role": "tool", "tool_call_id": "call_abc",
                        "content": "Order A1001 is shipped on Monday and arriving on Thursday."}


@on_session_loop
async def test_llm_yields_several_calls_and_later_words_in_the_order_written(fake, llm):
    fake.turns = [Turn("One moment.", [ToolCall("lookup_order", '{"order_number": "A1001"}', id="call_1"),
                                       ToolCall("get_weather", '{"city": "Oslo"}', id="call_2")],
                       text_after="Checking both now.")]
    events = await collect(llm.reply(ReplyRequest(HISTORY, tools=tools(LOOKUP_ORDER, WEATHER))))
    kinds = [e if isinstance(e, str) else (type(e).__name__, e.call_id) for e in events]
    compact = [k for n, k in enumerate(kinds) if n == 0 or k != kinds[n - 1]]  # runs of deltas as one
    assert compact == ["One moment.",
                       ("FunctionCallStarted", "call_1"), ("FunctionCallArgumentsDelta", "call_1"),
                       ("FunctionCallDone", "call_1"),
                       ("FunctionCallStarted", "call_2"), ("FunctionCallArgumentsDelta", "call_2"),
                       ("FunctionCallDone", "call_2"),
                       "Checking both now."]
    assert call_events(events, "call_2")[-1].parsed == {"city": "Oslo"}


@on_session_loop
@pytest.mark.parametrize(("call", "words"), [
    (ToolCall("lookup_order", '{"order_number": 1001}'), r"1001 is not of type 'string'"),
    (ToolCall("lookup_order", '{"order_number": "A10'), r"not JSON"),
    (ToolCall("delete_everything", "{}"), r"'delete_everything', which is not among its tools"),
])
async def test_llm_reports_calls_it_cannot_run(fake, llm, call, words):
    fake.turns = [Turn(tool_calls=[call])]
    events = await collect(llm.reply(ReplyRequest(HISTORY, tools=tools(LOOKUP_ORDER))))
    invalid = events[-1]
    assert isinstance(invalid, FunctionCallInvalid) and invalid.call_id == call.id
    assert invalid.arguments == call.arguments
    assert not any(isinstance(e, FunctionCallDone) for e in events)
    assert re.search(words, invalid.error)


@on_session_loop
async def test_llm_gives_a_call_without_an_id_one_of_its_own(fake, llm):
    fake.turns = [Turn(tool_calls=[ToolCall("get_weather", '{"city": "Lima"}', id=None)])]
    events = await collect(llm.reply(ReplyRequest(HISTORY, tools=tools(WEATHER))))
    ids = {e.call_id for e in events}
    assert len(ids) == 1 and ids.pop().startswith("call_")
    assert isinstance(events[-1], FunctionCallDone)


@on_session_loop
async def test_llm_forces_a_function_when_told_to(fake, llm):
    fake.turns = [Turn(tool_calls=[ToolCall("get_weather", '{"city": "Lima"}')])]
    choice = parse_tool_choice({"type": "function", "name": "get_weather"})
    await collect(llm.reply(ReplyRequest(HISTORY, tools=tools(LOOKUP_ORDER, WEATHER), tool_choice=choice,
                                         parallel_tool_calls=False)))
    body = fake.requests[-1]
    assert body["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert body["parallel_tool_calls"] is False


@on_session_loop
async def test_llm_takes_calls_from_a_server_that_does_not_stream(fake, llm):
    fake.ignore_stream = True
    fake.turns = [Turn("Checking.", [ToolCall("get_weather", '{"city": "Lima"}', id="call_w")])]
    events = await collect(llm.reply(ReplyRequest(HISTORY, tools=tools(WEATHER))))
    assert events == ["Checking.", FunctionCallStarted("call_w", "get_weather"),
                      FunctionCallArgumentsDelta("call_w", '{"city": "Lima"}'),
                      FunctionCallDone("call_w", "get_weather", '{"city": "Lima"}', {"city": "Lima"})]


@on_session_loop
async def test_llm_closing_mid_call_disconnects_from_the_server(fake, llm):
    fake.delay_s = 0.02
    fake.turns = [Turn(tool_calls=[ToolCall("get_weather", json.dumps({"city": "Oslo" * 200}))])]
    async with aclosing(llm.reply(ReplyRequest(HISTORY, tools=tools(WEATHER)))) as events:
        async for event in events:
            if isinstance(event, FunctionCallArgumentsDelta):
                break
    assert await asyncio.to_thread(fake.disconnected.wait, 10)
    assert not fake.completed.is_set()


@on_session_loop
async def test_llm_malformed_call_pieces_fail_the_reply(fake, llm):
    fake.script = ('data: {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": '
                   '{"name": 7}}]}}]}\n\ndata: [DONE]\n\n')
    with pytest.raises(ResponderError, match="malformed tool call.*must be text"):
        await collect(llm.reply(ReplyRequest(HISTORY, tools=tools(WEATHER))))


# --- responders without tools ---------------------------------------------------------------------------------

@on_session_loop
async def test_echo_and_native_declare_that_they_call_no_tools():
    from higgs_agent.agent.responders.native import NativeResponder

    assert EchoResponder.supports_tools is False and NativeResponder.supports_tools is False
    message = tools_unsupported("echo", "response.tools")
    assert "echo responder cannot call tools" in message and "response.tools" in message
    history = [*HISTORY, function_call_message("call_1", "lookup_order", "{}"),
               function_output_message("call_1", "shipped"), {"role": "user", "content": "Thanks, bye."}]
    assert spoken_turns(history) == [*HISTORY, {"role": "user", "content": "Thanks, bye."}]
    assert await collect(EchoResponder().reply(ReplyRequest(history))) == ["Thanks, bye."]


@on_session_loop
async def test_native_replies_over_a_history_with_calls(text_bundle):
    from higgs_agent.agent.responders.native import NativeResponder

    history = [*HISTORY, {"role": "assistant", "content": "Checking.", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "lookup_order", "arguments": "{}"}}]},
        function_output_message("c", "shipped"), {"role": "user", "content": "And now?"}]
    responder = NativeResponder(text_bundle, max_new_tokens=6, greedy=True, min_chars=1, max_chars=8)
    phrases = await collect(responder.reply(ReplyRequest(history)))
    assert phrases and all(isinstance(p, str) for p in phrases)


# --- MCP servers ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mcp_http():
    with McpTestServer() as server:
        yield server


@pytest.fixture
def shop(mcp_http):
    mcp_http.state.reset()
    return McpServerSpec("shop", server_url=mcp_http.url)


@pytest.fixture(params=["http", "stdio"])
async def connection(request, mcp_http):
    spec = (McpServerSpec("shop", server_url=mcp_http.url) if request.param == "http"
            else McpServerSpec("shop", command=STDIO_COMMAND))
    conn = McpConnection(spec, connect_timeout_s=20)
    yield conn
    await conn.aclose()


@on_session_loop
async def test_mcp_lists_and_calls_tools(connection):
    listed_tools = await connection.list_tools()
    by_name = {t.name: t for t in listed_tools}
    assert set(by_name) == {"lookup_order", "slow_report", "cancel_order", "server_pid"}
    lookup = by_name["lookup_order"]
    assert lookup.server_label == "shop" and lookup.remote_name == "lookup_order" and lookup.read_only
    assert lookup.description.startswith("Look up the status of an order")
    assert lookup.parameters["required"] == ["order_number"]
    assert lookup.check_arguments('{"order_number": "A1001"}')  # the server's schema checks our arguments

    result = await connection.call("lookup_order", {"order_number": "A1001"})
    assert result.ok and result.output == f"Order A1001 is {ORDERS['A1001']}."
    assert result.for_model() == result.output


@on_session_loop
async def test_mcp_tool_failure_is_an_answer_the_model_can_speak_about(connection):
    result = await connection.call("cancel_order", {"order_number": "A1001"})
    assert not result.ok and result.error.type == "tool_execution_error"
    assert CANCEL_FAILURE in result.error.message and CANCEL_FAILURE in result.for_model()
    assert result.error.to_dict() == {"type": "tool_execution_error", "message": result.error.message}
    unknown = await connection.call("lookup_order", {"order_number": "Z9"})
    assert unknown.error.type == "tool_execution_error" and "there is no order Z9" in unknown.error.message


@on_session_loop
async def test_mcp_call_past_its_timeout_is_abandoned_and_the_connection_goes_on(connection):
    result = await connection.call("slow_report", {"seconds": 30}, timeout_s=0.5)
    assert result.error is not None and result.error.type == "protocol_error" and result.error.code == -32001
    assert "did not answer within 0.5 s" in result.error.message
    assert (await connection.call("lookup_order", {"order_number": "B2002"})).ok


@on_session_loop
async def test_mcp_timeout_and_cancel_reach_the_server(shop, mcp_http):
    state = mcp_http.state
    conn = McpConnection(shop)
    try:
        result = await conn.call("slow_report", {"seconds": 30}, timeout_s=0.5)
        assert result.error.code == -32001
        assert await asyncio.to_thread(state.slow_cancelled.wait, 10)  # the server stopped working on it
        state.reset()

        task = asyncio.create_task(conn.call("slow_report", {"seconds": 30}))
        assert await asyncio.to_thread(state.slow_started.wait, 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await asyncio.to_thread(state.slow_cancelled.wait, 10)
        assert not state.slow_finished.is_set()
    finally:
        await conn.aclose()


@on_session_loop
async def test_mcp_allowed_tools_filter_by_name_and_read_only(mcp_http):
    by_name = McpConnection(parse_mcp_server({"server_label": "shop", "server_url": mcp_http.url,
                                              "allowed_tools": ["lookup_order", "cancel_order"],
                                              "require_approval": {"never": {"read_only": True}}}, "p"))
    read_only = McpConnection(parse_mcp_server({"server_label": "shop", "server_url": mcp_http.url,
                                                "allowed_tools": {"read_only": True}}, "p"))
    try:
        named = {t.name: t.requires_approval for t in await by_name.list_tools()}
        assert named == {"lookup_order": False, "cancel_order": True}
        assert sorted(t.name for t in await read_only.list_tools()) == ["lookup_order", "server_pid"]
    finally:
        await by_name.aclose()
        await read_only.aclose()


@on_session_loop
async def test_mcp_headers_reach_the_server_and_a_refusal_names_the_status():
    with McpTestServer(required_token="s3cret") as server:
        good = McpConnection(parse_mcp_server({"server_label": "shop", "server_url": server.url,
                                               "authorization": "s3cret"}, "p"))
        bad = McpConnection(McpServerSpec("shop", server_url=server.url, headers={"Authorization": "Bearer nope"}))
        try:
            assert (await good.call("lookup_order", {"order_number": "A1001"})).ok
            with pytest.raises(McpServerError) as info:
                await bad.list_tools()
            assert info.value.error.type == "http_error" and info.value.error.code == 401
            assert "answered HTTP 401 Unauthorized" in str(info.value) and server.url in str(info.value)
            failed = await bad.call("lookup_order", {"order_number": "A1001"})
            assert failed.error.code == 401
        finally:
            await good.aclose()
            await bad.aclose()


@on_session_loop
async def test_mcp_unreachable_servers_fail_fast_with_a_clear_error():
    with socket.socket() as refused:  # bound, not listening: connections are refused
        refused.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{refused.getsockname()[1]}/mcp"
        conn = McpConnection(McpServerSpec("shop", server_url=url))
        with pytest.raises(McpServerError, match="cannot reach the MCP server 'shop'") as info:
            await conn.list_tools()
        assert url in str(info.value) and info.value.error.type == "protocol_error"
        result = await conn.call("lookup_order", {"order_number": "A1001"})
        assert "cannot reach" in result.error.message
        await conn.aclose()

    missing = McpConnection(McpServerSpec("shop", command=("/nonexistent/mcp-server",)))
    with pytest.raises(McpServerError, match="No such file"):
        await missing.list_tools()
    await missing.aclose()


@on_session_loop
async def test_mcp_server_that_never_answers_fails_within_the_connect_timeout():
    with socket.socket() as silent:  # accepts connections (the backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        conn = McpConnection(McpServerSpec("shop", server_url=f"http://127.0.0.1:{silent.getsockname()[1]}/mcp"),
                             connect_timeout_s=0.5)
        with pytest.raises(McpServerError, match="did not complete the connection within 0.5 s"):
            await conn.list_tools()
        result = await conn.call("lookup_order", {"order_number": "A1001"}, timeout_s=5)
        assert result.error is not None and "0.5 s" in result.error.message
        await conn.aclose()


@on_session_loop
async def test_mcp_stdio_connection_is_reused_reopened_after_a_crash_and_closed_with_its_owner():
    conn = McpConnection(McpServerSpec("shop", command=STDIO_COMMAND), connect_timeout_s=20)
    try:
        first = int((await conn.call("server_pid", {})).output)
        assert int((await conn.call("server_pid", {})).output) == first  # one process for the session
        assert first != os.getpid()
        os.kill(first, signal.SIGKILL)
        for _ in range(200):  # until the kill has landed
            lost = await conn.call("server_pid", {}, timeout_s=10)
            if not lost.ok:
                break
            await asyncio.sleep(0.05)
        assert "Connection closed" in lost.error.message and "shop" in lost.error.message
        second = int((await conn.call("server_pid", {}, timeout_s=20)).output)  # reconnected
        assert second != first
    finally:
        await conn.aclose()
    with pytest.raises(ProcessLookupError):
        os.kill(second, 0)  # the server process ended with the connection
    closed = await conn.call("server_pid", {})
    assert "closed" in closed.error.message


@on_session_loop
async def test_mcp_connections_are_kept_per_session_and_closed_with_it(shop, mcp_http):
    connections = McpConnections()
    broken = McpServerSpec("crm", server_url=mcp_http.url.replace("/mcp", "/none"))
    try:
        assert connections.connection(shop) is connections.connection(shop)
        results = await connections.list_tools([shop, broken])
        assert {t.name for t in results["shop"]} >= {"lookup_order"}
        assert isinstance(results["crm"], McpServerError) and results["crm"].error.code == 404
        config = ToolConfig((shop, broken))
        box = Toolbox.build(config, {k: v for k, v in results.items() if not isinstance(v, McpServerError)})
        answer = await connections.call(box.find("lookup_order"), {"order_number": "B2002"})
        assert answer.output == f"Order B2002 is {ORDERS['B2002']}."
        await connections.retain([shop])
        assert [c.label for c in connections] == ["shop"]
    finally:
        await connections.aclose()
    assert list(connections) == []


@pytest.mark.parametrize(("flag", "expected"), [
    ("shop=http://127.0.0.1:9000/mcp", {"server_url": "http://127.0.0.1:9000/mcp", "command": None}),
    ("files=stdio:npx -y '@modelcontextprotocol/server-filesystem' /tmp",
     {"server_url": None, "command": ("npx", "-y", "@modelcontextprotocol/server-filesystem", "/tmp")}),
    ('{"server_label": "shop", "command": ["python", "server.py"], "allowed_tools": ["lookup_order"]}',
     {"server_url": None, "command": ("python", "server.py")}),
])
def test_mcp_server_flag_forms(flag, expected):
    spec = parse_mcp_server_flag(flag)
    assert {"server_url": spec.server_url, "command": spec.command} == expected
    assert not spec.require_approval.requires_approval("anything", False)  # the operator trusts its servers


@pytest.mark.parametrize("flag", ["shop", "shop=", "=http://h/mcp", "shop=ftp://h", '{"server_label": 1}',
                                  "[1]", "shop=stdio:'unclosed"])
def test_mcp_server_flag_errors_say_what_is_expected(flag):
    with pytest.raises(ToolSpecError) as info:
        parse_mcp_server_flag(flag)
    assert info.value.param.startswith("--mcp-server")


# --- all together: the model calls a tool of an MCP server and speaks its answer ------------------------------

@on_session_loop
async def test_llm_calls_an_mcp_tool_and_answers_with_its_output(fake, llm, shop):
    connections = McpConnections()
    try:
        config = ToolConfig().updated({"tools": [WEATHER, shop.to_dict()]}, "session")
        listed_tools = await connections.list_tools(config.mcp_servers)
        box = Toolbox.build(config, listed_tools)
        fake.turns = [Turn("Let me look that up.", [ToolCall("lookup_order", '{"order_number": "B2002"}')]),
                      Turn("Your order B2002 is being packed at the warehouse.")]
        history = list(HISTORY)
        events = await collect(llm.reply(ReplyRequest(history, tools=box.tools, tool_choice=box.tool_choice)))
        done = events[-1]
        assert isinstance(done, FunctionCallDone)
        tool = box.find(done.name)
        assert tool.runs_on_server
        result = await connections.call(tool, done.parsed)
        history += [{"role": "assistant", "content": "Let me look that up."},
                    function_call_message(done.call_id, done.name, done.arguments),
                    function_output_message(done.call_id, result.for_model())]
        answer = await collect(llm.reply(ReplyRequest(history, tools=box.tools)))
        assert answer == ["Your order B2002 is being packed at the warehouse."]
        assert fake.requests[-1]["messages"][-1] == {"role": "tool", "tool_call_id": done.call_id,
                                                     "content": f"Order B2002 is {ORDERS['B2002']}."}
        assert {t["function"]["name"] for t in fake.requests[-1]["tools"]} == {
            "get_weather", "lookup_order", "slow_report", "cancel_order", "server_pid"}
    finally:
        await connections.aclose()
