"""Answering a call: the voice webhook's TwiML, the carrier's request signatures, and the calls we answered.

Written for Twilio; a carrier with a TwiML dialect (Telnyx's TeXML, telnyx.py) brings its own `LineSettings`
subclass: its paths, its signature check, and the attributes its `<Stream>` needs.

`POST /twilio/voice` (Twilio's webhook when the number is called) answers
`<Response><Connect><Stream url="wss://HOST/twilio/media/TOKEN">` with `<Parameter>`s, which Twilio hands back
in the stream's `start.customParameters`. The stream URL can carry no query string, so the per-call token is
the last path segment. The media WebSocket is then accepted only when its token is one this webhook issued
(unexpired, used once) and, as Twilio documents for Media Streams, its upgrade request carries a valid
`X-Twilio-Signature` over the stream URL. Signatures are checked by the `twilio` package's `RequestValidator`
(HMAC-SHA1 of the full URL + the sorted POST parameters, keyed by the account's auth token), always against
the public URL Twilio used, not the one a proxy forwarded to us.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Protocol
from urllib.parse import urlsplit, urlunsplit

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.websockets import WebSocket
from twilio.request_validator import SIGNATURE_HEADER, RequestValidator
from twilio.twiml.voice_response import Connect, VoiceResponse

from higgs_agent.logs import session_id
from higgs_agent.transport.phone.serializer import CallStarted
from higgs_agent.transport.phone.twilio import TwilioSerializer
from higgs_agent.transport.signing import Signer

if TYPE_CHECKING:
    from higgs_agent.transport.phone.serializer import MediaStreamSerializer

log = logging.getLogger(__name__)

# Twilio caps custom parameters at 500 characters of names and values; read as a total over all of them
# (the stricter reading, which also meets a per-parameter cap).
PARAMETERS_MAX_CHARS = 500
TOKEN_PARAM = "token"  # the path parameter of the media route
TOKEN_PREFIX = "ms_"  # a media-stream token


class Signatures(Protocol):
    """How a carrier proves a request is its own."""

    def webhook_valid(self, url: str, form: Mapping[str, str], headers: Mapping[str, str], body: bytes) -> bool:
        """A webhook POST: `url` is the full URL the carrier requested (query string included)."""

    def media_upgrade_valid(self, stream_url: str, headers: Mapping[str, str]) -> bool:
        """The media WebSocket's upgrade request."""


@dataclass(frozen=True)
class LineSettings:
    """Where a carrier reaches this server and how it proves itself.

    `public_url` is the base the carrier sees (e.g. "https://agent.example.com", or with a path prefix behind a
    proxy); the webhook is `public_url + voice_path` and streams go to `wss://...` + `media_path/TOKEN`.
    `parameters` go into every stream as `<Parameter>`s; `pass_through` names webhook fields (e.g. the caller's
    `From`) copied into them too. Subclasses name the carrier's secret, its signatures and its serializer.
    """

    public_url: str
    allow_unsigned: bool = False
    voice_path: str = "/phone/voice"
    media_path: str = "/phone/media"
    parameters: Mapping[str, str] = field(default_factory=dict)
    pass_through: tuple[str, ...] = ("From", "To")
    stream_name: str | None = None
    carrier: ClassVar[str] = "the carrier"
    stream_attributes: ClassVar[Mapping[str, str]] = {}  # extra `<Stream>` attributes (snake_case)

    def __post_init__(self) -> None:
        scheme = urlsplit(self.public_url).scheme
        if scheme not in ("https", "http"):
            raise ValueError(f"public_url must be an http(s) URL, got {self.public_url!r}")
        if not self.secret and not self.allow_unsigned:
            raise ValueError(f"{self.carrier}'s signing secret is required to check request signatures "
                             "(allow_unsigned=True turns the checks off: local testing only)")
        check_parameters(self.parameters)

    @property
    def secret(self) -> str | None:
        return None

    def signatures(self) -> Signatures | None:
        """None: requests are not checked (only with `allow_unsigned`)."""
        return None

    def serializer(self) -> MediaStreamSerializer:
        raise NotImplementedError

    @property
    def base(self) -> str:
        return self.public_url.rstrip("/")

    @property
    def webhook_url(self) -> str:
        return self.base + self.voice_path

    def media_url(self, token: str) -> str:
        """The stream URL for one call: Twilio connects to it only over wss (https -> wss)."""
        parts = urlsplit(self.base)
        scheme = "wss" if parts.scheme == "https" else "ws"
        return urlunsplit((scheme, parts.netloc, f"{parts.path}{self.media_path}/{token}", "", ""))

    @property
    def media_route_path(self) -> str:
        """The Starlette path of the media WebSocket route, with the token as path parameter."""
        return f"{self.media_path}/{{{TOKEN_PARAM}}}"


def parameters_chars(parameters: Mapping[str, str]) -> int:
    return sum(len(name) + len(value) for name, value in parameters.items())


