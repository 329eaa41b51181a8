"""A real MCP server for tests, built with the official SDK's `MCPServer` (FastMCP in mcp 1.x).

Tools: `lookup_order` (read-only: an order's status), `slow_report` (sleeps `seconds`; notes whether it was
cancelled), `cancel_order` (always fails, with a message the model can repeat), `server_pid` (read-only: the
process id, so a test can tell one stdio process from another).

Over streamable HTTP in this process (uvicorn on a free 127.0.0.1 port, in a background thread with its own
event loop, as `higgs_agent/testing/fake_llm.py` runs):

    with McpTestServer() as server:
        spec = McpServerSpec("orders", server_url=server.url)
        server.state.slow_cancelled.wait(5)   # the server saw a call cancelled

`required_token`: when set, requests without `Authorization: Bearer <token>` get a 401 (headers reach the
server). Over stdio, as a subprocess: `python tests/mcp_server.py stdio` (`STDIO_COMMAND`).
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import uvicorn
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import ToolAnnotations
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

ORDERS = {
    "A1001": "shipped on Monday and arriving on Thursday",
    "B2002": "being packed at the warehouse",
}
CANCEL_FAILURE = "the warehouse system is down, so orders cannot be cancelled right now"
# The shop's lookup_order as a function tool the client runs (the same name and arguments as the MCP tool).
ORDER_TOOL = {"type": "function", "name": "lookup_order", "description": "Look up an order's status.",
              "parameters": {"type": "object", "properties": {"order_number": {"type": "string"}},
                             "required": ["order_number"]}}
STDIO_COMMAND = (sys.executable, str(Path(__file__).resolve()), "stdio")


@dataclass
class ServerState:
    """What the server saw (thread-safe events: the HTTP server runs in another thread)."""

    slow_started: threading.Event = field(default_factory=threading.Event)
    slow_cancelled: threading.Event = field(default_factory=threading.Event)
    slow_finished: threading.Event = field(default_factory=threading.Event)
    calls: list[str] = field(default_factory=list)

    def reset(self) -> None:
        for event in (self.slow_started, self.slow_cancelled, self.slow_finished):
            event.clear()
        self.calls.clear()


def build_server(state: ServerState) -> MCPServer:
    server = MCPServer("orders", instructions="Order status for a small shop.", log_level="WARNING")
    read_only = ToolAnnotations(read_only_hint=True)

    @server.tool(annotations=read_only)
    def lookup_order(order_number: str) -> str:
        """Look up the status of an order by its order number (like A1001)."""
        state.calls.append("lookup_order")
        status = ORDERS.get(order_number.strip().upper())
        if status is None:
            raise ToolError(f"there is no order {order_number}")
        return f"Order {order_number} is {status}."

    @server.tool()
    async def slow_report(seconds: float) -> str:
        """Build a sales report; takes `seconds` seconds."""
        state.calls.append("slow_report")
        state.slow_started.set()
        try:
            await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            state.slow_cancelled.set()
            raise
        state.slow_finished.set()
        return "The report is ready."

    @server.tool()
    def cancel_order(order_number: str) -> str:
        """Cancel an order."""
        state.calls.append("cancel_order")
        raise ToolError(CANCEL_FAILURE)

    @server.tool(annotations=read_only)
    def server_pid() -> int:
        """The server's process id."""
        return os.getpid()

    return server


class _RequireToken:
    """ASGI middleware: a request without the bearer token gets a 401."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and dict(scope["headers"]).get(b"authorization") != self.expected:
            await JSONResponse({"error": "unauthorized"}, status_code=401)(scope, receive, send)
            return
        await self.app(scope, receive, send)


class McpTestServer:
    """The server over streamable HTTP at `url`, in a background thread."""

    def __init__(self, required_token: str | None = None) -> None:
        self.state = ServerState()
        self.required_token = required_token
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None

    @property
    def url(self) -> str:
        if self._sock is None:
            raise RuntimeError("the MCP test server is not running")
        return f"http://127.0.0.1:{self._sock.getsockname()[1]}/mcp"

    def start(self) -> McpTestServer:
        app: ASGIApp = build_server(self.state).streamable_http_app()
        if self.required_token is not None:
            app = _RequireToken(app, self.required_token)
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        config = uvicorn.Config(app, log_level="warning", lifespan="on", access_log=False,
                                timeout_graceful_shutdown=1)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]},
                                        name="mcp-test-server", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the MCP test server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._sock is not None:
            self._sock.close()
        self._server = self._thread = None

    def __enter__(self) -> McpTestServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


if __name__ == "__main__":
    if sys.argv[1:] != ["stdio"]:
        sys.exit("usage: python tests/mcp_server.py stdio")
    build_server(ServerState()).run("stdio")
