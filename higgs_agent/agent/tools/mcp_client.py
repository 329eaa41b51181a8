"""Server-side tools from MCP servers, through the official `mcp` SDK's `Client` (streamable HTTP or stdio).

One `McpConnection` per server and session: opened on first use, reused by every listing and call of the
session, reopened on the next use if the server went away, closed with the session (`McpConnections`).
The SDK's client lives in anyio task groups that must be entered and left by one task, while calls come
from whichever task runs a reply: so each connection has an owner task that holds the `Client` open until
`aclose()`, and callers talk through it.

A call never hangs and never raises for the server's failures: `call()` returns an `McpCallResult` whose
`error` (shaped as the Realtime `mcp_call` item's: `protocol_error`, `tool_execution_error`, `http_error`)
says what went wrong in words the model can speak about; `for_model()` is the text to put in the history.
Past its timeout a call is abandoned and the server is told to cancel it; cancelling the task that awaits
`call()` does the same. Listing failures (the server cannot be reached, answers HTTP 401, ...) raise
`McpServerError` with the same kind of error.

Operators configure servers with `--mcp-server` (`parse_mcp_server_flag`): `LABEL=URL`,
`LABEL=stdio:COMMAND ARGS...`, or the JSON of a Realtime `mcp` tool. A client's `session.tools` entry of
type `mcp` gives an HTTP server only: a remote client never starts a process here.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shlex
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any, Literal

import httpx2
import jsonschema
import mcp_types
from mcp import Client
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from pydantic import ValidationError

from higgs_agent.agent.tools.spec import (
    ApprovalPolicy,
    FunctionTool,
    McpServerSpec,
    ToolSpecError,
    parse_mcp_server,
)

log = logging.getLogger(__name__)
CONNECT_TIMEOUT_S = 10.0
CALL_TIMEOUT_S = 30.0
CLOSE_TIMEOUT_S = 5.0
MAX_LIST_PAGES = 50  # a server whose tool list never ends cannot hang a listing


@dataclass(frozen=True)
class McpError:
    """Why a listing or call failed, shaped as the Realtime `mcp_call` error (`code` for protocol and HTTP
    errors: a JSON-RPC error code or an HTTP status)."""

    type: Literal["protocol_error", "tool_execution_error", "http_error"]
    message: str
    code: int | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type, "message": self.message}
        if self.code is not None:
            out["code"] = self.code
        return out


@dataclass(frozen=True)
class McpCallResult:
    """A tool's answer: its text (`output`), or what went wrong (`error`)."""

    output: str
    error: McpError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def for_model(self) -> str:
        """The text for the call's output in the history: the answer, or the failure in words."""
        return self.output if self.error is None else f"The tool call failed: {self.error.message}"


class McpServerError(RuntimeError):
    """The server could not be reached or listed."""

    def __init__(self, error: McpError) -> None:
        super().__init__(error.message)
        self.error = error


