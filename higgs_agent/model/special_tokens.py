"""The text-token ids Higgs Audio v2 reserves, with the names its tokenizer gives them.

Higgs reuses the Llama-3 tokenizer and renames some of its reserved special tokens. The tiny offline
tokenizer (see `tiny.py`) is built from this table so that tiny models use exactly the real ids.
"""

from typing import Final

FIRST_SPECIAL_ID: Final = 128_000
VOCAB_SIZE: Final = 128_256

BEGIN_OF_TEXT: Final = "<|begin_of_text|>"
END_OF_TEXT: Final = "<|end_of_text|>"
START_HEADER: Final = "<|start_header_id|>"
END_HEADER: Final = "<|end_header_id|>"
EOT: Final = "<|eot_id|>"
AUDIO_BOS: Final = "<|audio_bos|>"
AUDIO_EOS: Final = "<|audio_eos|>"
AUDIO_OUT_BOS: Final = "<|audio_out_bos|>"
AUDIO_DELAY: Final = "<|reserved_special_token_6|>"  # the port's name for the delay token
AUDIO_IN: Final = "<|AUDIO|>"
AUDIO_OUT: Final = "<|AUDIO_OUT|>"
SCENE_START: Final = "<|scene_desc_start|>"
SCENE_END: Final = "<|scene_desc_end|>"
INSTRUCTION_START: Final = "<|generation_instruction_start|>"
INSTRUCTION_END: Final = "<|generation_instruction_end|>"

# id -> name for every id that is not a plain reserved token.
NAMED: Final[dict[int, str]] = {
    128_000: BEGIN_OF_TEXT,
    128_001: END_OF_TEXT,
    128_004: "<|finetune_right_pad_id|>",
    128_006: START_HEADER,
    128_007: END_HEADER,
    128_008: "<|eom_id|>",
    128_009: EOT,
    128_010: "<|python_tag|>",
    128_011: AUDIO_BOS,
    128_012: AUDIO_EOS,
    128_013: AUDIO_OUT_BOS,
    128_014: AUDIO_DELAY,
    128_015: AUDIO_IN,
    128_016: AUDIO_OUT,
    128_017: "<|recipient|>",
    128_018: SCENE_START,
    128_019: SCENE_END,
    128_020: INSTRUCTION_START,
    128_021: INSTRUCTION_END,
}


def special_token_table() -> dict[int, str]:
    """All 256 special tokens, id -> name, in the Llama-3 layout with Higgs' renames."""
    table: dict[int, str] = {}
    reserved = 0
    for token_id in range(FIRST_SPECIAL_ID, VOCAB_SIZE):
        if token_id in NAMED:
            table[token_id] = NAMED[token_id]
        else:
            table[token_id] = f"<|reserved_special_token_{reserved}|>"
        # Llama-3 numbers its reserved tokens across the renamed ones too (128014 is reserved_6).
        if token_id not in (128_000, 128_001, 128_004, 128_006, 128_007, 128_008, 128_009, 128_010):
            reserved += 1
    return table
