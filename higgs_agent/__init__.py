"""higgs-agent: a streaming real-time voice agent on Boson AI's Higgs Audio v2."""

__version__ = "0.1.0"

SAMPLE_RATE = 24_000  # the Higgs codec's output rate (Hz)
FRAME_RATE = 25  # codec frames per second
HOP_LENGTH = SAMPLE_RATE // FRAME_RATE  # 960 samples per frame
