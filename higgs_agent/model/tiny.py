"""Random-weight Higgs Audio v2 models of the real architecture, small enough for CPU tests.

`make_tiny_model(DIR)` writes a generation model, a codec (in DIR/audio_tokenizer), a byte-level text
tokenizer carrying every Higgs special token at its real id, and the codec's feature-extractor config.
`load_higgs(DIR)` then loads it through the same `from_pretrained` path as the released checkpoints.

What is kept real, because streaming code depends on it: the vocabulary size and special-token ids, 8
codebooks of 1024 codes (+ stream BOS/EOS = 1026), the DualFFN layer layout, and the codec's strides
(8,5,4,2,3: hop 960, 25 frames/s at 24 kHz), kernel sizes and dilations, so its receptive field is real.
Only widths and depths shrink.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import (
    DacFeatureExtractor,
    HiggsAudioV2Config,
    HiggsAudioV2ForConditionalGeneration,
    HiggsAudioV2TokenizerConfig,
    HiggsAudioV2TokenizerModel,
    PreTrainedTokenizerFast,
)

from higgs_agent import HOP_LENGTH, SAMPLE_RATE
from higgs_agent.model import special_tokens as st
from higgs_agent.model.loader import CHAT_TEMPLATE_FILE, CODEC_SUBFOLDER

Size = Literal["tiny", "mini"]
CODES_PER_BOOK = 1024
NUM_CODEBOOKS = 8
CODEC_STRIDES = [8, 5, 4, 2, 3]


@dataclass(frozen=True)
class TinySpec:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    ffn: int
    codec_decoder_width: int
    codec_latent: int


SPECS: dict[str, TinySpec] = {
    # fast unit tests: a whole generate() of 40 frames takes well under a second
    "tiny": TinySpec(hidden=64, layers=2, heads=4, kv_heads=2, ffn=128, codec_decoder_width=64, codec_latent=16),
    # CPU benchmarks: about 130 M parameters (66 M of them the text embedding), compute-bound steps
    "mini": TinySpec(hidden=512, layers=8, heads=8, kv_heads=4, ffn=2048, codec_decoder_width=256,
                     codec_latent=64),
}


def tiny_model_config(size: Size = "tiny") -> HiggsAudioV2Config:
    spec = SPECS[size]
    return HiggsAudioV2Config(
        vocab_size=st.VOCAB_SIZE,
        hidden_size=spec.hidden,
        intermediate_size=spec.ffn,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        num_key_value_heads=spec.kv_heads,
        head_dim=spec.hidden // spec.heads,
        max_position_embeddings=8192,
        num_codebooks=NUM_CODEBOOKS,
        codebook_size=CODES_PER_BOOK + 2,  # + stream BOS (1024) and stream EOS (1025), as in the port
        audio_stream_bos_id=CODES_PER_BOOK,
        audio_stream_eos_id=CODES_PER_BOOK + 1,
    )


def tiny_codec_config(size: Size = "tiny") -> HiggsAudioV2TokenizerConfig:
    spec = SPECS[size]
    return HiggsAudioV2TokenizerConfig(
        target_bandwidths=[0.5, 1, 1.5, 2],  # 2 kbps at 25 fps x 10 bits -> 8 quantizers, as released
        sample_rate=SAMPLE_RATE,
        codebook_size=CODES_PER_BOOK,
        codebook_dim=16,
        acoustic_model_config={
            "model_type": "dac",
            "encoder_hidden_size": 4,
            "downsampling_ratios": CODEC_STRIDES,
            "upsampling_ratios": CODEC_STRIDES,
            "decoder_hidden_size": spec.codec_decoder_width,
            "hidden_size": spec.codec_latent,
            "sampling_rate": SAMPLE_RATE,
            "hop_length": HOP_LENGTH,
        },
        semantic_model_config={
            "model_type": "hubert",
            "hidden_size": 16,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "intermediate_size": 32,
            "conv_dim": [8] * 7,  # the real strides (5,2,2,2,2,2,2): 50 fps at 16 kHz
            "num_conv_pos_embeddings": 16,
            "num_conv_pos_embedding_groups": 2,
        },
    )


def build_text_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer (one token per byte, ids 0-255) plus the 256 Higgs/Llama-3 special tokens at
    ids 128000-128255. Deterministic by construction: nothing is trained."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {symbol: i for i, symbol in enumerate(sorted(alphabet))}
    specials = st.special_token_table()
    # Special tokens live in the model vocabulary at their real ids (the gap 256..127999 stays empty);
    # registering them as added tokens afterwards keeps those ids instead of numbering them from 256.
    vocab.update({name: token_id for token_id, name in specials.items()})
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(list(specials.values()))
    backend.post_processor = processors.TemplateProcessing(
        single=f"{st.BEGIN_OF_TEXT} $A", special_tokens=[(st.BEGIN_OF_TEXT, 128_000)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=st.BEGIN_OF_TEXT,
        eos_token=st.EOT,
        pad_token=st.END_OF_TEXT,
        model_max_length=8192,
    )
    tokenizer.chat_template = CHAT_TEMPLATE_FILE.read_text()
    return tokenizer


def _seed_codebooks(codec: HiggsAudioV2TokenizerModel, generator: torch.Generator) -> None:
    # The port initialises codebook vectors to zero (trained weights overwrite them); random vectors make
    # every code decode to a different sound, which the streaming tests need.
    with torch.no_grad():
        for quantizer in codec.quantizer.quantizers:
            book = quantizer.codebook
            book.embed.copy_(torch.randn(book.embed.shape, generator=generator))
            book.embed_avg.copy_(book.embed)


def make_tiny_model(out_dir: str | Path, size: Size = "tiny", seed: int = 0, text_head: bool = False) -> Path:
    """Write a random-weight model, codec, tokenizer and feature extractor to `out_dir`. `text_head` adds a
    seeded text head (`text_lm_head`), as the released checkpoint carries, for the `native` responder; the
    audio weights are the same either way."""
    if size not in SPECS:
        raise ValueError(f"unknown size {size!r}; choose one of {sorted(SPECS)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = HiggsAudioV2ForConditionalGeneration(tiny_model_config(size)).eval()
    if text_head:
        head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=False)
        with torch.no_grad():
            head.weight.copy_(torch.randn(head.weight.shape, generator=torch.Generator().manual_seed(seed + 3)))
        model.text_lm_head = head
    model.generation_config.pad_token_id = model.config.pad_token_id
    model.generation_config.eos_token_id = model.config.eos_token_id
    model.save_pretrained(out)

    torch.manual_seed(seed + 1)
    codec = HiggsAudioV2TokenizerModel(tiny_codec_config(size)).eval()
    _seed_codebooks(codec, torch.Generator().manual_seed(seed + 2))
    codec.save_pretrained(out / CODEC_SUBFOLDER)

    build_text_tokenizer().save_pretrained(out)
    DacFeatureExtractor(feature_size=1, sampling_rate=SAMPLE_RATE, hop_length=HOP_LENGTH,
                        padding_value=0.0).save_pretrained(out)
    return out


def parameter_count(size: Size) -> int:
    with torch.device("meta"):
        model = HiggsAudioV2ForConditionalGeneration(tiny_model_config(size))
    return sum(p.numel() for p in model.parameters())
