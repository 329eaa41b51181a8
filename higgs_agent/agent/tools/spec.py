"""Tool definitions as the Realtime protocol gives them (`session.tools`, `tool_choice`, and the same fields of
`response.create`), parsed into typed objects.

Two kinds of tool (OpenAI Realtime GA):
- `{"type": "function", "name", "description", "parameters"}`: the client runs it. The model's call goes out
  as a `function_call` item; the client answers with a `function_call_output` item.
- `{"type": "mcp", "server_label", "server_url", "headers", "authorization", "allowed_tools",
  "require_approval", "server_description"}`: the server connects to a remote MCP server and runs its tools
  itself (`mcp_client.py`). `connector_id` and `tunnel_id` (OpenAI-hosted connectors) are refused: nothing
  here can reach them.
`tool_choice`: `"auto" | "none" | "required" | {"type": "function", "name"} | {"type": "mcp", "server_label",
"name"?}`.

Every bad value raises `ToolSpecError`, a `ProtocolError` with code `invalid_value` and the exact parameter
path (`session.tools.0.parameters`) as `param`: the session reports it as any other bad field. Fields this
server does not act on (`allowed_callers`, `defer_loading`, unknown keys) are accepted and ignored, as the
rest of a `session.update` is.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import jsonschema
from jsonschema.exceptions import SchemaError, best_match
from jsonschema.protocols import Validator

from higgs_agent.protocol.errors import ProtocolError

FUNCTION_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # what chat-completions endpoints accept as a tool name
SERVER_LABEL = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
EMPTY_PARAMETERS: Mapping[str, Any] = {"type": "object", "properties": {}}
ChoiceMode = Literal["auto", "none", "required", "function", "mcp"]


class ToolSpecError(ProtocolError, ValueError):
    """A tool definition or tool choice we cannot accept. `param` is the path of the bad field."""

    def __init__(self, message: str, param: str) -> None:
        ProtocolError.__init__(self, "invalid_value", message, param=param)


class InvalidArguments(ValueError):
    """A function call whose arguments are not JSON, or not what the function's parameters schema allows."""


@dataclass(frozen=True)
class FunctionTool:
    """A function the model may call.

    `name` is the name the model sees. For a tool listed from an MCP server, `server_label` names the server
    and `remote_name` the tool's own name there (it differs from `name` when two servers share a tool name);
    `read_only` is the server's `readOnlyHint` and `requires_approval` follows the server's
    `require_approval`. A plain function tool (`server_label` None) runs on the client.
    """

    name: str
    description: str = ""
    parameters: Mapping[str, Any] = field(default_factory=lambda: dict(EMPTY_PARAMETERS))
    server_label: str | None = None
    remote_name: str | None = None
    read_only: bool = False
    requires_approval: bool = False

    @property
    def runs_on_server(self) -> bool:
        return self.server_label is not None

    def to_dict(self) -> dict[str, Any]:
        """The Realtime shape (`session.updated` echoes it)."""
        return {"type": "function", "name": self.name, "description": self.description,
                "parameters": dict(self.parameters)}

    def to_chat_tool(self) -> dict[str, Any]:
        """The chat-completions shape."""
        function: dict[str, Any] = {"name": self.name, "parameters": dict(self.parameters)}
        if self.description:
            function["description"] = self.description
        return {"type": "function", "function": function}

    def check_arguments(self, arguments: str) -> dict[str, Any]:
        """The arguments as an object, if they are JSON that the parameters schema allows; else InvalidArguments.
        Blank arguments mean `{}` (some models send nothing for a function without parameters)."""
        text = arguments.strip() or "{}"
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidArguments(f"the arguments of {self.name} are not JSON ({exc.msg} at character "
                                   f"{exc.pos}): {_clip(arguments)}") from None
        if not isinstance(value, dict):
            raise InvalidArguments(f"the arguments of {self.name} must be a JSON object, got {_clip(text)}")
        error = best_match(_validator(self.parameters).iter_errors(value))
        if error is not None:
            where = "".join(f"[{p!r}]" for p in error.absolute_path) or "the arguments"
            raise InvalidArguments(f"the arguments of {self.name} do not match its parameters: {error.message} "
                                   f"(at {where})")
        return value


@dataclass(frozen=True)
class ToolFilter:
    """Which of a server's tools a rule applies to: by name, by `readOnlyHint`, or both (None: any)."""

    tool_names: frozenset[str] | None = None
    read_only: bool | None = None

    def matches(self, name: str, read_only: bool) -> bool:
        return ((self.tool_names is None or name in self.tool_names)
                and (self.read_only is None or read_only == self.read_only))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.tool_names is not None:
            out["tool_names"] = sorted(self.tool_names)
        if self.read_only is not None:
            out["read_only"] = self.read_only
        return out


