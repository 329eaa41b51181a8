"""A phone line on the agent server: a carrier's voice webhook and media WebSocket, and the calls on them.

    routes = phone_routes(services, TwilioSettings(public_url="https://agent.example.com", auth_token=TOKEN),
                          CallSettings(greeting="Hello, how can I help?"))
    app = Starlette(routes=[*routes, Mount("/", app=create_agent_app(services))])

The phone routes go before the agent app, outside its API-key check: a carrier cannot send our key, and proves
itself by signing every request instead (Twilio with the account's auth token, Telnyx with Ed25519). The
carrier is the settings' class (`TwilioSettings`, `TelnyxSettings`): its paths, signatures and serializer.
"""

from __future__ import annotations

import logging
from collections import deque

from starlette.routing import BaseRoute, WebSocketRoute
from starlette.websockets import WebSocket

from higgs_agent.agent.services import AgentServices
from higgs_agent.transport.phone.busy import BusyMessage
from higgs_agent.transport.phone.call import CallLog, CallSettings
from higgs_agent.transport.phone.media import CLOSE_POLICY, PhoneCall
from higgs_agent.transport.phone.twiml import (
    AnsweredCalls,
    LineSettings,
    MediaSocketGate,
    MediaSocketRefusedError,
    voice_webhook_route,
)

log = logging.getLogger(__name__)
KEPT_CALL_LOGS = 100


class PhoneLine:
    """Everything the calls of one number share on this server."""

    def __init__(self, services: AgentServices, line: LineSettings, settings: CallSettings | None = None,
                 token_key: bytes | None = None) -> None:
        """`token_key`: signs media-stream tokens; the same on every agent behind one number's balancer."""
        self.services = services
        self.line = line
        self.settings = settings or CallSettings()
        self.answered = AnsweredCalls(key=token_key)
        self.gate = MediaSocketGate(line, self.answered)
        self.busy_message = BusyMessage(self.settings.busy_message)
        self.active: dict[str, PhoneCall] = {}  # calls in progress, by callSid
        self.finished: deque[CallLog] = deque(maxlen=KEPT_CALL_LOGS)  # the latest calls' records

    def routes(self) -> list[BaseRoute]:
        return [voice_webhook_route(self.line, self.answered, before_answer=self._before_answer),
                WebSocketRoute(self.line.media_route_path, self._media_socket)]

    def call_ended(self, call: PhoneCall) -> None:
        if call.call_log is None:
            return
        if self.active.get(call.call_log.call_sid) is call:
            del self.active[call.call_log.call_sid]
        self.finished.append(call.call_log)

    async def _before_answer(self) -> None:
        # While a slot is free, before this call's session exists: the busy message must not need one later.
        await self.busy_message.prepare(self.services, self.settings.busy_message_wait_s)

    async def _media_socket(self, websocket: WebSocket) -> None:
        try:
            answered = self.gate.admit_websocket(websocket)
        except MediaSocketRefusedError as exc:
            log.warning("media socket refused: %s", exc)
            await websocket.close(CLOSE_POLICY)  # before accept: the peer sees HTTP 403
            return
        await websocket.accept()
        await PhoneCall(websocket, self, answered).run()


def phone_routes(services: AgentServices, settings: LineSettings, calls: CallSettings | None = None,
                 token_key: bytes | None = None) -> list[BaseRoute]:
    """`POST settings.voice_path` (the number's voice webhook) and the media WebSocket it connects calls to."""
    return PhoneLine(services, settings, calls, token_key).routes()


twilio_routes = phone_routes  # the name it had when Twilio was the only carrier
