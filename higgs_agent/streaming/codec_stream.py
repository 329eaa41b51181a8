"""Incremental Higgs codec decoding: codec frames in, final 24 kHz PCM chunks out, while frames keep coming.

The codec decoder (RVQ sum -> fc2 -> DAC decoder) is non-causal: every output sample depends on a window of
frames on both sides of its own frame. A stream therefore decodes overlapping windows of frames
`[emit_start - left_context, emit_end + lookahead)` and keeps only the samples of frames
`[emit_start, emit_end)`. With `left_context_frames` and `lookahead_frames` >= the one-sided receptive field
the kept samples equal the whole-sequence decode (up to float rounding); smaller contexts trade a small,
measured error for less latency and compute.

Receptive field (computed by `receptive_field_sides`, checked by perturbing one frame's codes in float64,
`bench.codec_quality.measure_receptive_field_sides`):
10 frames on each side (left context 10, look-ahead 10; a sample depends on 21 frames in all). It is a
property of the strides/kernels/dilations, so the tiny, mini and released codecs share it. The influence of
far frames decays fast: perturbing one frame changes output frames 6..10 away by < 1e-5 of peak in the
tiny codec and < 2.2e-4 in the mini one (frames 1..4 away: up to 3e-3).

Defaults, chosen by measurement with `bench.codec_quality.measure_stream_quality` on 250 random frames (10 s), frames pushed
one at a time, torch 2.11 on 2 shared CPU cores with ONE intra-op thread (with 2 threads other processes on
the machine made timings swing 5x), overhead = median of 5-7 back-to-back (stream, whole) pairs.
SNR in dB / max seam jump (x peak) / overhead; first chunk 2 frames then fixed chunks (no ramp),
left context = look-ahead = ctx:

    mini (decoder width 256; whole decode 0.43 s)
    ctx | chunk 5            | chunk 10           | chunk 25           | chunk 50
      0 |  34 0.49    2.11   |  37 0.49    1.36   |  41 0.49    0.98   |  44 0.49    0.92   <- clicks
      1 |  60 4.8e-3  2.26   |  63 4.3e-3  1.52   |  67 3.9e-3  0.96   |  71 3.9e-3  0.95
      2 |  64 4.3e-3  2.64   |  67 4.3e-3  1.77   |  72 2.4e-3  1.13   |  75 2.4e-3  0.95
      3 |  71 2.2e-3  2.71   |  74 2.2e-3  1.60   |  78 1.8e-3  1.08   |  82 1.8e-3  0.96
      4 |  84 3.5e-4  3.10   |  87 3.3e-4  1.93   |  91 2.9e-4  1.25   |  94 2.2e-4  0.96
      6 |  96 1.7e-4  4.03   |  99 1.7e-4  2.13   | 103 1.7e-4  1.43   | 106 1.7e-4  1.15
      8 | 135 4.5e-6  4.12   | 137 4.4e-6  2.45   | 142 4.5e-6  1.47   | 145 4.5e-6  1.16
     10 | 157 1.7e-7  4.63   | 163 1.5e-7  2.67   | 163 1.5e-7  1.71   | 163 1.5e-7  1.21   <- exact
    tiny (decoder width 64; whole decode 0.1 s)
      0 |  35 0.25    4.09   |  38 0.25    2.77   |  42 0.25    1.69   |  45 0.25    1.42   <- clicks
      2 |  78 7.1e-4  4.64   |  81 6.6e-4  3.28   |  85 5.6e-4  1.97   |  88 5.4e-4  1.25
      4 | 109 2.3e-5  5.23   | 112 1.7e-5  2.98   | 116 2.3e-5  2.01   | 120 1.5e-5  1.54
     10 | 146 2.4e-7  7.72   | 146 2.4e-7  4.41   | 146 1.4e-7  2.47   | 146 1.4e-7  1.64   <- exact

Readings: (1) SNR alone does not catch seams: context-free chunks reach 41-45 dB at 25-50 frames and
still click (a jump of 25-49 % of peak at every seam); the seam metric does. (2) The error falls in steps:
the first conv alone reaches +-3 frames, and context 4 (one frame past it) brings the seam jump to
<= 3.5e-4 of peak (-69 dB) with >= 84 dB SNR; 10 frames is exact. (3) Overhead is about
(left + chunk + lookahead) / chunk plus a fixed cost per decode call: ~10 ms on mini and ~7 ms on tiny,
whose whole decode is so cheap (0.4 ms/frame) that per-call Python dispatch dominates: tiny gets near
1.5x only with ~50-frame chunks, mini (compute-bound, like the released codec) meets it from ~25.
Reproduce a cell: `higgs_agent.bench.codec_quality.measure_stream_quality(codec, codes, threads=1,
first_chunk_frames=2, max_chunk_growth=math.inf, chunk_frames=CHUNK, left_context_frames=CTX,
lookahead_frames=CTX)`.

Chosen: first_chunk_frames=2, chunk_frames=40, left_context_frames=4, lookahead_frames=4,
max_chunk_growth=1.5 (chunks 2, 3, 5, 8, 12, 18, 27, 40, 40, ...). First audio after 6 frames. Measured at
these defaults (1 thread, 10 s): mini SNR 90.6 dB, seam 2.7e-4, overhead 1.27x (growth 2: 91.3 dB, 2.6e-4,
1.21x; tiny at growth 2: 116.7 dB, 1.5e-5, 1.96x, per-call dispatch, see above). Why 1.5, not 2: the ramp
plays without a gap only while the generator runs at >= growth x real time. The mini model streams at ~1.7x
real time on this 2-vCPU machine; through the engine, one stream's playback from its first chunk had
4 underruns, 161 ms in all, per utterance at growth 2, 2 of 20 ms at 1.5 (median of 5; first chunk 3 at 1.5:
none, for one more step of latency). A GPU runs the real model far above 2x either way. Other (left, lookahead, chunk) points with the ramp, mini:
(6,4,40) 93.8 dB 2.4e-4 1.25x; (6,6,40) 103 dB 8.5e-5 1.40x; (10,10,75) exact 1.31x but first audio
after 12 frames. Look-ahead adds latency (to the first chunk), left context only compute.

Caveat: these codecs have random weights. Trained weights may spread influence further within the
10-frame receptive field, so re-run `measure_stream_quality` on the released codec; if its seam jump or
SNR misses, raise the contexts (10/10 is exact for any weights).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from higgs_agent import HOP_LENGTH

NUM_CODEBOOKS = 8

# Defaults (see the module docstring for the measurements behind them).
DEFAULT_FIRST_CHUNK_FRAMES = 2
DEFAULT_CHUNK_FRAMES = 40
DEFAULT_LEFT_CONTEXT_FRAMES = 4
DEFAULT_LOOKAHEAD_FRAMES = 4
DEFAULT_MAX_CHUNK_GROWTH = 1.5



# ---------------------------------------------------------------------------------------------------------
# Receptive field
# ---------------------------------------------------------------------------------------------------------


def _temporal_layers(decoder: nn.Module) -> list[nn.Module]:
    """The decoder's convolutions in execution order (DacDecoder registers modules in the order it runs
    them; the residual skips add an identity path, which the conv path's interval always covers)."""
    return [m for m in decoder.modules() if isinstance(m, (nn.Conv1d, nn.ConvTranspose1d))]