@dataclass(frozen=True)
class ApprovalPolicy:
    """`require_approval`: "always", "never", or per-tool filters (`{"always": filter, "never": filter}`).
    A tool that no filter matches needs approval: calling a remote tool unasked is the riskier default."""

    mode: Literal["always", "never", "filter"] = "always"
    always: ToolFilter | None = None
    never: ToolFilter | None = None

    def requires_approval(self, name: str, read_only: bool) -> bool:
        if self.mode != "filter":
            return self.mode == "always"
        if self.always is not None and self.always.matches(name, read_only):
            return True
        return not (self.never is not None and self.never.matches(name, read_only))

    def to_dict(self) -> str | dict[str, Any]:
        if self.mode != "filter":
            return self.mode
        out: dict[str, Any] = {}
        if self.always is not None:
            out["always"] = self.always.to_dict()
        if self.never is not None:
            out["never"] = self.never.to_dict()
        return out


@dataclass(frozen=True)
class McpServerSpec:
    """An MCP server whose tools the server runs: over streamable HTTP (`server_url`), or, only when the
    operator configures it (`--mcp-server`), a local command over stdio (`command`)."""

    server_label: str
    server_url: str | None = None
    command: tuple[str, ...] | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    allowed_tools: ToolFilter | None = None
    require_approval: ApprovalPolicy = field(default_factory=ApprovalPolicy)
    server_description: str | None = None

    def __post_init__(self) -> None:
        if (self.server_url is None) == (self.command is None):
            raise ValueError("an MCP server needs exactly one of server_url and command")

    @property
    def key(self) -> tuple[Any, ...]:
        """What makes two specs the same connection (a session reuses connections with equal keys)."""
        return (self.server_label, self.server_url, self.command, tuple(sorted(self.headers.items())))

    @property
    def where(self) -> str:
        return self.server_url if self.server_url is not None else "stdio:" + " ".join(self.command or ())

    def allows(self, name: str, read_only: bool) -> bool:
        return self.allowed_tools is None or self.allowed_tools.matches(name, read_only)

    def to_dict(self) -> dict[str, Any]:
        """The Realtime shape. Header values are not echoed back: they are usually credentials."""
        out: dict[str, Any] = {"type": "mcp", "server_label": self.server_label,
                               "require_approval": self.require_approval.to_dict()}
        if self.server_url is not None:
            out["server_url"] = self.server_url
        if self.headers:
            out["headers"] = {name: "<redacted>" for name in self.headers}
        if self.allowed_tools is not None:
            out["allowed_tools"] = self.allowed_tools.to_dict()
        if self.server_description:
            out["server_description"] = self.server_description
        return out


Tool = FunctionTool | McpServerSpec


@dataclass(frozen=True)
class ToolChoice:
    """How the model chooses tools. `name` is set for "function" (and optionally "mcp"); `server_label` for
    "mcp". A responder only ever sees auto, none, required or function (`Toolbox` resolves "mcp")."""

    mode: ChoiceMode = "auto"
    name: str | None = None
    server_label: str | None = None

    def to_dict(self) -> str | dict[str, Any]:
        if self.mode == "function":
            return {"type": "function", "name": self.name}
        if self.mode == "mcp":
            out: dict[str, Any] = {"type": "mcp", "server_label": self.server_label}
            if self.name is not None:
                out["name"] = self.name
            return out
        return self.mode

    def to_chat(self) -> str | dict[str, Any]:
        """The chat-completions `tool_choice`."""
        if self.mode == "function":
            return {"type": "function", "function": {"name": self.name}}
        if self.mode == "mcp":
            raise ValueError("an mcp tool choice must be resolved to functions first (Toolbox)")
        return self.mode


@dataclass(frozen=True)
class ToolConfig:
    """A session's (or one response's) tools and tool choice."""

    tools: tuple[Tool, ...] = ()
    tool_choice: ToolChoice = field(default_factory=ToolChoice)

    @property
    def functions(self) -> tuple[FunctionTool, ...]:
        return tuple(t for t in self.tools if isinstance(t, FunctionTool))

    @property
    def mcp_servers(self) -> tuple[McpServerSpec, ...]:
        return tuple(t for t in self.tools if isinstance(t, McpServerSpec))

    def updated(self, payload: Mapping[str, Any], prefix: str) -> ToolConfig:
        """A copy with `payload`'s `tools` / `tool_choice` applied (absent keys keep their value; null resets).
        `prefix` is where `payload` sits: "session" for `session.update`, "response" for `response.create`.
        A tool choice that names a tool must name one that is configured (ToolSpecError otherwise)."""
        tools = self.tools
        choice = self.tool_choice
        if "tools" in payload:
            tools = () if payload["tools"] is None else parse_tools(payload["tools"], f"{prefix}.tools")
        if "tool_choice" in payload:
            raw = payload["tool_choice"]
            choice = ToolChoice() if raw is None else parse_tool_choice(raw, f"{prefix}.tool_choice")
        updated = ToolConfig(tools, choice)
        check_tool_choice(choice, updated.tools, f"{prefix}.tool_choice")
        return updated

    def to_dict(self) -> dict[str, Any]:
        return {"tools": [tool.to_dict() for tool in self.tools], "tool_choice": self.tool_choice.to_dict()}


