"""Small instruct models for tests and CPU benchmarks of the `local` responder, written to a folder and loaded
back through `load_reply_model` (the `from_pretrained` path a real checkpoint takes).

`make_tiny_reply_model(DIR)` writes a `LlamaForCausalLM`, a byte-level BPE tokenizer (trained on the scripted
conversations below, byte fallback for any other text) and a ChatML chat template with Hermes-style tool calls
(Qwen2.5's shape: tools listed in the system turn, `<tool_call>` JSON out, `<tool_response>` back).

`tiny` (0.14 M parameters) starts from random weights and is then trained for a few hundred steps on CPU (a
few seconds) on `script()`, rendered by its own chat template, until greedy decoding says each scripted reply:
asked about the weather in Paris with `WEATHER_TOOL` offered, it calls the tool; given the tool's output, it
answers in words; greeted without tools, it greets back. Anywhere else it babbles. `small` has the shape of
Qwen2.5-0.5B (24 layers, hidden 896, vocabulary 151,936) with random weights and no training: for speed
figures only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

ReplySize = Literal["tiny", "small"]
TEMPLATE_FILE = Path(__file__).with_name("tiny_reply_template.jinja")
END = "<|im_end|>"
SPECIAL = ["<|endoftext|>", "<|im_start|>", END]
TOOL_TAGS = ["<tool_call>", "</tool_call>"]  # plain added tokens: they decode into the text, as in Qwen's

WEATHER_TOOL: dict[str, Any] = {
    "type": "function", "name": "get_weather", "description": "The weather now in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
TRAINED_INSTRUCTIONS = ("You are a helpful, concise voice assistant. Answer in one or two short sentences.",)
QUESTIONS = ("What's the weather in Paris?", "what is the weather like in paris")
WEATHER_CALL = {"name": "get_weather", "arguments": {"city": "Paris"}}
WEATHER_OUTPUT = '{"sky": "sunny", "celsius": 21}'
WEATHER_ANSWER = "It is sunny in Paris, twenty-one degrees. Enjoy your day!"
GREETINGS = ("Hello.",)
GREETING_ANSWER = "Hello! How can I help you today?"


@dataclass(frozen=True)
class ReplySpec:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    ffn: int
    vocab: int | None  # None: the tokenizer's own size
    train_steps: int


SPECS: dict[str, ReplySpec] = {
    "tiny": ReplySpec(hidden=64, layers=2, heads=4, kv_heads=2, ffn=192, vocab=None, train_steps=160),
    "small": ReplySpec(hidden=896, layers=24, heads=14, kv_heads=2, ffn=4864, vocab=151_936, train_steps=0),
}


def chat_tool(tool: dict[str, Any]) -> dict[str, Any]:
    """A Realtime function tool in the chat-completions shape, keys in the order `FunctionTool.to_chat_tool`
    writes them (the template renders them with `tojson`, in order: the trained prompt must be the served one)."""
    return {"type": "function", "function": {"name": tool["name"], "parameters": tool["parameters"],
                                             "description": tool["description"]}}


def script() -> list[tuple[list[dict[str, Any]], list[dict[str, Any]] | None, str]]:
    """The scripted conversations: (messages, tools in the chat-completions shape or None, the reply)."""
    tool = chat_tool(WEATHER_TOOL)
    call_text = f"<tool_call>\n{json.dumps(WEATHER_CALL)}\n</tool_call>"
    out = []
    for instructions in TRAINED_INSTRUCTIONS:
        system = {"role": "system", "content": instructions}
        for question in QUESTIONS:
            asked = [system, {"role": "user", "content": question}]
            out.append((asked, [tool], call_text))
            called = {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function", "function": WEATHER_CALL}]}
            out.append(([*asked, called, {"role": "tool", "tool_call_id": "call_1", "content": WEATHER_OUTPUT}],
                        [tool], WEATHER_ANSWER))
        for greeting in GREETINGS:
            out.append(([system, {"role": "user", "content": greeting}], None, GREETING_ANSWER))
    return out


def build_reply_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on the script's text (deterministic: same text, same merges), with ChatML's
    special tokens and the tool tags."""
    template = TEMPLATE_FILE.read_text()
    corpus = [json.dumps(WEATHER_TOOL), WEATHER_OUTPUT, WEATHER_ANSWER, GREETING_ANSWER, json.dumps(WEATHER_CALL),
              *TRAINED_INSTRUCTIONS, *QUESTIONS, *GREETINGS, template]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=640, special_tokens=SPECIAL, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(corpus, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=END, pad_token="<|endoftext|>",
                                        model_max_length=4096)
    tokenizer.add_tokens(TOOL_TAGS)
    tokenizer.chat_template = template
    return tokenizer


def make_tiny_reply_model(out_dir: str | Path, size: ReplySize = "tiny", seed: int = 0,
                          steps: int | None = None) -> Path:
    """Write the model, tokenizer and chat template to `out_dir` (see the module doc). `steps` overrides the
    size's training steps (0: random weights, untrained)."""
    if size not in SPECS:
        raise ValueError(f"unknown size {size!r}; choose one of {sorted(SPECS)}")
    spec = SPECS[size]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_reply_tokenizer()
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=spec.vocab or len(tokenizer), hidden_size=spec.hidden, intermediate_size=spec.ffn,
        num_hidden_layers=spec.layers, num_attention_heads=spec.heads, num_key_value_heads=spec.kv_heads,
        max_position_embeddings=4096, rope_theta=10_000.0, tie_word_embeddings=True,
        bos_token_id=None, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    train_steps = spec.train_steps if steps is None else steps
    if train_steps:
        train_on_script(model, tokenizer, train_steps)
    model.eval()
    # A vocabulary wider than the tokenizer's (small: Qwen's 151,936 rows, for the real head's cost) keeps its
    # random picks among the tokens that spell something, so its replies have words to time.
    unspelled = list(range(len(tokenizer), config.vocab_size))
    model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id, do_sample=False,
                                               suppress_tokens=unspelled or None)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def train_on_script(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, steps: int,
                    lr: float = 1e-2) -> float:
    """Teach the model the scripted replies (loss on the reply tokens only); returns the final loss."""
    rows = []
    for messages, tools, reply in script():
        prompt = tokenizer.apply_chat_template(messages, tools=tools, add_generation_prompt=True, tokenize=False)
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        reply_ids = tokenizer(reply + END, add_special_tokens=False)["input_ids"]
        rows.append((prompt_ids, reply_ids))
    width = max(len(p) + len(r) for p, r in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for n, (prompt_ids, reply_ids) in enumerate(rows):
        whole = prompt_ids + reply_ids
        ids[n, :len(whole)] = torch.tensor(whole)
        labels[n, len(prompt_ids):len(whole)] = torch.tensor(reply_ids)
        mask[n, :len(whole)] = 1
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    loss = torch.tensor(0.0)
    for _ in range(steps):
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    model.eval()
    return float(loss.detach())
