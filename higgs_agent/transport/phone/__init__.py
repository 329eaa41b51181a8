"""Phone calls through a carrier's media stream (Twilio Media Streams today).

- `serializer`: carrier-neutral message types and the `MediaStreamSerializer` interface (one per carrier).
- `twilio`: Twilio's serializer (JSON, G.711 mu-law at 8 kHz).
- `twiml`: the voice webhook's TwiML answer, Twilio signature checks, the calls we answered, the media
  socket's admission check.
- `call`: how the agent behaves on a call (`CallSettings`) and each call's record (`CallLog`).
- `output`: `PhoneOutput`, the `SessionOutput` of a call: a paced reply-audio sink (whole 20 ms frames at
  real time a little ahead, marks, clear on barge-in; transport/audio_sink.py).
- `busy`: the apology a call hears at capacity, spoken ahead of need.
- `media`: `PhoneCall`, one call's media WebSocket between the carrier and a `Session`.
- `routes`: `PhoneLine` and `twilio_routes(services, settings, calls)`: the webhook and media routes.
- `cli`: `add_phone_args(parser)`, `phone_settings(args)`.
(Twilio's side of a call, for tests and benchmarks, is `higgs_agent.testing.phone_simulator`.)

Nothing is imported here: `serve --help` reads `cli` alone, and the modules from `output` on load the agent
(and torch). Import each name from its module.
"""