def parse_tools(value: Any, param: str = "session.tools") -> tuple[Tool, ...]:  # noqa: ANN401 - JSON
    if not isinstance(value, list):
        raise ToolSpecError(f"{param} must be a list of tools", param)
    tools = tuple(parse_tool(entry, f"{param}.{index}") for index, entry in enumerate(value))
    names: set[str] = set()
    labels: set[str] = set()
    for index, tool in enumerate(tools):
        if isinstance(tool, FunctionTool):
            if tool.name in names:
                raise ToolSpecError(f"two functions are named {tool.name!r}", f"{param}.{index}.name")
            names.add(tool.name)
        else:
            if tool.server_label in labels:
                raise ToolSpecError(f"two MCP servers are labelled {tool.server_label!r}",
                                    f"{param}.{index}.server_label")
            labels.add(tool.server_label)
    return tools


def parse_tool(value: Any, param: str) -> Tool:  # noqa: ANN401 - JSON
    if not isinstance(value, dict):
        raise ToolSpecError(f"{param} must be an object", param)
    kind = value.get("type", "function")  # the reference marks `type` optional for function tools
    if kind == "function":
        return parse_function_tool(value, param)
    if kind == "mcp":
        return parse_mcp_server(value, param)
    raise ToolSpecError(f"{param}.type must be 'function' or 'mcp', got {kind!r}", f"{param}.type")


def parse_function_tool(value: Mapping[str, Any], param: str) -> FunctionTool:
    name = value.get("name")
    if not isinstance(name, str) or not FUNCTION_NAME.match(name):
        raise ToolSpecError(f"{param}.name must be 1 to 64 letters, digits, '_' or '-', got {name!r}",
                            f"{param}.name")
    description = _optional_string(value, "description", param) or ""
    parameters = value.get("parameters")
    if parameters is None:
        parameters = dict(EMPTY_PARAMETERS)
    elif not isinstance(parameters, dict):
        raise ToolSpecError(f"{param}.parameters must be a JSON Schema object", f"{param}.parameters")
    else:
        if parameters.get("type", "object") != "object":
            raise ToolSpecError(f"{param}.parameters must describe an object (type 'object'), "
                                f"got type {parameters.get('type')!r}", f"{param}.parameters")
        try:
            jsonschema.validators.validator_for(parameters, default=jsonschema.Draft202012Validator) \
                .check_schema(parameters)
        except SchemaError as exc:
            where = "".join(f".{p}" for p in exc.absolute_path)
            raise ToolSpecError(f"{param}.parameters is not a valid JSON Schema: {exc.message}",
                                f"{param}.parameters{where}") from None
    return FunctionTool(name=name, description=description, parameters=parameters)


def parse_mcp_server(value: Mapping[str, Any], param: str, *, allow_command: bool = False,
                     default_approval: ApprovalPolicy | None = None) -> McpServerSpec:
    """An `mcp` tool. `allow_command` (the operator's `--mcp-server` only: a remote client must never start a
    process here) accepts `command` (a list of strings) in place of `server_url`."""
    label = value.get("server_label")
    if not isinstance(label, str) or not SERVER_LABEL.match(label):
        raise ToolSpecError(f"{param}.server_label must start with a letter and hold only letters, digits, '_' "
                            f"or '-' (at most 64), got {label!r}", f"{param}.server_label")
    for hosted in ("connector_id", "tunnel_id"):
        if value.get(hosted) is not None:
            raise ToolSpecError(f"{param}.{hosted} is not supported by this server (OpenAI-hosted connectors "
                                f"are not reachable from here): give the MCP server's server_url",
                                f"{param}.{hosted}")
    url = value.get("server_url")
    command = value.get("command") if allow_command else None
    if command is not None:
        if url is not None:
            raise ToolSpecError(f"{param} takes server_url or command, not both", f"{param}.command")
        if (not isinstance(command, list) or not command
                or not all(isinstance(part, str) and part for part in command)):
            raise ToolSpecError(f"{param}.command must be a non-empty list of strings", f"{param}.command")
    elif not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise ToolSpecError(f"{param}.server_url must be an http:// or https:// URL (the MCP server's "
                            f"streamable HTTP endpoint), got {url!r}", f"{param}.server_url")
    headers = _string_map(value.get("headers"), f"{param}.headers")
    authorization = _optional_string(value, "authorization", param)
    if authorization:
        headers = {**headers, "Authorization": f"Bearer {authorization}"}
    allowed = value.get("allowed_tools")
    policy = value.get("require_approval")
    return McpServerSpec(
        server_label=label,
        server_url=url if command is None else None,
        command=tuple(command) if command is not None else None,
        headers=headers,
        allowed_tools=None if allowed is None else _tool_filter(allowed, f"{param}.allowed_tools"),
        require_approval=(default_approval or ApprovalPolicy()) if policy is None
        else _approval(policy, f"{param}.require_approval"),
        server_description=_optional_string(value, "server_description", param),
    )


