"""Reply text from Higgs Audio v2's own text head (experimental): chat prompt, step loop, detokenizing.

In transformers (5.23) `HiggsAudioV2ForConditionalGeneration(config, use_text_head=True)` owns a
`text_lm_head` (hidden -> vocab, no bias), but `forward` only returns the *audio* logits: the text head is
used there for the training loss alone, and `generate` always writes audio. So this module runs the
backbone (`model.model`, DualFFN layers with a KV cache) itself and applies `model.text_lm_head` to the
last hidden state, one token per step. Text positions take the text FFN path; the user's audio codes go in
through the port's audio placeholders (`<|AUDIO_OUT|>` + delay tokens, the only ones it embeds as audio),
wrapped in `<|audio_bos|>` ... `<|audio_eos|>` inside the user turn.

The released checkpoint's text output is "emergent and experimental" (its authors' words); with random
tiny weights it is gibberish. Tests hold the mechanics: prompt layout, stop conditions, determinism,
cancellation.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import torch
from transformers import DynamicCache, HiggsAudioV2Processor

from higgs_agent.model import special_tokens as st
from higgs_agent.model.loader import HiggsBundle
from higgs_agent.model.prompts import ModelInputs, delayed_audio_ids

log = logging.getLogger(__name__)


class TextHeadMissingError(ValueError):
    """The model was loaded without its text head."""


class TextGenerationCancelled(RuntimeError):
    """The text generation was cancelled; its cache is gone."""


@dataclass(frozen=True)
class TextSampling:
    """How reply tokens are chosen. Sampling follows the usual order: temperature, top-k, top-p."""

    max_new_tokens: int = 256
    greedy: bool = False
    temperature: float = 0.7
    top_k: int | None = 50
    top_p: float | None = 0.95
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError("max_new_tokens must be >= 1")
        if self.temperature <= 0:
            raise ValueError("temperature must be > 0 (use greedy=True for argmax decoding)")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")


def require_text_head(bundle: HiggsBundle) -> torch.nn.Linear:
    head = getattr(bundle.model, "text_lm_head", None)
    if head is None:
        raise TextHeadMissingError(
            "the Higgs model was loaded without its text head; load it with "
            "load_higgs(..., use_text_head=True) to let it write reply text"
        )
    return head


def _content(message: dict[str, str]) -> str:
    content = message.get("content") or ""
    if not isinstance(content, str):
        raise ValueError(f"message content must be text, got {type(content).__name__}")
    return content.strip()


def chat_inputs(
    processor: HiggsAudioV2Processor, messages: list[dict[str, str]], user_audio_codes: torch.Tensor | None = None
) -> ModelInputs:
    """The reply prompt: Llama-3 headers, one turn per message (system first if given), the user's audio in
    the last user turn, then an open assistant header (text follows, not `<|audio_out_bos|>`).

    Message text is tokenized with special-token strings split into plain text, so a user who types
    `<|eot_id|>` cannot end a turn. The layout per turn is
    `<|start_header_id|>ROLE<|end_header_id|>\\n\\nTEXT<|eot_id|>`; the last user turn's TEXT is preceded by
    `<|audio_bos|>` + placeholders + `<|audio_eos|>` when codes are given."""
    tokenizer = processor.tokenizer
    ids = tokenizer.convert_tokens_to_ids
    start, end, eot = ids(st.START_HEADER), ids(st.END_HEADER), ids(st.EOT)

    def text_ids(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]

    last_user = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=None)
    if user_audio_codes is not None and last_user is None:
        raise ValueError("user audio was given but there is no user turn to put it in")
    tokens: list[int] = [ids(st.BEGIN_OF_TEXT)]
    rows = None
    for index, message in enumerate(messages):
        role = message.get("role")
        if role not in ("system", "user", "assistant"):
            raise ValueError(f"unknown message role {role!r}")
        tokens += [start, *text_ids(role), end]
        text = _content(message)
        if index == last_user and user_audio_codes is not None:
            rows = delayed_audio_ids(processor, user_audio_codes)
            delays = int(user_audio_codes.shape[0]) - 1  # the delay pattern's K - 1 trailing rows
            tokens += text_ids("\n\n") + [ids(st.AUDIO_BOS)]
            tokens += [processor.audio_token_id] * (rows.shape[0] - delays) + [processor.audio_delay_token_id] * delays
            tokens += [ids(st.AUDIO_EOS)] + (text_ids(text) if text else [])
        else:
            tokens += text_ids("\n\n" + text)
        tokens.append(eot)
    tokens += [start, *text_ids("assistant"), end, *text_ids("\n\n")]
    input_ids = torch.tensor([tokens], dtype=torch.long)
    inputs = ModelInputs(input_ids, torch.ones_like(input_ids))
    if rows is not None:
        inputs.audio_input_ids = rows[None]
        inputs.audio_input_ids_mask = torch.ones(1, rows.shape[0], dtype=torch.bool)
    return inputs


class IncrementalDetokenizer:
    """Token ids in, new text out. Holds text back while it ends in an incomplete UTF-8 sequence (a byte
    token mid-character) and decodes only a short window, so each step costs O(1) in the reply length."""

    def __init__(self, tokenizer) -> None:  # noqa: ANN001 - a transformers tokenizer
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self._prefix = 0  # window start: text before it is final
        self._read = 0  # ids up to here have been returned as text

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def add(self, token_id: int) -> str:
        self.ids.append(token_id)
        before = self._decode(self.ids[self._prefix:self._read])
        text = self._decode(self.ids[self._prefix:])
        if len(text) > len(before) and not text.endswith("\ufffd"):
            self._prefix, self._read = self._read, len(self.ids)
            return text[len(before):]
        return ""

    def flush(self) -> str:
        """Whatever is held back (an unfinished character decodes as U+FFFD)."""
        before = self._decode(self.ids[self._prefix:self._read])
        text = self._decode(self.ids[self._prefix:])
        self._prefix = self._read = len(self.ids)
        return text[len(before):]


def allowed_token_mask(tokenizer, vocab_size: int, stop_ids: set[int]) -> torch.Tensor:  # noqa: ANN001
    """0 for ids a reply may hold, -inf elsewhere: ids the tokenizer knows, minus special tokens (audio,
    headers, ...) except the stop tokens. Keeps the model from opening audio or a new turn in text mode,
    and a tiny tokenizer's unused ids (its vocabulary has gaps) out of the reply."""
    known = torch.zeros(vocab_size, dtype=torch.bool)
    vocab_ids = [i for i in tokenizer.get_vocab().values() if 0 <= i < vocab_size]
    known[vocab_ids] = True
    special = set(getattr(tokenizer, "added_tokens_decoder", {})) | set(range(st.FIRST_SPECIAL_ID, vocab_size))
    special = [i for i in special - stop_ids if 0 <= i < vocab_size]
    known[special] = False
    known[[i for i in stop_ids if 0 <= i < vocab_size]] = True
    mask = torch.full((vocab_size,), float("-inf"))
    mask[known] = 0.0
    return mask