class McpConnection:
    """One MCP server for one session (see the module doc)."""

    def __init__(self, spec: McpServerSpec, connect_timeout_s: float = CONNECT_TIMEOUT_S,
                 call_timeout_s: float = CALL_TIMEOUT_S) -> None:
        self.spec = spec
        self.connect_timeout_s = connect_timeout_s
        self.call_timeout_s = call_timeout_s
        self._owner: asyncio.Task[None] | None = None
        self._ready: asyncio.Future[Client] | None = None
        self._stop = asyncio.Event()
        self._retired: set[asyncio.Task[None]] = set()  # owners of lost connections, winding down
        self._tools: tuple[FunctionTool, ...] | None = None
        self._closed = False
        self._http_failure: tuple[int, str] | None = None  # the latest HTTP error status (the SDK hides it)

    @property
    def label(self) -> str:
        return self.spec.server_label

    @property
    def connected(self) -> bool:
        return (self._owner is not None and not self._owner.done() and self._ready is not None
                and self._ready.done() and not self._ready.cancelled() and self._ready.exception() is None)

    async def list_tools(self, refresh: bool = False) -> tuple[FunctionTool, ...]:
        """The server's tools that `allowed_tools` lets through, as function tools (named as on the server;
        `Toolbox` makes names unique). Listed once per connection unless `refresh`. McpServerError if the
        server cannot be reached or listed within the connect timeout."""
        if self._tools is not None and not refresh:
            return self._tools
        self._http_failure = None
        limit = self.connect_timeout_s + self.call_timeout_s  # connecting, then listing
        try:
            async with asyncio.timeout(limit):
                client = await self._connected()
                listed: list[mcp_types.Tool] = []
                cursor: str | None = None
                for _ in range(MAX_LIST_PAGES):
                    page = await client.list_tools(cursor=cursor)
                    listed += page.tools
                    cursor = page.next_cursor
                    if cursor is None:
                        break
        except McpServerError:
            raise
        except TimeoutError:
            raise McpServerError(McpError("protocol_error", f"the MCP server {self._named} did not list its tools "
                                          f"within {limit:g} s", mcp_types.REQUEST_TIMEOUT)) from None
        except Exception as exc:  # noqa: BLE001 - every failure becomes a reportable error
            raise McpServerError(self._describe(exc, "listing the tools of")) from exc
        self._tools = tuple(tool for tool in map(self._function_tool, listed) if tool is not None)
        return self._tools

    async def call(self, name: str, arguments: Mapping[str, Any], timeout_s: float | None = None) -> McpCallResult:
        """Run the server's tool `name` (its own name: `FunctionTool.remote_name`). Never raises for the
        server's failures, and returns within `timeout_s` (default: the connection's call timeout)."""
        timeout = self.call_timeout_s if timeout_s is None else timeout_s
        self._http_failure = None
        try:
            async with asyncio.timeout(timeout):
                client = await self._connected()
                result = await client.call_tool(name, dict(arguments))
        except TimeoutError:
            return McpCallResult("", McpError("protocol_error", f"the tool {name} of the MCP server {self._named} "
                                              f"did not answer within {timeout:g} s", mcp_types.REQUEST_TIMEOUT))
        except McpServerError as exc:
            return McpCallResult("", exc.error)
        except Exception as exc:  # noqa: BLE001 - a failed call is an answer the model can speak about
            error = self._describe(exc, f"calling {name} on")
            if error.code == mcp_types.CONNECTION_CLOSED:
                self._retire()  # the server went away: the next use connects afresh
            return McpCallResult("", error)
        text = result_text(result)
        if result.is_error:
            return McpCallResult("", McpError("tool_execution_error",
                                              text or f"the tool {name} reported an error without a message"))
        return McpCallResult(text)

    def reconfigure(self, spec: McpServerSpec) -> None:
        """Same server (equal `key`), new allowed_tools or approval policy: the next listing applies them."""
        if spec.key != self.spec.key:
            raise ValueError(f"{spec.server_label!r} is another server than {self.label!r}")
        if spec != self.spec:
            self.spec = spec
            self._tools = None

    async def aclose(self) -> None:
        """Close the connection (a stdio server's process ends). Later calls fail; idempotent."""
        self._closed = True
        self._retire()
        owners, self._retired = list(self._retired), set()
        if not owners:
            return
        _, pending = await asyncio.wait(owners, timeout=CLOSE_TIMEOUT_S)
        for owner in pending:
            owner.cancel()
        await asyncio.gather(*owners, return_exceptions=True)

    def _retire(self) -> None:
        """Let the current connection go: its owner closes it in the background; the next use reconnects."""
        owner, self._owner = self._owner, None
        if owner is None or owner.done():
            return
        if self._ready is not None and not self._ready.done():
            owner.cancel()  # still connecting: nothing to close gracefully
        self._stop.set()
        self._retired.add(owner)
        owner.add_done_callback(self._retired.discard)

    @property
    def _named(self) -> str:
        return f"{self.label!r} ({self.spec.where})"

    async def _connected(self) -> Client:
        if self._closed:
            raise McpServerError(McpError("protocol_error", f"the connection to the MCP server {self._named} is "
                                          f"closed", mcp_types.CONNECTION_CLOSED))
        if self._owner is None or self._owner.done():  # first use, or the last connection failed or was lost
            self._ready = asyncio.get_running_loop().create_future()
            self._stop = asyncio.Event()
            self._owner = asyncio.create_task(self._hold(self._ready, self._stop), name=f"mcp:{self.label}")
        assert self._ready is not None
        return await asyncio.shield(self._ready)  # a caller that gives up does not abort the connecting

    async def _hold(self, ready: asyncio.Future[Client], stop: asyncio.Event) -> None:
        """The owner task: open the client, hand it over, keep it open until asked to stop."""
        try:
            async with AsyncExitStack() as stack:
                async with asyncio.timeout(self.connect_timeout_s):
                    client = await stack.enter_async_context(self._client(stack))
                ready.set_result(client)
                await stop.wait()
        except asyncio.CancelledError:
            if not ready.done():
                ready.set_exception(McpServerError(McpError(
                    "protocol_error", f"connecting to the MCP server {self._named} was cancelled",
                    mcp_types.CONNECTION_CLOSED)))
            raise
        except Exception as exc:  # noqa: BLE001 - reported to the callers waiting for the connection
            if ready.done():
                log.warning("MCP server %s: connection lost: %s", self._named, _leaf_text(exc))
            elif isinstance(exc, TimeoutError):
                ready.set_exception(McpServerError(McpError(
                    "protocol_error", f"the MCP server {self._named} did not complete the connection within "
                    f"{self.connect_timeout_s:g} s", mcp_types.REQUEST_TIMEOUT)))
            else:
                ready.set_exception(McpServerError(self._describe(exc, "connecting to")))

    def _client(self, stack: AsyncExitStack) -> Client:
        spec = self.spec
        if spec.command is not None:
            params = StdioServerParameters(command=spec.command[0], args=list(spec.command[1:]))
            return Client(stdio_client(params, errlog=sys.stderr), cache=None)
        assert spec.server_url is not None
        async def note_failure(response: httpx2.Response) -> None:
            if response.status_code >= 400:
                self._http_failure = (response.status_code, response.reason_phrase)

        # Our own HTTP client, for the headers and to see error statuses; the SDK's default timeouts (a long
        # read: streams stay open).
        http = httpx2.AsyncClient(headers=dict(spec.headers), timeout=httpx2.Timeout(30.0, read=300.0),
                                  event_hooks={"response": [note_failure]})
        stack.push_async_callback(http.aclose)
        return Client(streamable_http_client(spec.server_url, http_client=http), cache=None)

    def _function_tool(self, tool: mcp_types.Tool) -> FunctionTool | None:
        read_only = bool(tool.annotations is not None and tool.annotations.read_only_hint)
        if not self.spec.allows(tool.name, read_only):
            return None
        schema = tool.input_schema if isinstance(tool.input_schema, dict) else {}
        try:
            jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator).check_schema(schema)
        except jsonschema.SchemaError as exc:
            log.warning("MCP server %s: leaving out the tool %r, whose input schema is invalid: %s",
                        self._named, tool.name, exc.message)
            return None
        return FunctionTool(name=tool.name, description=tool.description or tool.title or "",
                            parameters=schema, server_label=self.label, remote_name=tool.name, read_only=read_only,
                            requires_approval=self.spec.require_approval.requires_approval(tool.name, read_only))

    def _describe(self, exc: BaseException, doing: str) -> McpError:
        """A failure as an McpError whose message names the server and the cause."""
        failure, self._http_failure = self._http_failure, None
        if failure is not None:  # the SDK turns an HTTP error into a generic protocol error: report the status
            status, reason = failure
            return McpError("http_error", f"the MCP server {self._named} answered HTTP {status} {reason} when "
                            f"{doing} it{' (check its headers or authorization)' if status in (401, 403) else ''}",
                            status)
        for leaf in _leaves(exc):
            if isinstance(leaf, httpx2.HTTPStatusError):
                status = leaf.response.status_code
                return McpError("http_error", f"the MCP server {self._named} answered HTTP {status} "
                                f"{leaf.response.reason_phrase} when {doing} it", status)
            if isinstance(leaf, MCPError):
                if leaf.code == mcp_types.REQUEST_TIMEOUT:
                    return McpError("protocol_error", f"the MCP server {self._named} timed out when {doing} it",
                                    leaf.code)
                return McpError("protocol_error", f"the MCP server {self._named} failed when {doing} it: "
                                f"{leaf.message}", leaf.code)
            if isinstance(leaf, httpx2.TransportError | OSError):
                return McpError("protocol_error", f"cannot reach the MCP server {self._named} when {doing} it "
                                f"({_leaf_text(leaf)})", mcp_types.CONNECTION_CLOSED)
            if isinstance(leaf, ValidationError):
                return McpError("protocol_error", f"the MCP server {self._named} sent a malformed answer when "
                                f"{doing} it", mcp_types.INTERNAL_ERROR)
        return McpError("protocol_error", f"{doing} the MCP server {self._named} failed: {_leaf_text(exc)}",
                        mcp_types.INTERNAL_ERROR)