def _input_interval(layers: Sequence[nn.Module], lo: int, hi: int) -> tuple[int, int]:
    """Indices of the decoder input (frames) that can influence decoder outputs `lo..hi` (inclusive)."""
    for layer in reversed(layers):
        (k,), (s,), (p,), (d,) = layer.kernel_size, layer.stride, layer.padding, layer.dilation
        if isinstance(layer, nn.ConvTranspose1d):
            # input i writes outputs i*s - p + j*d, j in [0, k)
            lo, hi = math.ceil((lo + p - d * (k - 1)) / s), (hi + p) // s
        else:
            lo, hi = lo * s - p, hi * s - p + d * (k - 1)
    return lo, hi


def receptive_field_sides(codec: nn.Module) -> tuple[int, int]:
    """(left_context, lookahead): how many frames before / after a sample's own frame can influence it,
    maximised over the 960 sample positions of a frame. Computed from the decoder's conv / conv-transpose
    kernel sizes, strides, paddings and dilations (the quantizer and fc2 act per frame)."""
    layers = _temporal_layers(codec.acoustic_decoder)
    hop = _hop_length(layers)
    frame = 1_000  # any frame far from the sequence edges
    left = right = 0
    for n in range(frame * hop, (frame + 1) * hop):
        lo, hi = _input_interval(layers, n, n)
        left, right = max(left, frame - lo), max(right, hi - frame)
    return left, right


