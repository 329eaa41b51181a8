"""A session that ends is freed by reference counting, not left to the cycle collector: a full collection is
rare in a process this big, and every session holds audio (up to two minutes of input tape, the caller's
gathered speech). The soak found sessions kept in cycles growing the server by ~15 MB a minute (#20)."""

from __future__ import annotations

import gc

import pytest
from agent_server import Client, running_server
from speech import pad, synthesize

from higgs_agent.agent.responders.echo import EchoResponder
from higgs_agent.agent.services import AgentServices
from higgs_agent.agent.session import Session
from higgs_agent.model.sampling import SamplingSettings
from higgs_agent.streaming.engine import StreamingEngine


@pytest.fixture(scope="module")
def server(bundle, transcriber):
    services = AgentServices(engine=StreamingEngine(bundle), transcriber=transcriber,
                             responders={"echo": EchoResponder()}, default_responder="echo",
                             sampling=SamplingSettings(greedy=True, max_frames=30))
    with running_server(services) as base:
        yield base


def sessions_in_cyclic_garbage() -> int:
    """Sessions that only the cycle collector would free (found with DEBUG_SAVEALL, then let go)."""
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
        return sum(isinstance(obj, Session) for obj in gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()


@pytest.mark.parametrize("ending", ["close", "vanish"])
async def test_a_websocket_session_is_freed_when_its_client_goes(server, ending):
    speech, _ = synthesize("hello there, how are you today", sample_rate=24000)
    gc.collect()
    gc.disable()  # from here only reference counting frees anything
    try:
        client = await Client.connect(server)
        await client.send_audio(pad(speech, 24000, lead_ms=300, tail_ms=1200))
        await client.until("response.done")
        if ending == "close":
            await client.close()
        else:  # no close frame: the TCP connection is just dropped
            client.socket.transport.abort()
            await client.socket.wait_closed()
        while (await client_count(server)) > 0:  # the server has ended the session
            pass
        assert sessions_in_cyclic_garbage() == 0, "a closed session is kept alive by a reference cycle"
    finally:
        gc.enable()


async def client_count(base: str) -> int:
    import asyncio

    import httpx

    async with httpx.AsyncClient() as http:
        health = (await http.get(f"{base}/health")).json()
    await asyncio.sleep(0.02)
    return int(health["sessions"])