class McpConnections:
    """A session's MCP connections, by server: reused while the session configures the same server, closed
    when it stops configuring it (`retain`) and when the session ends (`aclose`)."""

    def __init__(self, connect_timeout_s: float = CONNECT_TIMEOUT_S, call_timeout_s: float = CALL_TIMEOUT_S) -> None:
        self.connect_timeout_s = connect_timeout_s
        self.call_timeout_s = call_timeout_s
        self._connections: dict[tuple[Any, ...], McpConnection] = {}

    def connection(self, spec: McpServerSpec) -> McpConnection:
        connection = self._connections.get(spec.key)
        if connection is None:
            connection = McpConnection(spec, self.connect_timeout_s, self.call_timeout_s)
            self._connections[spec.key] = connection
        else:
            connection.reconfigure(spec)
        return connection

    async def list_tools(self, specs: Sequence[McpServerSpec]) -> dict[str, tuple[FunctionTool, ...] | McpServerError]:
        """Every server's tools, listed concurrently, by label; a server that failed maps to its error."""
        async def one(spec: McpServerSpec) -> tuple[FunctionTool, ...] | McpServerError:
            try:
                return await self.connection(spec).list_tools()
            except McpServerError as exc:
                return exc

        results = await asyncio.gather(*(one(spec) for spec in specs))
        return {spec.server_label: result for spec, result in zip(specs, results, strict=True)}

    async def call(self, tool: FunctionTool, arguments: Mapping[str, Any],
                   timeout_s: float | None = None) -> McpCallResult:
        """Run a tool listed from one of the session's servers."""
        connection = next((c for c in self._connections.values() if c.label == tool.server_label), None)
        if connection is None:
            return McpCallResult("", McpError("protocol_error", f"no MCP server labelled {tool.server_label!r} is "
                                              f"configured", mcp_types.CONNECTION_CLOSED))
        return await connection.call(tool.remote_name or tool.name, arguments, timeout_s)

    async def retain(self, specs: Sequence[McpServerSpec]) -> None:
        """Close the connections to servers not among `specs`."""
        keep = {spec.key for spec in specs}
        gone = [key for key in self._connections if key not in keep]
        await asyncio.gather(*(self._connections.pop(key).aclose() for key in gone))

    async def aclose(self) -> None:
        await self.retain(())

    def __iter__(self) -> Iterator[McpConnection]:
        return iter(list(self._connections.values()))


