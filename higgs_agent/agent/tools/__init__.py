"""Tool calling below the session: tool definitions (`spec`), what one response may call (`toolbox`), function
calls streamed by a responder (`calls`), calls and outputs in a chat history (`chat_history`), and tools run
on MCP servers (`mcp_client`).

The `mcp` SDK is imported only with `mcp_client`, so a server without MCP servers never loads it.
"""

from higgs_agent.agent.tools.calls import (
    CallAssembler,
    FunctionCallArgumentsDelta,
    FunctionCallDone,
    FunctionCallEvent,
    FunctionCallInvalid,
    FunctionCallStarted,
)
from higgs_agent.agent.tools.chat_history import function_call_message, function_output_message, well_formed
from higgs_agent.agent.tools.spec import (
    ApprovalPolicy,
    FunctionTool,
    InvalidArguments,
    McpServerSpec,
    ToolChoice,
    ToolConfig,
    ToolFilter,
    ToolSpecError,
    parse_tool_choice,
    parse_tools,
)
from higgs_agent.agent.tools.toolbox import Toolbox

__all__ = [
    "ApprovalPolicy", "CallAssembler", "FunctionCallArgumentsDelta", "FunctionCallDone", "FunctionCallEvent",
    "FunctionCallInvalid", "FunctionCallStarted", "FunctionTool", "InvalidArguments", "McpServerSpec", "ToolChoice",
    "ToolConfig", "ToolFilter", "ToolSpecError", "Toolbox", "function_call_message", "function_output_message",
    "parse_tool_choice", "parse_tools", "well_formed",
]
