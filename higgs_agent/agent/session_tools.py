"""A session's tools: the functions its client runs and the MCP servers the server runs for it.

Holds the session's `ToolConfig` (from `session.update`), the MCP servers the operator configured for every
session (`serve --mcp-server`), the connections to all of them (one per server per session) and what each
listed. `toolbox()` gives one response what it may call; `run()` calls an MCP tool with a timeout.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from higgs_agent.agent.tools.spec import FunctionTool, McpServerSpec, ToolConfig
from higgs_agent.agent.tools.toolbox import Toolbox

if TYPE_CHECKING:  # the mcp SDK loads only when a session has MCP servers
    from higgs_agent.agent.tools.mcp_client import McpCallResult, McpConnections, McpServerError

log = logging.getLogger(__name__)
MAX_TOOL_ROUNDS = 4  # responder rounds in one response: calls run on the server, then the model speaks


@dataclass
class Listing:
    """One server's tools, or why they could not be listed."""

    server_label: str
    tools: tuple[FunctionTool, ...] = ()
    error: dict[str, Any] | None = None


@dataclass
class SessionTools:
    operator_servers: tuple[McpServerSpec, ...] = ()
    call_timeout_s: float = 20.0  # a tool that takes longer fails with a timeout the model can speak about
    config: ToolConfig = field(default_factory=ToolConfig)
    listed: dict[str, tuple[FunctionTool, ...]] = field(default_factory=dict)
    _connections: McpConnections | None = None

    @property
    def servers(self) -> tuple[McpServerSpec, ...]:
        return (*self.operator_servers, *self.config.mcp_servers)

    @property
    def connections(self) -> McpConnections:
        if self._connections is None:
            from higgs_agent.agent.tools.mcp_client import McpConnections

            self._connections = McpConnections(call_timeout_s=self.call_timeout_s)
        return self._connections

    async def refresh(self) -> list[Listing]:
        """Connect to the servers not yet listed (and drop those no longer configured); their listings."""
        servers = self.servers
        if self._connections is None and not servers:
            return []
        await self.connections.retain(servers)
        wanted = [spec for spec in servers if spec.server_label not in self.listed]
        self.listed = {label: tools for label, tools in self.listed.items()
                       if any(spec.server_label == label for spec in servers)}
        if not wanted:
            return []
        results: Mapping[str, tuple[FunctionTool, ...] | McpServerError] = await self.connections.list_tools(wanted)
        listings = []
        for label, result in results.items():
            if isinstance(result, tuple):
                self.listed[label] = result
                listings.append(Listing(label, result))
            else:
                log.warning("MCP server %s: %s", label, result.error.message)
                listings.append(Listing(label, error=result.error.to_dict()))
        return listings

    def toolbox(self, override: ToolConfig | None = None, param: str = "session.tool_choice") -> Toolbox:
        """What one response may call: the session's (or the response's own) tools, the operator's servers'."""
        config = override or self.config
        merged = ToolConfig((*config.tools, *self.operator_servers), config.tool_choice)
        return Toolbox.build(merged, self.listed, param)

    async def run(self, tool: FunctionTool, arguments: Mapping[str, Any]) -> McpCallResult:
        return await self.connections.call(tool, arguments)

    async def aclose(self) -> None:
        if self._connections is not None:
            await self._connections.aclose()


def tool_descriptions(tools: Sequence[FunctionTool]) -> list[dict[str, Any]]:
    """An mcp_list_tools item's `tools`."""
    return [{"name": tool.remote_name or tool.name, "description": tool.description,
             "input_schema": dict(tool.parameters), "annotations": {"readOnlyHint": tool.read_only}}
            for tool in tools]
