"""How a call's peer connection finds its way to the client: ICE servers and host candidates.

aiortc, left to itself, asks Google's public STUN server for every call (a lookup that hangs on a closed
network) and aioice leaves 127.0.0.1 out of its host candidates, so on a machine whose only interface is
`lo` the answer offers no candidate at all. So here:
- ICE servers are only the ones configured (`--ice-server`, repeatable): none by default, which is right for
  loopback and a LAN (host candidates reach each other); STUN for a server behind NAT, TURN (username and
  credential) where UDP between the two cannot flow. aiortc uses the first STUN and the first TURN given.
- `include_loopback(True)` adds 127.0.0.1 to the host candidates, so a browser or client on the same
  machine connects over loopback. aioice has no setting for this; it reads the host addresses through its
  module function `get_host_addresses`, which is wrapped here once per process. It is harmless beyond
  loopback: a remote peer's checks against 127.0.0.1 simply fail.
"""

from __future__ import annotations

from collections.abc import Sequence

import aioice.ice
from aiortc import RTCConfiguration, RTCIceServer

from higgs_agent.transport.webrtc.settings import IceServer

LOOPBACK = "127.0.0.1"
_original_host_addresses = aioice.ice.get_host_addresses
_loopback = False


def rtc_configuration(servers: Sequence[IceServer]) -> RTCConfiguration:
    """An explicit list, even when empty: aiortc falls back to a public STUN server only when given None."""
    return RTCConfiguration(iceServers=[RTCIceServer(urls=server.url, username=server.username,
                                                     credential=server.credential) for server in servers])


def include_loopback(enabled: bool) -> None:
    """Offer 127.0.0.1 among the host candidates of every ICE connection made in this process from now on."""
    global _loopback
    _loopback = enabled
    aioice.ice.get_host_addresses = _host_addresses


def _host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    addresses = _original_host_addresses(use_ipv4=use_ipv4, use_ipv6=use_ipv6)
    if _loopback and use_ipv4 and LOOPBACK not in addresses:
        addresses.append(LOOPBACK)
    return addresses
