"""The server's ASGI app, one port for everything: `/v1/realtime` (the WebSocket agent, or with `?call_id=`
a sideband on a WebRTC call), `/v1/realtime/calls` and `/v1/realtime/client_secrets` (WebRTC, webrtc/),
`/v1/audio/speech` (streamed speech), `/v1/voices` (the voice library, when the server has one), `/v1/sessions`
(the sessions on record, when the server keeps them: records/http.py), `/health`,
`/metrics` (Prometheus), and the web page at `/`. The API needs
the key when one is set (`auth.py`); browsers on other origins need `cors_origins`."""

from __future__ import annotations

from pathlib import Path

from starlette.applications import Starlette
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp
from starlette.websockets import WebSocket

from higgs_agent.agent.services import AgentServices
from higgs_agent.defaults import DEFAULT_TENANT
from higgs_agent.records.http import record_routes
from higgs_agent.transport.auth import ApiKeyMiddleware, Authenticator, principal_of
from higgs_agent.transport.phone.cli import PhoneSettings
from higgs_agent.transport.phone.routes import phone_routes
from higgs_agent.transport.realtime_ws import realtime_endpoint
from higgs_agent.transport.speech_http import speech_endpoint
from higgs_agent.transport.tenants import tenant_of
from higgs_agent.transport.webrtc.calls import CallRegistry
from higgs_agent.transport.webrtc.client_secrets import ClientSecrets
from higgs_agent.transport.webrtc.ice import include_loopback
from higgs_agent.transport.webrtc.routes import webrtc_routes
from higgs_agent.transport.webrtc.settings import WebRTCSettings
from higgs_agent.transport.webrtc.sideband import CALL_ID_PARAM, sideband_endpoint
from higgs_agent.voices.http import voice_routes

# The browser client (clients/web: plain files, no build step), served at `/`.
WEB_ROOT = Path(__file__).resolve().parents[2] / "clients" / "web"


def create_agent_app(services: AgentServices, api_key: str | None = None, cors_origins: list[str] | None = None,
                     authenticator: Authenticator | None = None, webrtc: WebRTCSettings | None = None,
                     phone: PhoneSettings | None = None) -> ASGIApp:
    """`authenticator` (keys -> tenants) overrides `api_key`; `webrtc`: ICE and client-secret settings;
    `phone`: a Twilio number's webhook and media stream (their own routes, checked by Twilio's signatures)."""
    webrtc = webrtc or WebRTCSettings()
    include_loopback(webrtc.loopback)
    calls = CallRegistry()
    client_secrets = ClientSecrets(webrtc.client_secret_key)

    async def health(request: Request) -> Response:
        """Liveness for anyone (load balancers, Docker's health check); details for a caller with the key."""
        if principal_of(request.scope) is None:
            return JSONResponse({"status": "ok"})
        # the engine's model and capacity (busy_slots: each response's lease and each stream outside one; with
        # remote engines, each one's state under "engines")
        return JSONResponse({"status": "ok", **services.engine.health(),
                             "responders": sorted(services.responders), "asr": services.transcriber.name,
                             "sessions": int(services.metrics.sessions_active._value.get()),
                             "webrtc_calls": len(calls)})

    async def metrics(_: Request) -> Response:
        return Response(services.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    async def realtime(websocket: WebSocket) -> None:
        if CALL_ID_PARAM in websocket.query_params:
            await sideband_endpoint(websocket, calls)
        else:
            await realtime_endpoint(websocket, services)

    app: ASGIApp = Starlette(routes=[
        Route("/health", health),
        Route("/metrics", metrics),
        Route("/v1/audio/speech", speech_endpoint(services), methods=["POST"]),
        WebSocketRoute("/v1/realtime", realtime),
        *webrtc_routes(services, calls, client_secrets, webrtc),
        *(voice_routes(services.voices, transcribe=lambda audio: services.transcriber.transcribe_on_thread(audio).text,
                       tenant_of=tenant_of) if services.voices is not None else []),
        *(record_routes(services.records.store, lambda request: tenant_of(request) or DEFAULT_TENANT)
          if services.records is not None else []),
        *([Mount("/", StaticFiles(directory=WEB_ROOT, html=True), name="web")] if WEB_ROOT.is_dir() else []),
    ])
    app = ApiKeyMiddleware(app, authenticator or Authenticator.single(api_key), ephemeral=client_secrets)
    if phone is not None:  # carriers prove themselves by signatures, not by our keys: their routes sit outside
        lines = [route for line in phone.lines for route in phone_routes(services, line, phone.calls)]
        app = Starlette(routes=[*lines, Mount("/", app=app)])
    if cors_origins:  # outermost: a browser's preflight carries no key
        app = CORSMiddleware(app, allow_origins=cors_origins, allow_methods=["*"], allow_headers=["*"],
                             expose_headers=["Location"], max_age=600)
    return app