class TextGeneration:
    """One reply's decode state. `advance()` runs one forward (the first is the prefill), picks one token and
    returns the new text. Thread-safe against `cancel()`, which frees the KV cache now or at the step's end."""

    def __init__(self, bundle: HiggsBundle, inputs: ModelInputs, sampling: TextSampling,
                 mask: torch.Tensor | None = None) -> None:
        self.model = bundle.model
        self.head = require_text_head(bundle)
        self.device = bundle.device
        self.inputs = inputs
        self.sampling = sampling
        tokenizer = bundle.tokenizer
        self.stop_ids = {tokenizer.convert_tokens_to_ids(st.EOT), tokenizer.convert_tokens_to_ids(st.END_OF_TEXT)}
        if mask is None:
            mask = allowed_token_mask(tokenizer, int(bundle.config.vocab_size), self.stop_ids)
        self.mask = mask.to(self.device)
        self.detokenizer = IncrementalDetokenizer(tokenizer)
        self.generator = None
        if sampling.seed is not None and not sampling.greedy:
            self.generator = torch.Generator(device=self.device).manual_seed(sampling.seed)
        self.tokens: list[int] = []
        self.finished = False
        self.cancelled = False
        self.stop_reason: str | None = None
        self._cache: DynamicCache | None = None
        self._attention: torch.Tensor | None = None
        self._lock = threading.Lock()

    def advance(self) -> str:
        """One step: the text it adds (may be empty), or at the end whatever text was held back."""
        with self._lock:
            if self.cancelled:
                self._free()
                raise TextGenerationCancelled("the text generation was cancelled")
            if self.finished:
                raise RuntimeError("the text generation already finished")
            try:
                token = self._pick(self._forward())
                if token in self.stop_ids:
                    return self._finish("end_of_turn")
                self.tokens.append(token)
                text = self.detokenizer.add(token)
                if len(self.tokens) >= self.sampling.max_new_tokens:
                    return text + self._finish("max_tokens")
                return text
            finally:
                if self.cancelled:  # cancelled mid-step: free the cache now the step is over
                    self._free()

    def cancel(self) -> None:
        self.cancelled = True
        if self._lock.acquire(blocking=False):
            try:
                self._free()
                self.stop_reason = self.stop_reason or "cancelled"
            finally:
                self._lock.release()

    def _finish(self, reason: str) -> str:
        self.finished = True
        self.stop_reason = reason
        self._free()
        return self.detokenizer.flush()

    def _forward(self) -> torch.Tensor:
        with torch.inference_mode():
            if self._cache is None:
                self._cache = DynamicCache(config=self.model.config)
                kwargs = self.inputs.as_kwargs(self.device)
                self._attention = kwargs["attention_mask"]
            else:
                self._attention = torch.cat([self._attention, self._attention.new_ones(1, 1)], dim=1)
                last = torch.tensor([[self.tokens[-1]]], dtype=torch.long, device=self.device)
                kwargs = {"input_ids": last, "attention_mask": self._attention}
            out = self.model.model(**kwargs, cache=self._cache, use_cache=True)
            return self.head(out.last_hidden_state[:, -1])[0].float()

    def _pick(self, logits: torch.Tensor) -> int:
        logits = logits + self.mask
        if self.sampling.greedy:
            return int(logits.argmax())
        s = self.sampling
        logits = logits / s.temperature
        if s.top_k:
            kth = torch.topk(logits, min(s.top_k, logits.numel())).values[-1]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if s.top_p is not None and s.top_p < 1.0:
            ordered, order = torch.sort(logits, descending=True)
            cumulative = ordered.softmax(-1).cumsum(-1)
            drop = cumulative - ordered.softmax(-1) >= s.top_p  # keep the smallest set reaching top_p
            logits = logits.masked_fill(torch.zeros_like(drop).scatter(0, order, drop), float("-inf"))
        return int(torch.multinomial(logits.softmax(-1), 1, generator=self.generator))

    def _free(self) -> None:
        self._cache = None
        self._attention = None