def receptive_field_frames(codec: nn.Module) -> int:
    """ONE-SIDED receptive field in frames: the most frames on either side of a sample's own frame that
    can change it (10 for the Higgs codec). A sample depends on `2 * this + 1` frames in all."""
    return max(receptive_field_sides(codec))


def _hop_length(layers: Sequence[nn.Module]) -> int:
    return math.prod(layer.stride[0] for layer in layers if isinstance(layer, nn.ConvTranspose1d))


# ---------------------------------------------------------------------------------------------------------
# Windows: pure planning + batched decoding
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StreamParams:
    """Chunking of one stream, in frames (25 frames/s)."""

    first_chunk_frames: int = DEFAULT_FIRST_CHUNK_FRAMES  # small: low time to first audio
    chunk_frames: int = DEFAULT_CHUNK_FRAMES  # large: fewer, cheaper-per-sample decodes
    left_context_frames: int = DEFAULT_LEFT_CONTEXT_FRAMES  # frames decoded before the emitted ones
    lookahead_frames: int = DEFAULT_LOOKAHEAD_FRAMES  # frames awaited / decoded after the emitted ones
    # Chunk k+1 holds at most `max_chunk_growth` x chunk k's frames (capped at chunk_frames): while chunk k
    # plays, a generator running at >= growth x real time has produced chunk k+1, so a tiny first chunk
    # is not followed by a long gap. math.inf jumps straight from the first chunk to chunk_frames.
    max_chunk_growth: float = DEFAULT_MAX_CHUNK_GROWTH

    def __post_init__(self) -> None:
        if self.first_chunk_frames < 1 or self.chunk_frames < 1:
            raise ValueError("first_chunk_frames and chunk_frames must be >= 1")
        if self.left_context_frames < 0 or self.lookahead_frames < 0:
            raise ValueError("left_context_frames and lookahead_frames must be >= 0")
        if not self.max_chunk_growth > 1:
            raise ValueError("max_chunk_growth must be > 1 (math.inf: no ramp)")

    def chunk_size(self, index: int) -> int:
        """Frames in the `index`-th chunk (0 = the first chunk)."""
        size = self.first_chunk_frames
        for _ in range(index):
            if size >= self.chunk_frames:
                return self.chunk_frames
            grown = size * self.max_chunk_growth
            size = self.chunk_frames if grown >= self.chunk_frames else math.ceil(grown)
        return size


@dataclass(frozen=True)
class CodecWindow:
    """One decode job: decode `codes` (frames, 8), keep samples `[trim_start, trim_start + num_samples)`."""

    codes: torch.Tensor
    trim_start: int
    num_samples: int

    @property
    def num_frames(self) -> int:
        return int(self.codes.shape[0])


def decode_windows(codec: nn.Module, windows: Sequence[CodecWindow], batch: bool = True) -> list[np.ndarray]:
    """Decode windows and return each window's kept samples as float32 in the input order: one
    `codec.decode` call per group of equal-length windows (`batch`, for GPUs), or one per window (CPUs,
    where batching measured slower). Pure: no stream state is touched, so windows from several streams can
    share a call."""
    out: list[np.ndarray | None] = [None] * len(windows)
    by_length: dict[tuple[int, int], list[int]] = {}
    for i, window in enumerate(windows):
        by_length.setdefault((window.num_frames, 0 if batch else i), []).append(i)
    device = next(codec.parameters()).device
    for indices in by_length.values():
        batch = torch.stack([windows[i].codes for i in indices]).transpose(1, 2).to(device)  # (B, 8, n)
        with torch.inference_mode():
            audio = codec.decode(batch).audio_values[:, 0]  # (B, n * hop)
        audio = audio.float().cpu().numpy()
        for row, i in enumerate(indices):
            w = windows[i]
            out[i] = np.ascontiguousarray(audio[row, w.trim_start:w.trim_start + w.num_samples])
    return out  # type: ignore[return-value]


