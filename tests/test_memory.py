"""A session that ends is freed by reference counting, not left to the cycle collector: a full collection is
rare in a process this big, and every session holds audio (up to two minutes of input tape, the caller's
gathered speech). The soak found sessions kept in cycles growing the server by ~15 MB a minute (#20)."""

from __future__ import annotations

import asyncio
import gc

import httpx
import pytest
from agent_server import Client, echo_services, running_server
from speech import pad, synthesize

from higgs_agent.agent.session import Session


@pytest.fixture(scope="module")
def server(bundle, transcriber):
    with running_server(echo_services(bundle, transcriber, max_frames=30)) as base:
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
        await sessions_ended(server)
        assert sessions_in_cyclic_garbage() == 0, "a closed session is kept alive by a reference cycle"
    finally:
        gc.enable()


async def sessions_ended(base: str, timeout_s: float = 60) -> None:
    """Until the server has ended every session (its `/health` says so)."""
    async with httpx.AsyncClient() as http, asyncio.timeout(timeout_s):
        while (await http.get(f"{base}/health")).json()["sessions"]:
            await asyncio.sleep(0.02)