def check_parameters(parameters: Mapping[str, str]) -> None:
    if any(not name for name in parameters):
        raise ValueError("a <Parameter> needs a name")
    if parameters_chars(parameters) >= PARAMETERS_MAX_CHARS:
        raise ValueError(f"<Parameter> names and values must stay under {PARAMETERS_MAX_CHARS} characters "
                         f"in all, got {parameters_chars(parameters)}")


@dataclass(frozen=True)
class TwilioSettings(LineSettings):
    """A Twilio number on this server. `auth_token` (the account's) checks every signature."""

    auth_token: str | None = field(default=None, repr=False)  # a secret: kept out of logs and reprs
    voice_path: str = "/twilio/voice"
    media_path: str = "/twilio/media"
    carrier: ClassVar[str] = "Twilio"

    @property
    def secret(self) -> str | None:
        return self.auth_token

    def signatures(self) -> TwilioSignatures | None:
        return TwilioSignatures(self.auth_token) if self.auth_token else None

    def serializer(self) -> MediaStreamSerializer:
        return TwilioSerializer()


def connect_stream_twiml(stream_url: str, parameters: Mapping[str, str] | None = None,
                         name: str | None = None, attributes: Mapping[str, str] | None = None) -> str:
    """`<Response><Connect><Stream url=...>` (a bidirectional stream) with one `<Parameter>` per entry;
    `attributes` (snake_case) are added to `<Stream>` in camelCase."""
    if urlsplit(stream_url).query:
        raise ValueError("Twilio's <Stream url> takes no query string: pass data as parameters or in the path")
    parameters = parameters or {}
    check_parameters(parameters)
    response = VoiceResponse()
    connect = Connect()
    stream = connect.stream(url=stream_url, name=name, **(attributes or {}))
    for key, value in parameters.items():
        stream.parameter(name=key, value=value)
    response.append(connect)
    return response.to_xml()


class TwilioSignatures:
    """Checks `X-Twilio-Signature` headers with the `twilio` package's RequestValidator."""

    def __init__(self, auth_token: str) -> None:
        self._validator = RequestValidator(auth_token)

    def webhook_valid(self, url: str, form: Mapping[str, str], headers: Mapping[str, str], body: bytes) -> bool:
        """A webhook POST: signed over the full URL Twilio requested and its form fields."""
        signature = headers.get(SIGNATURE_HEADER)
        return bool(signature) and self._validator.validate(url, form, signature)

    def media_upgrade_valid(self, stream_url: str, headers: Mapping[str, str]) -> bool:
        """A Media Streams WebSocket upgrade: signed over the stream URL alone (there is no body)."""
        signature = headers.get(SIGNATURE_HEADER)
        return bool(signature) and self._validator.validate(stream_url, {}, signature)


@dataclass(frozen=True)
class AnsweredCall:
    """A call our webhook answered, waiting for its media stream."""

    token: str
    call_sid: str
    account_sid: str | None
    parameters: Mapping[str, str]
    expires_at: float

    def check_started(self, started: CallStarted) -> None:
        """The stream's `start` must be for the call this token was issued to."""
        if started.call_id != self.call_sid:
            raise MediaSocketRefusedError(f"stream started for call {started.call_id!r}, but its token was "
                                          f"issued to {self.call_sid!r}")
        if self.account_sid and started.account_id and started.account_id != self.account_sid:
            raise MediaSocketRefusedError("stream started for another account than the call's")


class AnsweredCalls:
    """Calls answered in the last `ttl_s` seconds, by per-call token; a token admits one socket, once here.

    A token is signed and carries its call (transport/signing.py), so the media stream may reach another agent
    than the one whose webhook answered (behind a load balancer): any agent with the same `key`
    (`--client-secret-key`) admits it, once, within `ttl_s`. The carrier's signature on the stream's upgrade and
    the call id its `start` must name still hold it to that one call."""

    def __init__(self, ttl_s: float = 60.0, max_pending: int = 1000,
                 clock: Callable[[], float] = time.monotonic, key: bytes | None = None,
                 wall: Callable[[], float] = time.time) -> None:
        self.ttl_s = ttl_s
        self.max_pending = max_pending
        self._clock = clock
        self._wall = wall
        self._signer = Signer(key)
        self._calls: OrderedDict[str, AnsweredCall] = OrderedDict()
        self._spent: OrderedDict[str, float] = OrderedDict()  # signed tokens claimed here, until they expire

    def answer(self, call_sid: str, account_sid: str | None = None,
               parameters: Mapping[str, str] | None = None) -> AnsweredCall:
        self._expire()
        while len(self._calls) >= self.max_pending:
            self._calls.popitem(last=False)  # bounded memory under a webhook flood
        token = self._signer.dumps(TOKEN_PREFIX, {
            "call": call_sid, "account": account_sid, "parameters": dict(parameters or {}),
            "expires_at": self._wall() + self.ttl_s, "nonce": secrets.token_hex(8)})
        call = AnsweredCall(token, call_sid, account_sid, dict(parameters or {}), self._clock() + self.ttl_s)
        self._calls[token] = call
        return call

    def claim(self, token: str) -> AnsweredCall | None:
        """The call of an unexpired token, which is used up; None for an unknown, used or expired one."""
        self._expire()
        call = self._calls.pop(token, None)
        if call is not None or token in self._spent:
            self._spent[token] = self._wall() + self.ttl_s
            return call
        payload = self._signer.loads(TOKEN_PREFIX, token)  # answered by another agent with the same key
        try:
            if payload is None or float(payload["expires_at"]) <= self._wall():
                return None
            call = AnsweredCall(token, str(payload["call"]), payload.get("account"), dict(payload["parameters"]),
                                self._clock() + float(payload["expires_at"]) - self._wall())
        except (KeyError, TypeError, ValueError):
            return None
        self._spent[token] = float(payload["expires_at"])
        while len(self._spent) > self.max_pending:
            self._spent.popitem(last=False)
        return call

    def __len__(self) -> int:
        self._expire()
        return len(self._calls)

    def _expire(self) -> None:
        now = self._clock()
        while self._calls:
            token, call = next(iter(self._calls.items()))
            if call.expires_at > now:
                break
            del self._calls[token]
        wall = self._wall()
        while self._spent and next(iter(self._spent.values())) <= wall:
            self._spent.popitem(last=False)