def parse_mcp_server_flag(text: str) -> McpServerSpec:
    """A `--mcp-server` value: `LABEL=URL`, `LABEL=stdio:COMMAND ARGS...` (split as a shell splits), or a JSON
    object shaped as a Realtime `mcp` tool (`command`, a list, in place of `server_url` for stdio). Servers
    the operator configures call their tools without approval unless the JSON says otherwise."""
    never = ApprovalPolicy("never")
    text = text.strip()
    if text.startswith("{"):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ToolSpecError(f"--mcp-server: not JSON ({exc.msg})", "--mcp-server") from None
        if not isinstance(value, dict):
            raise ToolSpecError("--mcp-server: the JSON must be an object", "--mcp-server")
        return parse_mcp_server(value, "--mcp-server", allow_command=True, default_approval=never)
    label, sep, where = text.partition("=")
    if not sep or not where:
        raise ToolSpecError(f"--mcp-server takes LABEL=URL, LABEL=stdio:COMMAND ARGS or a JSON object, got "
                            f"{text!r}", "--mcp-server")
    value = {"type": "mcp", "server_label": label.strip()}
    if where.startswith("stdio:"):
        try:
            value["command"] = shlex.split(where.removeprefix("stdio:"))
        except ValueError as exc:
            raise ToolSpecError(f"--mcp-server: cannot split the command {where!r} ({exc})", "--mcp-server") from None
    else:
        value["server_url"] = where.strip()
    return parse_mcp_server(value, "--mcp-server", allow_command=True, default_approval=never)


def result_text(result: mcp_types.CallToolResult) -> str:
    """A tool result as text: its text blocks, what other blocks are, or its structured content as JSON."""
    parts: list[str] = []
    for block in result.content:
        if isinstance(block, mcp_types.TextContent):
            parts.append(block.text)
        elif isinstance(block, mcp_types.EmbeddedResource):
            resource = block.resource
            parts.append(resource.text if isinstance(resource, mcp_types.TextResourceContents)
                         else f"[resource {resource.uri}]")
        elif isinstance(block, mcp_types.ResourceLink):
            parts.append(f"[resource {block.uri}]")
        elif isinstance(block, mcp_types.ImageContent | mcp_types.AudioContent):
            parts.append(f"[{block.type} {block.mime_type}]")
    if not parts and result.structured_content is not None:
        return json.dumps(result.structured_content)
    return "\n".join(parts)


def _leaves(exc: BaseException) -> Iterator[BaseException]:
    """The exceptions inside (nested) exception groups, and the causes of wrapped ones."""
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from _leaves(inner)
        return
    yield exc
    if exc.__cause__ is not None:
        yield from _leaves(exc.__cause__)


def _leaf_text(exc: BaseException) -> str:
    leaf = next(_leaves(exc))
    return str(leaf) or type(leaf).__name__
