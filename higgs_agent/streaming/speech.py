"""Prompt in, 24 kHz PCM chunks out while the model is still generating: engine frames -> codec stream."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import numpy as np
import torch

from higgs_agent.streaming.codec_stream import StreamingCodecDecoder
from higgs_agent.streaming.engine import Generation, StreamingEngine


async def stream_pcm(
    engine: StreamingEngine, generation: Generation, decoder: StreamingCodecDecoder | None = None,
    on_frame: Callable[[torch.Tensor], None] | None = None,
) -> AsyncIterator[np.ndarray]:
    """Yield float32 PCM chunks in order; their concatenation is the whole-sequence decode of the frames
    (to >= 40 dB, see codec_stream). Closing the iterator cancels the generation at the next step.
    With the engine's `batch_codec` (default on a GPU) the codec work goes through its shared
    `CodecBatcher`, so streams whose windows are ready together share one decode call. `on_frame` sees
    every frame (K codes) as it arrives."""
    decoder = decoder or StreamingCodecDecoder(engine.bundle.codec, batcher=engine.codec_batcher)
    stats = generation.stats
    async for frame in engine.frames(generation):
        if on_frame is not None:
            on_frame(frame)
        for chunk in await decoder.push_async(frame[None]):
            stats.mark_first_pcm()
            yield chunk
    tail = await decoder.flush_async()
    if len(tail):
        stats.mark_first_pcm()
        yield tail
