"""The OpenAI Realtime protocol at the edge, for every wire that carries it (the WebSocket, WebRTC's
`oai-events` data channel): a client's text message becomes a typed client event (`protocol/client_events`:
JSON, base64 audio, sizes, types and fields all checked) before the session sees it, and anything wrong with
it becomes an `error` event naming the field. Events out are encoded by each transport's output with
`server_events.to_wire`. The session itself takes only typed events."""

from __future__ import annotations

from higgs_agent.agent.session import Session
from higgs_agent.protocol import client_events as ce
from higgs_agent.protocol.errors import ProtocolError


async def deliver(session: Session, raw: str | bytes) -> None:
    """One client message off the wire, to the session; OutputClosed (the client cannot be reached any more)
    is for the transport to act on."""
    try:
        event = ce.parse_client_event(raw, session.services.max_event_bytes)
    except ProtocolError as exc:
        await session.report(exc)
        return
    await session.handle(event)
