"""The HTTP side of OpenAI's WebRTC flow:

- `POST /v1/realtime/calls`: an SDP offer in (either body form, see offer.py), `201 Created` with the SDP
  answer and `Location: /v1/realtime/calls/{call_id}` out. 400 in OpenAI's error shape for an offer or
  session config that cannot be used, 503 (`Retry-After`) when every engine slot is busy (a transcription
  call, `?intent=transcription` or a session config of `"type": "transcription"`, makes no replies and is never
  refused for that).
- `POST /v1/realtime/calls/{call_id}/hangup`: end a call (its tenant only).
- `POST /v1/realtime/client_secrets`: mint an `ek_` client secret for the caller's tenant (client_secrets.py).
"""

from __future__ import annotations

import logging
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from higgs_agent.agent.services import AgentServices
from higgs_agent.agent.transcription_session import TRANSCRIPTION, intent_sessions, kind_of
from higgs_agent.logs import session_id
from higgs_agent.streaming.engine import AtCapacityError
from higgs_agent.protocol.errors import ProtocolError, loads_strict
from higgs_agent.transport.auth import OPEN_TENANT, Principal, principal_of
from higgs_agent.transport.webrtc.calls import Call, CallRegistry
from higgs_agent.transport.webrtc.client_secrets import (
    DEFAULT_SECONDS,
    MAX_SECONDS,
    MIN_SECONDS,
    ClientSecrets,
    SessionTooLargeError,
)
from higgs_agent.transport.webrtc.offer import ApiError, read_call_request
from higgs_agent.transport.webrtc.settings import WebRTCSettings

log = logging.getLogger(__name__)
CALLS_PATH = "/v1/realtime/calls"


def webrtc_routes(services: AgentServices, calls: CallRegistry, secrets: ClientSecrets,
                  settings: WebRTCSettings) -> list[Route]:
    async def create_call(request: Request) -> Response:
        try:
            offer = await read_call_request(request)
            principal = _principal(request)
            intended, refused = intent_sessions(request.query_params)
            if refused:
                raise ApiError(400, refused[0].message, refused[0].code, param=refused[0].param)
            sessions = [s for s in (principal.session, offer.session) if s] + intended
            if kind_of(sessions) != TRANSCRIPTION:  # captions make no replies: they need no engine capacity
                try:
                    await services.engine.admit("webrtc call")
                except AtCapacityError as exc:
                    raise ApiError(503, str(exc), "at_capacity", type="server_error",
                                   headers={"Retry-After": "1"}) from None
            call = Call(services, settings, principal.tenant)
            session_id.set(call.id)  # every line logged for this call names it
            try:
                answer = await call.start(offer.sdp, sessions)
            except BaseException:
                await call.end("the offer was refused")
                raise
        except ApiError as exc:
            return exc.response()
        calls.add(call)
        log.info("call from %s (tenant %s)", request.client.host if request.client else "?", principal.tenant)
        return Response(answer, status_code=201, media_type="application/sdp",
                        headers={"Location": f"{CALLS_PATH}/{call.id}"})

    async def hangup(request: Request) -> Response:
        call = calls.get(request.path_params["call_id"], _principal(request).tenant)
        if call is None:
            return ApiError(404, "no such call", "call_not_found", param="call_id").response()
        await call.end("hung up")
        return Response(status_code=200)

    async def client_secret(request: Request) -> Response:
        try:
            expires_s, session = _client_secret_request(await request.body())
            tenant = _principal(request).tenant
            config = services.session_config()
            if session is not None:  # checked now, as the session that uses the secret will check it
                try:
                    config, _ = config.updated(session, services.offer(tenant), type_fixed=False)
                except ProtocolError as exc:
                    raise ApiError(400, exc.message, exc.code, param=exc.param) from None
            try:
                secret = secrets.mint(tenant, expires_s, session)
            except SessionTooLargeError as exc:
                raise ApiError(400, str(exc), "invalid_value", param="session") from None
        except ApiError as exc:
            return exc.response()
        return JSONResponse({"value": secret.value, "expires_at": secret.expires_at, "session": config.to_dict()})

    return [
        Route(CALLS_PATH, create_call, methods=["POST"]),
        Route(CALLS_PATH + "/{call_id}/hangup", hangup, methods=["POST"]),
        Route("/v1/realtime/client_secrets", client_secret, methods=["POST"]),
    ]


def _principal(request: Request) -> Principal:
    """The caller (the key middleware refuses requests without one before they get here)."""
    return principal_of(request.scope) or Principal(OPEN_TENANT)


def _client_secret_request(body: bytes) -> tuple[int, dict[str, Any] | None]:
    """`{expires_after: {anchor: "created_at", seconds}, session}` -> (lifetime in seconds, session)."""
    try:
        request = loads_strict(body) if body.strip() else {}
    except (ValueError, RecursionError):
        raise ApiError(400, "the body is not valid JSON", "invalid_json") from None
    if not isinstance(request, dict):
        raise ApiError(400, "the body must be a JSON object", "invalid_type")
    unknown = sorted(set(request) - {"expires_after", "session"})
    if unknown:
        raise ApiError(400, f"unknown parameter {unknown[0]}", "unknown_parameter", param=unknown[0])
    expires = request.get("expires_after") or {}
    if not isinstance(expires, dict):
        raise ApiError(400, "expires_after must be an object", "invalid_type", param="expires_after")
    if expires.get("anchor", "created_at") != "created_at":
        raise ApiError(400, "expires_after.anchor must be 'created_at'", "invalid_value", param="expires_after.anchor")
    seconds = expires.get("seconds", DEFAULT_SECONDS)
    if isinstance(seconds, bool) or not isinstance(seconds, int) or not MIN_SECONDS <= seconds <= MAX_SECONDS:
        raise ApiError(400, f"expires_after.seconds must be an integer from {MIN_SECONDS} to {MAX_SECONDS}",
                       "invalid_value", param="expires_after.seconds")
    session = request.get("session")
    if session is not None and not isinstance(session, dict):
        raise ApiError(400, "session must be an object (a session config)", "invalid_type", param="session")
    return seconds, session
