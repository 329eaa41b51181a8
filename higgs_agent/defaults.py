"""Names the command line shows in its help, kept free of heavy imports so `higgs-agent --help` is instant."""

DEFAULT_MODEL = "bosonai/higgs-audio-v2-generation-3B-base"
DEFAULT_CODEC = "bosonai/higgs-audio-v2-tokenizer"
DEFAULT_ASR_MODEL = "tiny.en"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
DEFAULT_SLOTS = 8
DEFAULT_REALTIME_URL = f"ws://{DEFAULT_HOST}:{DEFAULT_PORT}/v1/realtime"
DEFAULT_TENANT = "default"  # the one tenant of a server with one API key, or none
PHONE_BUSY_MESSAGE = "Sorry, all our lines are busy right now. Please call again in a few minutes."
PHONE_LEAD_MS = 160  # reply audio sent ahead of playback on a call: the most a barge-in leaves to drop