def parse_tool_choice(value: Any, param: str = "session.tool_choice") -> ToolChoice:  # noqa: ANN401 - JSON
    if value in ("auto", "none", "required"):
        return ToolChoice(value)
    if isinstance(value, dict):
        kind = value.get("type")
        if kind == "function":
            name = value.get("name")
            if not isinstance(name, str) or not FUNCTION_NAME.match(name):
                raise ToolSpecError(f"{param}.name must name a function, got {name!r}", f"{param}.name")
            return ToolChoice("function", name=name)
        if kind == "mcp":
            label = value.get("server_label")
            if not isinstance(label, str) or not label:
                raise ToolSpecError(f"{param}.server_label must name an MCP server, got {label!r}",
                                    f"{param}.server_label")
            name = value.get("name")
            if name is not None and (not isinstance(name, str) or not name):
                raise ToolSpecError(f"{param}.name must be a tool name, got {name!r}", f"{param}.name")
            return ToolChoice("mcp", name=name, server_label=label)
        raise ToolSpecError(f"{param}.type must be 'function' or 'mcp', got {kind!r}", f"{param}.type")
    raise ToolSpecError(f"{param} must be 'auto', 'none', 'required', {{\"type\": \"function\", \"name\": ...}} "
                        f"or {{\"type\": \"mcp\", \"server_label\": ...}}, got {value!r}", param)


def check_tool_choice(choice: ToolChoice, tools: Sequence[Tool], param: str) -> None:
    """A choice that forces a tool must name a configured one (an MCP tool's name is checked once the server
    has been listed: see `Toolbox`)."""
    if choice.mode == "function" and not any(isinstance(t, FunctionTool) and t.name == choice.name for t in tools):
        raise ToolSpecError(f"{param} names the function {choice.name!r}, which is not among the tools", param)
    if choice.mode == "mcp" and not any(isinstance(t, McpServerSpec) and t.server_label == choice.server_label
                                        for t in tools):
        raise ToolSpecError(f"{param} names the MCP server {choice.server_label!r}, which is not among the tools",
                            param)


def _tool_filter(value: Any, param: str) -> ToolFilter:  # noqa: ANN401 - JSON
    if isinstance(value, list):
        return ToolFilter(tool_names=frozenset(_names(value, param)))
    if isinstance(value, dict):
        names = value.get("tool_names")
        read_only = value.get("read_only")
        if read_only is not None and not isinstance(read_only, bool):
            raise ToolSpecError(f"{param}.read_only must be true or false", f"{param}.read_only")
        return ToolFilter(tool_names=None if names is None else frozenset(_names(names, f"{param}.tool_names")),
                          read_only=read_only)
    raise ToolSpecError(f"{param} must be a list of tool names or a filter object "
                        f"({{\"tool_names\": [...], \"read_only\": bool}})", param)


def _approval(value: Any, param: str) -> ApprovalPolicy:  # noqa: ANN401 - JSON
    if value in ("always", "never"):
        return ApprovalPolicy(value)
    if isinstance(value, dict):
        always = value.get("always")
        never = value.get("never")
        return ApprovalPolicy("filter",
                              always=None if always is None else _tool_filter(always, f"{param}.always"),
                              never=None if never is None else _tool_filter(never, f"{param}.never"))
    raise ToolSpecError(f"{param} must be 'always', 'never' or {{\"always\": filter, \"never\": filter}}, "
                        f"got {value!r}", param)


def _names(value: Any, param: str) -> list[str]:  # noqa: ANN401 - JSON
    if not isinstance(value, list) or not all(isinstance(n, str) and n for n in value):
        raise ToolSpecError(f"{param} must be a list of tool names", param)
    return value


def _string_map(value: Any, param: str) -> dict[str, str]:  # noqa: ANN401 - JSON
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise ToolSpecError(f"{param} must be an object of string values", param)
    return dict(value)


def _optional_string(value: Mapping[str, Any], key: str, param: str) -> str | None:
    text = value.get(key)
    if text is not None and not isinstance(text, str):
        raise ToolSpecError(f"{param}.{key} must be a string", f"{param}.{key}")
    return text


def _validator(schema: Mapping[str, Any]) -> Validator:
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    return cls(schema)


def _clip(text: str, limit: int = 200) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")