class MediaSocketRefusedError(PermissionError):
    """A media socket we will not serve; the message says why (for the log, not the peer)."""


class MediaSocketGate:
    """What the media WebSocket route asks before it accepts: is this a stream for a call we answered?"""

    def __init__(self, settings: LineSettings, calls: AnsweredCalls) -> None:
        self.settings = settings
        self.calls = calls
        self._signatures = settings.signatures()

    def admit(self, token: str, headers: Mapping[str, str]) -> AnsweredCall:
        """The call a media socket belongs to, or `MediaSocketRefusedError`. The signature is checked before
        the token is spent, so an unsigned attempt cannot use up a real call's token."""
        if self._signatures is not None and not self._signatures.media_upgrade_valid(
                self.settings.media_url(token), headers):
            raise MediaSocketRefusedError(f"missing or invalid {self.settings.carrier} signature on the media "
                                          "socket")
        call = self.calls.claim(token)
        if call is None:
            raise MediaSocketRefusedError("unknown, used or expired media-stream token")
        return call

    def admit_websocket(self, websocket: WebSocket) -> AnsweredCall:
        """`admit` for a Starlette WebSocket on `settings.media_route_path`, before it is accepted (on a
        refusal the route closes it unaccepted, which the client sees as HTTP 403)."""
        return self.admit(str(websocket.path_params.get(TOKEN_PARAM, "")), websocket.headers)


def stream_parameters(settings: LineSettings, form: Mapping[str, str]) -> dict[str, str]:
    """The `<Parameter>`s of one call: the fixed ones, then the webhook fields named in `pass_through`."""
    parameters = dict(settings.parameters)
    for name in settings.pass_through:
        value = form.get(name)
        if not value:
            continue
        if parameters_chars(parameters) + len(name) + len(value) >= PARAMETERS_MAX_CHARS:
            log.warning("voice webhook: no room for %s among the <Parameter>s; left out", name)
            continue
        parameters[name] = value
    return parameters


def voice_webhook_route(settings: LineSettings, calls: AnsweredCalls,
                        before_answer: Callable[[], Awaitable[None]] | None = None) -> Route:
    """`POST settings.voice_path`: check the carrier's signature, remember the call, answer with the TwiML
    that connects it to its own media-stream URL. `before_answer` runs for each signed call before the answer
    (the phone line readies its busy message there, while no session of this call holds a slot)."""
    signatures = settings.signatures()
    carrier = settings.carrier

    async def voice(request: Request) -> Response:
        body = await request.body()  # before the form: a signature may cover the raw body
        form = await request.form()
        if signatures is not None:
            url = settings.webhook_url + (f"?{request.url.query}" if request.url.query else "")
            if not signatures.webhook_valid(url, form, request.headers, body):
                log.warning("%s webhook: refused a request without a valid signature (checked against %s)",
                            carrier, url)
                return PlainTextResponse(f"invalid {carrier} signature", status_code=403)
        call_sid = str(form.get("CallSid") or "")
        if not call_sid:
            return PlainTextResponse(f"missing CallSid: this endpoint answers {carrier} voice webhooks",
                                     status_code=400)
        session_id.set(call_sid)  # the webhook's log lines name the call, as its stream's will
        if before_answer is not None:
            await before_answer()
        fields = {key: str(value) for key, value in form.items()}
        account_sid = fields.get("AccountSid") or None
        call = calls.answer(call_sid, account_sid, stream_parameters(settings, fields))
        log.info("answered: connecting the call to its media stream")
        twiml = connect_stream_twiml(settings.media_url(call.token), call.parameters, settings.stream_name,
                                     settings.stream_attributes)
        return Response(twiml, media_type="application/xml")

    return Route(settings.voice_path, voice, methods=["POST"])
