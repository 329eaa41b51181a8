"""How streamed codec decoding compares with the whole decode: SNR, clicks at chunk seams, time overhead, and
the receptive field measured by perturbation. Measurement for benchmarks and tests, not on the serving path;
`streaming/codec_stream.py` holds the decoder and the figures these produced."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from copy import deepcopy
from dataclasses import replace

import numpy as np
import torch
from torch import nn

from higgs_agent.streaming.codec_stream import (
    NUM_CODEBOOKS,
    StreamParams,
    _as_codes,
    receptive_field_frames,
    stream_decode,
    whole_decode,
)

SNR_CAP_DB = 200.0  # reported when streamed == whole decode bit for bit (keeps the number JSON-finite)
SEAM_HALF_WIDTH = 8  # samples each side of a seam inspected by the seam-jump metric


def measure_receptive_field_sides(codec: nn.Module, num_frames: int = 41, seed: int = 0) -> tuple[int, int]:
    """Empirical (left_context, lookahead): change every code of the middle frame and see which output
    frames move. Run in float64 so influences far below float32 resolution still show.
    An output frame `g` moved by input frame `f` means `g` needs `f - g` frames of look-ahead (f > g) or
    `g - f` frames of left context (f < g)."""
    probe = deepcopy(codec).double().eval()
    gen = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 1024, (1, NUM_CODEBOOKS, num_frames), generator=gen)
    middle = num_frames // 2
    changed = codes.clone()
    changed[0, :, middle] = (changed[0, :, middle] + 512) % 1024
    with torch.inference_mode():
        a = probe.decode(codes).audio_values[0, 0]
        b = probe.decode(changed).audio_values[0, 0]
    moved = torch.nonzero(a != b).flatten()
    hop = a.shape[-1] // num_frames
    first, last = int(moved[0]) // hop, int(moved[-1]) // hop
    return last - middle, middle - first


def snr_db(reference: np.ndarray, test: np.ndarray) -> float:
    """10 log10(energy of reference / energy of the difference), capped at SNR_CAP_DB."""
    noise = float(np.sum((test.astype(np.float64) - reference) ** 2))
    signal = float(np.sum(reference.astype(np.float64) ** 2))
    if noise == 0.0:
        return SNR_CAP_DB
    return min(SNR_CAP_DB, 10.0 * math.log10(signal / noise))


def seam_jump(reference: np.ndarray, streamed: np.ndarray, seams: Sequence[int],
              half_width: int = SEAM_HALF_WIDTH) -> float:
    """Largest extra sample-to-sample jump at chunk seams, relative to the reference's peak |amplitude|.

    For each seam at sample `s` and each n in [s - half_width, s + half_width], compare the jump
    `streamed[n] - streamed[n-1]` with the same jump in the whole decode; return the largest absolute
    difference divided by max|reference|. 0 means the seams are invisible; a click from a mismatched seam
    shows as a jump the whole decode does not have (a naive context-free chunked decode scores ~0.1-1)."""
    if not seams:
        return 0.0
    peak = float(np.max(np.abs(reference))) or 1.0
    d_ref, d_str = np.diff(reference.astype(np.float64)), np.diff(streamed.astype(np.float64))
    worst = 0.0
    for s in seams:
        lo, hi = max(0, s - 1 - half_width), min(d_ref.size, s + half_width)  # diff index n-1 is jump into n
        worst = max(worst, float(np.max(np.abs(d_str[lo:hi] - d_ref[lo:hi]), initial=0.0)))
    return worst / peak


def _seams(chunks: Sequence[np.ndarray]) -> list[int]:
    return [int(s) for s in np.cumsum([c.size for c in chunks])[:-1]]


def _seconds(fn) -> float:  # noqa: ANN001 - a zero-argument callable
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _timed_pairs(whole, stream, repeats: int) -> tuple[float, float, float]:  # noqa: ANN001
    """Median whole time, median stream time, median of per-pair ratios. The two are timed back to back
    (after one warm-up each) so a load spike from another process hits both sides of a ratio alike."""
    whole(), stream()
    pairs = [(_seconds(whole), _seconds(stream)) for _ in range(repeats)]
    w, s = zip(*pairs)
    return float(np.median(w)), float(np.median(s)), float(np.median([b / a for a, b in pairs]))


def measure_stream_quality(
    codec: nn.Module,
    codes: torch.Tensor | np.ndarray,
    *,
    push_sizes: Sequence[int] | int = 1,
    repeats: int = 5,
    threads: int | None = None,
    **decoder_params: float,
) -> dict[str, float | int]:
    """Stream `codes` ((1, 8, T) or (8, T)) and compare with the whole-sequence decode.

    Keys (a public contract; a benchmark prints them):
      codec_receptive_field_frames: ONE-SIDED receptive field (frames each side that can change a sample).
      codec_stream_snr_db: SNR of the concatenated streamed PCM against the whole decode (capped at 200).
      codec_stream_max_seam_jump: `seam_jump` (extra jump at seams / peak; 0 = identical, smaller = better).
      codec_stream_overhead: streaming decode time (all push + flush calls, frames pushed `push_sizes` at
        a time) / whole decode time: the median over `repeats` back-to-back pairs, after one warm-up.
    Also: codec_stream_max_abs_error (relative to peak), codec_stream_chunks, codec_stream_samples,
    codec_whole_samples, codec_stream_first_audio_after_frames, codec_stream_decode_s, codec_whole_decode_s.
    `threads` sets torch's intra-op threads for the run, then restores them: on a busy few-core CPU, 1 gives
    repeatable timings. `decoder_params` are `StreamingCodecDecoder` keywords (defaults otherwise).
    """
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _measure(codec, _as_codes(codes), push_sizes, repeats, replace(StreamParams(), **decoder_params))
    finally:
        torch.set_num_threads(previous)


def _measure(codec: nn.Module, codes: torch.Tensor, push_sizes: Sequence[int] | int, repeats: int,
             params: StreamParams) -> dict[str, float | int]:
    kwargs = dict(vars(params))
    reference = whole_decode(codec, codes)
    chunks = stream_decode(codec, codes, push_sizes, **kwargs)
    streamed = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)
    if streamed.size != reference.size:
        raise RuntimeError(f"streamed {streamed.size} samples, whole decode {reference.size}")
    whole_s, stream_s, overhead = _timed_pairs(
        lambda: whole_decode(codec, codes), lambda: stream_decode(codec, codes, push_sizes, **kwargs), repeats)
    peak = float(np.max(np.abs(reference))) or 1.0
    return {
        "codec_receptive_field_frames": receptive_field_frames(codec),
        "codec_stream_snr_db": snr_db(reference, streamed),
        "codec_stream_max_seam_jump": seam_jump(reference, streamed, _seams(chunks)),
        "codec_stream_overhead": overhead,
        "codec_stream_max_abs_error": float(np.max(np.abs(streamed - reference))) / peak,
        "codec_stream_chunks": len(chunks),
        "codec_stream_samples": int(streamed.size),
        "codec_whole_samples": int(reference.size),
        "codec_stream_first_audio_after_frames": params.first_chunk_frames + params.lookahead_frames,
        "codec_stream_decode_s": stream_s,
        "codec_whole_decode_s": whole_s,
    }
