"""Incremental codec decoding (higgs_agent.streaming.codec_stream) against the whole-sequence decode."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from transformers import HiggsAudioV2TokenizerModel

from higgs_agent import HOP_LENGTH
from higgs_agent.model.tiny import make_tiny_model
from higgs_agent.bench.codec_quality import measure_receptive_field_sides, measure_stream_quality, seam_jump, snr_db
from higgs_agent.streaming.codec_stream import (
    CodecWindow,
    StreamingCodecDecoder,
    decode_windows,
    receptive_field_frames,
    receptive_field_sides,
    stream_decode,
    whole_decode,
)

MIN_SNR_DB = 40.0
# Extra jump at a seam, as a fraction of the whole decode's peak: 1e-3 is -60 dB, inaudible. Streaming
# with the defaults scores ~1e-5 on this codec; a context-free chunked decode ~0.1-0.5 (tested below).
MAX_SEAM_JUMP = 1e-3
UNEVEN_PUSHES = [1, 3, 7, 2, 5, 1, 11]


@pytest.fixture(scope="module")
def codec(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HiggsAudioV2TokenizerModel]:
    # One intra-op thread: on a busy 2-core machine OpenMP's thread hand-off makes the first few decode
    # calls take ~0.5 s each, and this file makes hundreds of small calls. Restored afterwards.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    folder = make_tiny_model(tmp_path_factory.mktemp("tiny_codec"), size="tiny", seed=0)
    yield HiggsAudioV2TokenizerModel.from_pretrained(str(folder / "audio_tokenizer")).eval()
    torch.set_num_threads(threads)


def random_codes(frames: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 1024, (8, frames), generator=torch.Generator().manual_seed(seed))


def concat(chunks: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)


def seams(chunks: list[np.ndarray]) -> list[int]:
    return [int(s) for s in np.cumsum([c.size for c in chunks])[:-1]]


# --- receptive field ------------------------------------------------------------------------------------


def test_receptive_field_computed_equals_perturbation_measurement(codec: HiggsAudioV2TokenizerModel) -> None:
    computed = receptive_field_sides(codec)
    measured = measure_receptive_field_sides(codec)  # change one frame's codes, see which frames move
    assert computed == measured == (10, 10)
    assert receptive_field_frames(codec) == 10  # one-sided


def test_whole_decode_is_960_samples_per_frame(codec: HiggsAudioV2TokenizerModel) -> None:
    for frames in (1, 2, 13):
        with torch.inference_mode():
            audio = codec.decode(random_codes(frames)[None]).audio_values
        assert audio.shape == (1, 1, frames * HOP_LENGTH)


# --- streamed == whole ------------------------------------------------------------------------------------


@pytest.mark.parametrize("pushes", [1, UNEVEN_PUSHES], ids=["one_at_a_time", "uneven"])
def test_streamed_matches_whole_decode(codec: HiggsAudioV2TokenizerModel, pushes: int | list[int]) -> None:
    codes = random_codes(120, seed=1)
    reference = whole_decode(codec, codes)
    chunks = stream_decode(codec, codes, pushes)
    streamed = concat(chunks)
    assert streamed.dtype == np.float32
    assert streamed.shape == reference.shape == (120 * HOP_LENGTH,)
    assert len(chunks) > 3  # really streamed, several seams checked
    assert snr_db(reference, streamed) >= MIN_SNR_DB
    assert seam_jump(reference, streamed, seams(chunks)) <= MAX_SEAM_JUMP


def test_naive_chunking_without_context_fails_the_seam_bound(codec: HiggsAudioV2TokenizerModel) -> None:
    """The seam check can fail: decoding 5-frame chunks on their own clicks at every seam."""
    codes = random_codes(120, seed=1)
    reference = whole_decode(codec, codes)
    chunks = stream_decode(codec, codes, 1, first_chunk_frames=5, chunk_frames=5,
                           left_context_frames=0, lookahead_frames=0)
    streamed = concat(chunks)
    assert streamed.shape == reference.shape
    assert seam_jump(reference, streamed, seams(chunks)) > 10 * MAX_SEAM_JUMP
    assert snr_db(reference, streamed) < MIN_SNR_DB


def test_full_receptive_field_context_is_exact(codec: HiggsAudioV2TokenizerModel) -> None:
    codes = random_codes(80, seed=2)
    reference = whole_decode(codec, codes)
    side = receptive_field_frames(codec)
    streamed = concat(stream_decode(codec, codes, UNEVEN_PUSHES, first_chunk_frames=1, chunk_frames=7,
                                    left_context_frames=side, lookahead_frames=side))
    # equal up to float32 rounding (conv blocking differs with window length)
    assert np.max(np.abs(streamed - reference)) <= 1e-5 * np.max(np.abs(reference))
    decoder = StreamingCodecDecoder.exact(codec, first_chunk_frames=3, chunk_frames=9)
    exact = concat([c for i in range(80) for c in decoder.push(codes[:, i])] + [decoder.flush()])
    assert np.max(np.abs(exact - reference)) <= 1e-5 * np.max(np.abs(reference))


# --- timing of chunks -----------------------------------------------------------------------------------


def test_first_chunk_arrives_after_first_chunk_plus_lookahead_frames(codec: HiggsAudioV2TokenizerModel) -> None:
    first, chunk, lookahead = 2, 6, 3
    decoder = StreamingCodecDecoder(codec, first_chunk_frames=first, chunk_frames=chunk,
                                    left_context_frames=3, lookahead_frames=lookahead,
                                    max_chunk_growth=math.inf)  # no ramp: first chunk, then chunk_frames
    frames = random_codes(30, seed=3).T
    arrivals = []  # (frames pushed so far, chunk length in frames)
    for i in range(frames.shape[0]):
        arrivals += [(i + 1, c.size // HOP_LENGTH) for c in decoder.push(frames[i:i + 1])]
    assert arrivals[0] == (first + lookahead, first)
    assert arrivals[1] == (first + chunk + lookahead, chunk)
    assert all(size == chunk for _, size in arrivals[1:])
    emitted = sum(size for _, size in arrivals)
    assert emitted == first + chunk * ((30 - lookahead - first) // chunk)
    assert decoder.flush().size == (30 - emitted) * HOP_LENGTH


def test_chunks_ramp_up_to_chunk_frames(codec: HiggsAudioV2TokenizerModel) -> None:
    decoder = StreamingCodecDecoder(codec, first_chunk_frames=1, chunk_frames=12, lookahead_frames=2,
                                    max_chunk_growth=2)
    arrivals = []
    frames = random_codes(60, seed=4).T
    for i in range(frames.shape[0]):
        arrivals += [(i + 1, c.size // HOP_LENGTH) for c in decoder.push(frames[i:i + 1])]
    assert [size for _, size in arrivals] == [1, 2, 4, 8, 12, 12, 12]
    assert [pushed for pushed, _ in arrivals] == [3, 5, 9, 17, 29, 41, 53]  # emitted so far + 2 lookahead


def test_big_push_emits_several_chunks_at_once(codec: HiggsAudioV2TokenizerModel) -> None:
    decoder = StreamingCodecDecoder(codec, first_chunk_frames=2, chunk_frames=5, left_context_frames=4,
                                    lookahead_frames=4, max_chunk_growth=2)
    chunks = decoder.push(random_codes(40, seed=4).T)
    assert [c.size // HOP_LENGTH for c in chunks] == [2, 4] + [5] * 6  # 36 frames, 4 held back as look-ahead
    assert decoder.state.frames_received == 40
    assert decoder.state.samples_emitted == 36 * HOP_LENGTH


# --- flush ----------------------------------------------------------------------------------------------


def test_flush_on_stream_shorter_than_one_chunk(codec: HiggsAudioV2TokenizerModel) -> None:
    codes = random_codes(3, seed=5)
    decoder = StreamingCodecDecoder(codec, first_chunk_frames=4, lookahead_frames=4)
    assert decoder.push(codes.T) == []
    tail = decoder.flush()
    assert tail.dtype == np.float32
    np.testing.assert_allclose(tail, whole_decode(codec, codes), atol=1e-6)


def test_empty_flush_and_flush_twice(codec: HiggsAudioV2TokenizerModel) -> None:
    decoder = StreamingCodecDecoder(codec)
    empty = decoder.flush()
    assert empty.shape == (0,) and empty.dtype == np.float32
    assert decoder.flush().shape == (0,)
    with pytest.raises(RuntimeError):
        decoder.push(random_codes(1).T)
    decoder.reset()
    assert decoder.push(random_codes(1).T) == []
    assert decoder.flush().size == HOP_LENGTH


def test_push_rejects_wrong_shape(codec: HiggsAudioV2TokenizerModel) -> None:
    with pytest.raises(ValueError):
        StreamingCodecDecoder(codec).push(torch.zeros(2, 7, dtype=torch.long))
    with pytest.raises(ValueError):
        StreamingCodecDecoder(codec, chunk_frames=0)


# --- batching and the measurement helper ----------------------------------------------------------------


def test_decode_windows_batches_equal_length_windows(codec: HiggsAudioV2TokenizerModel) -> None:
    a, b, c = random_codes(9, seed=6).T, random_codes(9, seed=7).T, random_codes(4, seed=8).T
    windows = [CodecWindow(a, 960, 3 * 960), CodecWindow(c, 0, 4 * 960), CodecWindow(b, 2 * 960, 5 * 960)]
    batched = decode_windows(codec, windows)  # a and b share one decode call
    single = [decode_windows(codec, [w])[0] for w in windows]
    assert [x.size for x in batched] == [3 * 960, 4 * 960, 5 * 960]
    for x, y in zip(batched, single):
        np.testing.assert_allclose(x, y, atol=1e-6)
    np.testing.assert_allclose(batched[0], whole_decode(codec, a.T)[960:4 * 960], atol=1e-6)


def test_one_call_per_window_equals_batched_calls(codec: HiggsAudioV2TokenizerModel) -> None:
    """The CPU path (a batch of one per window) and the GPU path (equal-length windows in one call) keep the
    same samples, to float rounding."""
    windows = [CodecWindow(random_codes(12, seed=30 + i).T, 2 * 960, 6 * 960) for i in range(3)]
    batched = decode_windows(codec, windows, batch=True)
    alone = decode_windows(codec, windows, batch=False)
    for x, y in zip(batched, alone):
        assert x.size == y.size == 6 * 960
        np.testing.assert_allclose(x, y, atol=1e-5 * float(np.abs(y).max()))


def test_measure_stream_quality_reports_the_contract_keys(codec: HiggsAudioV2TokenizerModel) -> None:
    report = measure_stream_quality(codec, random_codes(60, seed=9)[None], repeats=1)
    assert report["codec_receptive_field_frames"] == 10
    assert report["codec_stream_snr_db"] >= MIN_SNR_DB
    assert report["codec_stream_max_seam_jump"] <= MAX_SEAM_JUMP
    assert math.isfinite(report["codec_stream_overhead"]) and report["codec_stream_overhead"] > 0
    assert report["codec_stream_samples"] == report["codec_whole_samples"] == 60 * HOP_LENGTH
