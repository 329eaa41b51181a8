"""WebRTC's settings and the `serve` flags that set them (light: the command line is read without aiortc)."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass


class IceServerError(ValueError):
    """An ICE server URL aiortc cannot use."""


@dataclass(frozen=True)
class IceServer:
    url: str  # stun:HOST[:PORT] | turn:HOST[:PORT][?transport=udp|tcp] | turns:HOST[:PORT]?transport=tcp
    username: str | None = None
    credential: str | None = None

    def __post_init__(self) -> None:
        from aiortc.rtcicetransport import parse_stun_turn_uri  # here: the `serve` flags are read without aiortc

        try:
            parsed = parse_stun_turn_uri(self.url)
        except ValueError:
            raise IceServerError(f"{self.url!r} is not an ICE server URL: use stun:HOST[:PORT], "
                                 "turn:HOST[:PORT][?transport=udp|tcp] or turns:HOST[:PORT]?transport=tcp") from None
        if parsed["scheme"] == "stuns":
            raise IceServerError(f"{self.url!r}: aiortc does not support stuns: URLs; use stun: or turns:")
        if parsed["scheme"] in ("turn", "turns") and not (self.username and self.credential):
            raise IceServerError(f"{self.url!r}: a TURN server needs a username and a credential")
        if parsed["scheme"] == "turns" and parsed.get("transport") != "tcp":
            raise IceServerError(f"{self.url!r}: aiortc speaks turns: over TCP only (?transport=tcp)")


@dataclass(frozen=True)
class WebRTCSettings:
    """`ice_servers`: STUN/TURN for calls from beyond the LAN (none: host candidates only). `loopback`: offer
    127.0.0.1 too (clients on the same machine). `client_secret_key`: signs `ek_` client secrets (None: a
    random key per process). A call ends when the client's audio stops for `media_timeout_s`, or when it has
    not connected `connect_timeout_s` after the answer. `max_queued_audio_s`: reply audio a call holds ahead
    of playback; a reply that gets further ahead waits (holding its engine slot) until it has played."""

    ice_servers: tuple[IceServer, ...] = ()
    loopback: bool = True
    client_secret_key: bytes | None = None
    media_timeout_s: float = 20.0
    connect_timeout_s: float = 30.0
    max_queued_audio_s: float = 60.0


def add_webrtc_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("WebRTC (POST /v1/realtime/calls)")
    group.add_argument("--ice-server", action="append", default=[], metavar="URL",
                       help="a STUN or TURN server for calls from beyond the LAN, repeatable: stun:HOST[:PORT], "
                            "turn:HOST[:PORT][?transport=udp|tcp], turns:HOST[:PORT] (default: none; host "
                            "candidates reach clients on this machine and the LAN)")
    group.add_argument("--turn-username", default=os.environ.get("HIGGS_TURN_USERNAME"),
                       help="username for the TURN server (env HIGGS_TURN_USERNAME)")
    group.add_argument("--turn-credential", default=os.environ.get("HIGGS_TURN_CREDENTIAL"),
                       help="credential for the TURN server (env HIGGS_TURN_CREDENTIAL)")
    group.add_argument("--no-ice-loopback", dest="ice_loopback", action="store_false",
                       help="do not offer 127.0.0.1 as an ICE candidate (offered by default, for clients on this "
                            "machine)")
    group.add_argument("--client-secret-key", default=os.environ.get("HIGGS_CLIENT_SECRET_KEY"),
                       help="key that signs ek_ client secrets, the same on every server that must accept them "
                            "(env HIGGS_CLIENT_SECRET_KEY; default: random at each start)")
    group.add_argument("--webrtc-media-timeout", type=float, default=WebRTCSettings.media_timeout_s, metavar="S",
                       help="end a call when no audio has come from the client for this long (default: %(default)s)")


def webrtc_settings(args: argparse.Namespace) -> WebRTCSettings:
    """The settings from `serve`'s flags; ValueError (a message for the user) when they cannot be used."""
    servers = []
    for url in args.ice_server:
        is_turn = url.startswith("turn")
        try:
            servers.append(IceServer(url, args.turn_username if is_turn else None,
                                     args.turn_credential if is_turn else None))
        except IceServerError as exc:
            raise ValueError(f"--ice-server: {exc}") from None
    if args.webrtc_media_timeout <= 0:
        raise ValueError("--webrtc-media-timeout must be more than 0 seconds")
    key = args.client_secret_key
    if key is not None and len(key) < 16:
        raise ValueError("--client-secret-key must be at least 16 characters")
    return WebRTCSettings(ice_servers=tuple(servers), loopback=args.ice_loopback,
                          client_secret_key=key.encode() if key else None,
                          media_timeout_s=args.webrtc_media_timeout)