@dataclass
class StreamState:
    """What one stream has seen and emitted. `codes` holds frames from absolute index `codes_start` on:
    only what later windows still need (left context onwards) is kept."""

    frames_received: int = 0
    samples_emitted: int = 0
    chunks_emitted: int = 0  # sets the next chunk's size (the ramp)
    codes: torch.Tensor = field(default_factory=lambda: torch.empty(0, NUM_CODEBOOKS, dtype=torch.long))
    codes_start: int = 0
    finished: bool = False

    @property
    def frames_emitted(self) -> int:
        return self.samples_emitted // HOP_LENGTH


def _window(state: StreamState, start: int, stop: int, emit_start: int, emit_stop: int) -> CodecWindow:
    codes = state.codes[start - state.codes_start:stop - state.codes_start]
    return CodecWindow(codes, (emit_start - start) * HOP_LENGTH, (emit_stop - emit_start) * HOP_LENGTH)


def plan_windows(state: StreamState, params: StreamParams, final: bool = False) -> list[CodecWindow]:
    """The windows whose samples are final now, in order, without changing `state`.

    A chunk of `c` frames starting at frame `e` is final once frames up to `e + c + lookahead` have
    arrived; `final=True` (end of stream) also emits the rest, whose right edge is the true sequence end,
    so it is exact whatever the look-ahead."""
    windows: list[CodecWindow] = []
    emitted, received, index = state.frames_emitted, state.frames_received, state.chunks_emitted
    while True:
        size = params.chunk_size(index)
        if emitted + size + params.lookahead_frames > received:
            break
        start = max(0, emitted - params.left_context_frames)
        windows.append(_window(state, start, emitted + size + params.lookahead_frames, emitted, emitted + size))
        emitted, index = emitted + size, index + 1
    if final and emitted < received:
        start = max(0, emitted - params.left_context_frames)
        windows.append(_window(state, start, received, emitted, received))
    return windows


def commit_windows(state: StreamState, params: StreamParams, windows: Sequence[CodecWindow]) -> None:
    """Advance `state` past emitted windows and drop codes no later window needs."""
    state.samples_emitted += sum(w.num_samples for w in windows)
    state.chunks_emitted += len(windows)
    keep_from = max(0, state.frames_emitted - params.left_context_frames)
    if keep_from > state.codes_start:
        state.codes = state.codes[keep_from - state.codes_start:]
        state.codes_start = keep_from


def add_frames(state: StreamState, frames: torch.Tensor | np.ndarray) -> None:
    """Append frames (n, 8) of codes to a stream that is still open."""
    if state.finished:
        raise RuntimeError("stream already flushed; start a new one")
    frames = _as_frames(frames)
    state.codes = torch.cat([state.codes, frames])
    state.frames_received += frames.shape[0]


def _as_frames(frames: torch.Tensor | np.ndarray) -> torch.Tensor:
    frames = torch.as_tensor(frames, dtype=torch.long).cpu()
    if frames.ndim == 1:
        frames = frames[None]
    if frames.ndim != 2 or frames.shape[1] != NUM_CODEBOOKS:
        raise ValueError(f"expected frames of shape (n, {NUM_CODEBOOKS}), got {tuple(frames.shape)}")
    return frames


