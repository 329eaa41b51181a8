"""The calls in a response, as the responder makes them: a function call is handed to the client (the response
ends; the client answers with a `function_call_output` and `response.create`), an MCP call is run by the
server on the operator's or the client's server (its result goes back to the responder within the response),
first asked about with an `mcp_approval_request` when its server says so, and a call the model got wrong is
reported (`invalid_tool_call`) and told back to the model so it can try again."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from higgs_agent.agent.conversation import Conversation, ConversationItem, ToolCall
from higgs_agent.agent.events import AgentFailed, CallArgumentsDone, CallArgumentsGrew, McpCallRunning
from higgs_agent.agent.response_items import ResponseItems
from higgs_agent.agent.responders.base import ReplyRequest
from higgs_agent.agent.session_tools import SessionTools
from higgs_agent.agent.tools.calls import (
    FunctionCallArgumentsDelta,
    FunctionCallDone,
    FunctionCallInvalid,
    FunctionCallStarted,
)
from higgs_agent.agent.tools.chat_history import function_call_message, function_output_message
from higgs_agent.protocol.errors import new_id

log = logging.getLogger(__name__)


@dataclass
class CallOutcome:
    """What one responder round did: calls the client must run or approve end the response; calls the server
    ran (and invalid calls) send the responder another round."""

    client_calls: int = 0
    approvals: int = 0
    server_calls: int = 0
    retry_messages: list[dict[str, Any]] = field(default_factory=list)  # invalid calls, for the model only


class ToolCalls:
    def __init__(self, items: ResponseItems, tools: SessionTools | None, conversation: Conversation) -> None:
        self.items = items
        self.tools = tools
        self.conversation = conversation

    async def started(self, event: FunctionCallStarted, request: ReplyRequest) -> ConversationItem | None:
        tool = request.tool(event.name)
        if tool is not None and tool.runs_on_server and tool.requires_approval:
            return None  # nothing runs yet: an approval request once the arguments are complete
        kind = "mcp_call" if tool is not None and tool.runs_on_server else "function_call"
        call = ToolCall(event.call_id, event.name if kind == "function_call" else (tool.remote_name or tool.name),
                        server_label=tool.server_label if kind == "mcp_call" else None)
        item = ConversationItem.tool(new_id("item"), kind, call, status="in_progress")  # type: ignore[arg-type]
        await self.items.add(item)
        return item

    async def delta(self, item: ConversationItem | None, event: FunctionCallArgumentsDelta) -> None:
        if item is None or item.call is None:
            return
        item.call.arguments += event.delta
        await self.items.send(CallArgumentsGrew(self.items.place(item), item, event.delta))

    async def done(self, item: ConversationItem | None, event: FunctionCallDone, request: ReplyRequest,
                   outcome: CallOutcome) -> None:
        tool = request.tool(event.name)
        if item is None:  # an MCP call that needs the client's approval first: the response ends after it
            assert tool is not None
            request_item = ConversationItem.tool(new_id("mcpr"), "mcp_approval_request", ToolCall(
                event.call_id, tool.remote_name or tool.name, event.arguments, server_label=tool.server_label))
            await self.items.add(request_item)
            await self.items.done(request_item)
            outcome.approvals += 1
            return
        assert item.call is not None
        item.call.arguments = event.arguments
        await self.items.send(CallArgumentsDone(self.items.place(item), item))
        if item.kind == "function_call":
            item.status = "completed"
            await self.items.done(item)
            outcome.client_calls += 1
            return
        assert tool is not None
        await self.run_mcp(item, tool, event.parsed)
        outcome.server_calls += 1

    async def run_mcp(self, item: ConversationItem, tool: Any, arguments: dict[str, Any]) -> None:  # noqa: ANN401
        """Run an MCP call item on its server (a timeout and a failure are results the model speaks about)."""
        assert self.tools is not None and item.call is not None
        place = self.items.place(item)
        await self.items.send(McpCallRunning(place, "in_progress"))
        result = await self.tools.run(tool, arguments)
        if result.ok:
            item.call.output = result.output
            item.status = "completed"
            await self.items.send(McpCallRunning(place, "completed"))
        else:
            item.call.error = result.error.to_dict() if result.error is not None else {"message": "failed"}
            item.status = "incomplete"
            log.warning("%s: MCP call %s failed: %s", self.items.response_id, item.call.name, item.call.error)
            await self.items.send(McpCallRunning(place, "failed"))
        await self.items.done(item)

    async def run_approved(self, request: ReplyRequest) -> bool:
        """MCP calls the client approved (or declined) since the last response: run the approved ones first,
        so the responder hears their results. True if any was answered."""
        answered = False
        for approval in [i for i in self.conversation.items if i.kind == "mcp_approval_response"]:
            asked = approval.call
            if asked is None or self.conversation.find_call("mcp_call", approval_request_id=asked.approval_request_id):
                continue
            pending = self.conversation.get(asked.approval_request_id or "")
            if pending.call is None:
                continue
            call = ToolCall(pending.call.call_id, pending.call.name, pending.call.arguments,
                            server_label=pending.call.server_label, approval_request_id=pending.id)
            item = ConversationItem.tool(new_id("item"), "mcp_call", call, status="in_progress")
            await self.items.add(item)
            answered = True
            tool = next((t for t in request.tools if t.server_label == call.server_label
                         and (t.remote_name or t.name) == call.name), None)
            if not asked.approve or tool is None:
                call.error = {"type": "tool_execution_error", "message": "the user declined this call" if not
                              asked.approve else f"the tool {call.name} is no longer offered"}
                item.status = "incomplete"
                await self.items.done(item)
                continue
            try:
                arguments = tool.check_arguments(call.arguments)
            except ValueError as exc:
                call.error = {"type": "tool_execution_error", "message": str(exc)}
                item.status = "incomplete"
                await self.items.done(item)
                continue
            await self.run_mcp(item, tool, arguments)
        return answered

    async def invalid(self, item: ConversationItem | None, event: FunctionCallInvalid, outcome: CallOutcome) -> None:
        """A call the model got wrong (arguments not JSON or not what the schema allows, an unknown name): never
        handed on; reported, and the model is told what was wrong so it can try again."""
        log.warning("%s: invalid call %s: %s", self.items.response_id, event.name, event.error)
        if item is not None:
            item.status = "incomplete"
            await self.items.done(item)
        await self.items.send(AgentFailed("invalid_tool_call", event.error, self.items.response_id))
        outcome.retry_messages += [function_call_message(event.call_id, event.name, event.arguments or "{}"),
                                   function_output_message(event.call_id, f"Error: {event.error}")]
