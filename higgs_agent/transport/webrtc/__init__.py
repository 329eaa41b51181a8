"""OpenAI's Realtime API over WebRTC, served with aiortc: a page or app written for OpenAI's WebRTC flow works
against this server by changing its base URL.

- `routes`: `POST /v1/realtime/calls` (SDP offer -> answer), `.../{call_id}/hangup`,
  `POST /v1/realtime/client_secrets`; `offer`: the request's two body forms and the API's error shape.
- `calls`: one call (peer connection + `Session`), and the calls now live.
- `tracks`: the reply's outgoing track, paced at real time, counting what was really sent; caller frames.
- `output`: the call's `SessionOutput` (events on the `oai-events` data channel, audio on the track, and the
  WebRTC-only `output_audio_buffer.*` server events).
- `sideband`: `WS /v1/realtime?call_id=ID`, a server-side application attached to a live call.
- `client_secrets`: signed short-lived `ek_` keys for browsers.
- `ice`: ICE servers and loopback candidates; `settings`: the settings and the `serve` flags.

Only the settings are imported here, so the command line can read its flags without loading aiortc or the
agent; the app imports the modules it needs.
"""

from higgs_agent.transport.webrtc.settings import (
    IceServer,
    IceServerError,
    WebRTCSettings,
    add_webrtc_args,
    webrtc_settings,
)

__all__ = ["IceServer", "IceServerError", "WebRTCSettings", "add_webrtc_args", "webrtc_settings"]