class StreamingCodecDecoder:
    """Turns codec frames into final float32 24 kHz PCM chunks while frames keep arriving (one stream, on
    the caller's thread; the engine's model worker runs the same planning for all its streams at once).

    `push(frames)` returns the chunks that became final (possibly none); `flush()` ends the stream and returns
    the rest. Concatenated, they have exactly `frames * 960` samples, like `codec.decode` of all frames.
    The first chunk (`first_chunk_frames`) is emitted once `first_chunk_frames + lookahead_frames` frames
    have arrived; later chunks grow by at most `max_chunk_growth` x up to `chunk_frames` frames each."""

    def __init__(
        self,
        codec: nn.Module,
        *,
        first_chunk_frames: int = DEFAULT_FIRST_CHUNK_FRAMES,
        chunk_frames: int = DEFAULT_CHUNK_FRAMES,
        left_context_frames: int = DEFAULT_LEFT_CONTEXT_FRAMES,
        lookahead_frames: int = DEFAULT_LOOKAHEAD_FRAMES,
        max_chunk_growth: float = DEFAULT_MAX_CHUNK_GROWTH,
    ) -> None:
        self.codec = codec
        self.params = StreamParams(first_chunk_frames, chunk_frames, left_context_frames, lookahead_frames,
                                   max_chunk_growth)
        self.state = StreamState()

    @classmethod
    def exact(cls, codec: nn.Module, **params: float) -> StreamingCodecDecoder:
        """Contexts = the computed receptive field (10/10): equal to the whole decode for any weights, at the
        cost of more look-ahead (latency before the first chunk) and compute than the defaults."""
        left, right = receptive_field_sides(codec)
        return cls(codec, left_context_frames=left, lookahead_frames=right, **params)

    def push(self, frames: torch.Tensor | np.ndarray) -> list[np.ndarray]:
        """Add frames (n, 8) of codes; return the PCM chunks that became final."""
        add_frames(self.state, frames)
        return self._emit(final=False)

    def flush(self) -> np.ndarray:
        """End the stream: return every sample not yet emitted (empty if none)."""
        if self.state.finished:
            return np.zeros(0, dtype=np.float32)
        chunks = self._emit(final=True)
        self.state.finished = True
        return _joined(chunks)

    def reset(self) -> None:
        self.state = StreamState()

    def _emit(self, final: bool) -> list[np.ndarray]:
        windows = plan_windows(self.state, self.params, final)
        if not windows:
            return []
        chunks = decode_windows(self.codec, windows)
        commit_windows(self.state, self.params, windows)
        return chunks


def _joined(chunks: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)


# ---------------------------------------------------------------------------------------------------------
# Measurement
# ---------------------------------------------------------------------------------------------------------


def _as_codes(codes: torch.Tensor | np.ndarray) -> torch.Tensor:
    """(1, 8, T) or (8, T) -> (8, T)."""
    codes = torch.as_tensor(codes, dtype=torch.long).cpu()
    if codes.ndim == 3:
        codes = codes[0]
    if codes.ndim != 2 or codes.shape[0] != NUM_CODEBOOKS:
        raise ValueError(f"expected codes of shape (1, {NUM_CODEBOOKS}, T) or ({NUM_CODEBOOKS}, T)")
    return codes


def whole_decode(codec: nn.Module, codes: torch.Tensor | np.ndarray) -> np.ndarray:
    """Reference: decode every frame in one call; float32 (T * 960,)."""
    frames = _as_codes(codes).T
    return decode_windows(codec, [CodecWindow(frames, 0, frames.shape[0] * HOP_LENGTH)])[0]


def stream_decode(
    codec: nn.Module, codes: torch.Tensor | np.ndarray, push_sizes: Sequence[int] | int = 1, **params: float
) -> list[np.ndarray]:
    """Stream `codes` (8, T) through a `StreamingCodecDecoder`, pushing `push_sizes` frames at a time
    (an int, or a sequence cycled over), and return every emitted chunk, flush included (if non-empty)."""
    frames = _as_codes(codes).T
    sizes = [push_sizes] if isinstance(push_sizes, int) else list(push_sizes)
    decoder = StreamingCodecDecoder(codec, **params)
    chunks: list[np.ndarray] = []
    at, k = 0, 0
    while at < frames.shape[0]:
        n = sizes[k % len(sizes)]
        chunks += decoder.push(frames[at:at + n])
        at, k = at + n, k + 1
    tail = decoder.flush()
    return chunks + ([tail] if tail.size else [])
