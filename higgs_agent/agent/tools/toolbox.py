"""What one response may call: the session's function tools plus the tools its MCP servers listed, under names
that are unique and that a chat-completions endpoint accepts, and the tool choice resolved to those names.

MCP tool names may hold characters a chat endpoint refuses (`.`, `/`) and two servers may both have a
`search`: a clashing or unacceptable name is made unique (`label_name`, then a numeric suffix), and each
`FunctionTool` keeps `server_label` / `remote_name` so a call maps back to the server's own tool.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from higgs_agent.agent.tools.spec import FUNCTION_NAME, FunctionTool, ToolChoice, ToolConfig, ToolSpecError

_NOT_NAME = re.compile(r"[^A-Za-z0-9_-]")


@dataclass(frozen=True)
class Toolbox:
    """The tools a reply request carries (`ReplyRequest.tools` / `tool_choice`) and the way back from a call's
    name to its tool."""

    tools: tuple[FunctionTool, ...] = ()
    tool_choice: ToolChoice = field(default_factory=ToolChoice)

    @classmethod
    def build(cls, config: ToolConfig, listed: Mapping[str, Sequence[FunctionTool]],
              param: str = "session.tool_choice") -> Toolbox:
        """`listed`: each MCP server's tools as `McpConnection.list_tools()` gave them, by server label (a server
        missing here, e.g. one whose listing failed, contributes nothing). ToolSpecError when the tool choice
        forces an MCP tool that is not there."""
        tools = list(config.functions)
        taken = {tool.name for tool in tools}
        for server in config.mcp_servers:
            for tool in listed.get(server.server_label, ()):
                name = _unique_name(tool.remote_name or tool.name, server.server_label, taken)
                taken.add(name)
                tools.append(replace(tool, name=name))
        choice = config.tool_choice
        if choice.mode == "mcp":
            mine = [t for t in tools if t.server_label == choice.server_label]
            if choice.name is None:
                if not mine:
                    raise ToolSpecError(f"{param} forces the MCP server {choice.server_label!r}, which has no tools "
                                        f"to call (its listing failed, or allowed_tools leaves none)", param)
                return cls(tuple(mine), ToolChoice("required"))
            match = next((t for t in mine if t.remote_name == choice.name), None)
            if match is None:
                raise ToolSpecError(f"{param} forces the tool {choice.name!r} of the MCP server "
                                    f"{choice.server_label!r}, which did not list it", f"{param}.name")
            choice = ToolChoice("function", name=match.name)
        return cls(tuple(tools), choice)

    def find(self, name: str) -> FunctionTool | None:
        return next((tool for tool in self.tools if tool.name == name), None)


def _unique_name(name: str, label: str, taken: set[str]) -> str:
    if FUNCTION_NAME.match(name) and name not in taken:
        return name
    base = _NOT_NAME.sub("_", f"{label}_{name}")[:64]
    candidate, n = base, 2
    while candidate in taken:
        suffix = f"_{n}"
        candidate, n = base[:64 - len(suffix)] + suffix, n + 1
    return candidate
