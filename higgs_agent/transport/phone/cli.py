"""The phone lines' command-line flags (`serve`): off unless `--twilio-public-url` or `--telnyx-public-url`."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from higgs_agent.defaults import DEFAULT_TENANT, PHONE_BUSY_MESSAGE, PHONE_LEAD_MS

if TYPE_CHECKING:  # `serve --help` reads this module: nothing heavier than argparse at import
    from higgs_agent.transport.phone.call import CallSettings
    from higgs_agent.transport.phone.twiml import LineSettings


@dataclass(frozen=True)
class PhoneSettings:
    lines: list[LineSettings]  # one per carrier
    calls: CallSettings


def add_phone_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "phone calls (Twilio Media Streams, Telnyx media streaming)",
        "Set the number's voice webhook to POST https://HOST/twilio/voice; calls then stream to wss://HOST/"
        "twilio/media/... and talk to the agent.")
    group.add_argument("--twilio-public-url", default=None, metavar="URL",
                       help="the https base URL Twilio reaches this server at, e.g. https://agent.example.com "
                            "(behind a proxy, its public address); turns the phone line on")
    group.add_argument("--twilio-auth-token", default=os.environ.get("TWILIO_AUTH_TOKEN") or None, metavar="TOKEN",
                       help="the Twilio account's auth token, which checks every request's signature "
                            "(default: $TWILIO_AUTH_TOKEN)")
    group.add_argument("--twilio-allow-unsigned", action="store_true",
                       help="accept requests without a valid signature: local trials only, never a public number")
    group.add_argument("--twilio-parameter", action="append", default=[], metavar="NAME=VALUE",
                       help="a <Parameter> every call's stream carries (repeatable); the caller's From and To "
                            "are passed through too")
    group.add_argument("--telnyx-public-url", default=None, metavar="URL",
                       help="the https base URL Telnyx reaches this server at; turns a Telnyx line on (point the "
                            "TeXML application's webhook at POST https://HOST/telnyx/voice)")
    group.add_argument("--telnyx-public-key", default=os.environ.get("TELNYX_PUBLIC_KEY") or None, metavar="KEY",
                       help="the Telnyx account's public key (base64 Ed25519), which checks every webhook's "
                            "signature (default: $TELNYX_PUBLIC_KEY)")
    group.add_argument("--telnyx-allow-unsigned", action="store_true",
                       help="accept Telnyx webhooks without a valid signature: local trials only")
    group.add_argument("--phone-greeting", default=None, metavar="TEXT",
                       help="said as soon as a call connects (default: none, the agent waits for the caller)")
    group.add_argument("--phone-busy-message", default=PHONE_BUSY_MESSAGE, metavar="TEXT",
                       help="said before hanging up on a call that comes when every engine slot is busy "
                            "('' hangs up without a word; default: %(default)r)")
    group.add_argument("--phone-lead-ms", type=int, default=PHONE_LEAD_MS, metavar="MS",
                       help="reply audio sent ahead of playback, the most a barge-in leaves for Twilio to drop "
                            "(default: %(default)s)")
    group.add_argument("--phone-tenant", default=DEFAULT_TENANT, metavar="NAME",
                       help="the tenant (of --api-keys) the calls belong to: the voices they may use, and whose "
                            "key reads their record at /v1/sessions (default: %(default)s)")


def phone_settings(args: argparse.Namespace) -> PhoneSettings | None:
    """The phone lines the flags ask for, or None without a carrier's public URL. Raises ValueError with a
    message for the user (a missing auth token or key, a malformed parameter)."""
    if not args.twilio_public_url and not getattr(args, "telnyx_public_url", None):
        return None
    from higgs_agent.transport.phone.call import CallSettings

    try:
        lines = [line for line in (_twilio(args), _telnyx(args)) if line is not None]
        calls = CallSettings(greeting=args.phone_greeting or None, busy_message=args.phone_busy_message or None,
                             lead_ms=args.phone_lead_ms, tenant=getattr(args, "phone_tenant", DEFAULT_TENANT))
    except ValueError as exc:
        raise ValueError(f"phone line: {exc}") from None
    return PhoneSettings(lines, calls)


def _telnyx(args: argparse.Namespace) -> LineSettings | None:
    if not getattr(args, "telnyx_public_url", None):
        return None
    from higgs_agent.transport.phone.telnyx import TelnyxSettings

    if not args.telnyx_public_key and not args.telnyx_allow_unsigned:
        raise ValueError("--telnyx-public-url needs the account's public key to check Telnyx's signatures: "
                         "--telnyx-public-key KEY or $TELNYX_PUBLIC_KEY (--telnyx-allow-unsigned skips the "
                         "checks, for local trials only)")
    return TelnyxSettings(public_url=args.telnyx_public_url, public_key=args.telnyx_public_key,
                          allow_unsigned=args.telnyx_allow_unsigned)


def _twilio(args: argparse.Namespace) -> LineSettings | None:
    if not args.twilio_public_url:
        return None
    from higgs_agent.transport.phone.twiml import TwilioSettings

    parameters: dict[str, str] = {}
    for entry in args.twilio_parameter:
        name, sep, value = entry.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"--twilio-parameter takes NAME=VALUE, got {entry!r}")
        parameters[name.strip()] = value
    if not args.twilio_auth_token and not args.twilio_allow_unsigned:
        raise ValueError("--twilio-public-url needs the account's auth token to check Twilio's signatures: "
                         "--twilio-auth-token TOKEN or $TWILIO_AUTH_TOKEN (--twilio-allow-unsigned skips the "
                         "checks, for local trials only)")
    return TwilioSettings(public_url=args.twilio_public_url, auth_token=args.twilio_auth_token,
                          allow_unsigned=args.twilio_allow_unsigned, parameters=parameters)
