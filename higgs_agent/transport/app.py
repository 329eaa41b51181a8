"""The server's ASGI app: `/v1/realtime` (WebSocket agent), `/v1/audio/speech` (streamed TTS), `/health`,
`/metrics` (Prometheus); all behind the API key when one is set."""

from __future__ import annotations

from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp
from starlette.websockets import WebSocket

from higgs_agent.agent.services import AgentServices
from higgs_agent.transport.auth import ApiKeyMiddleware
from higgs_agent.transport.http_app import speech_endpoint
from higgs_agent.transport.realtime_ws import realtime_endpoint

# The browser client (clients/web: plain files, no build step), served at `/`.
WEB_ROOT = Path(__file__).resolve().parents[2] / "clients" / "web"


def create_agent_app(services: AgentServices, api_key: str | None = None) -> ASGIApp:
    bundle = services.bundle

    async def health(_: Request) -> Response:
        return JSONResponse({"status": "ok", "model": bundle.model_source, "device": str(bundle.device),
                             "responders": sorted(services.responders), "asr": services.transcriber.name,
                             "sessions": int(services.metrics.sessions_active._value.get())})

    async def metrics(_: Request) -> Response:
        return Response(services.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    async def realtime(websocket: WebSocket) -> None:
        await realtime_endpoint(websocket, services)

    app = Starlette(routes=[
        Route("/health", health),
        Route("/metrics", metrics),
        Route("/v1/audio/speech", speech_endpoint(services.engine), methods=["POST"]),
        WebSocketRoute("/v1/realtime", realtime),
        *([Mount("/", StaticFiles(directory=WEB_ROOT, html=True), name="web")] if WEB_ROOT.is_dir() else []),
    ])
    return ApiKeyMiddleware(app, api_key) if api_key else app
