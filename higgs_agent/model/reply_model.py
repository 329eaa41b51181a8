"""An instruct LLM loaded in this process to write the agent's replies (`serve --reply-model`), and the one
thread that runs it.

`load_reply_model` takes a hub id or a folder (any `AutoModelForCausalLM` with a chat template: Qwen2.5,
Llama 3.x, SmolLM2, ...) through the same `from_pretrained` path for a real checkpoint and for the tiny one
`higgs-agent make-tiny-reply-model DIR` writes.

`ReplyGenerator` owns the model: one thread, fed by a queue, is the only one that runs it, so neither the event
loop nor the speech engine's worker ever waits on a reply's tokens (the engine's worker is another thread;
on a GPU both queue kernels on the same device). The replies waiting when the thread is free, and those that
come within `gather_s` (5 ms) of the first, are generated together, as one left-padded batch of one
`generate()` call (up to `max_batch`): sessions whose turns end together are answered together. A reply that
arrives while a batch runs waits for that batch to end. Each token is handed to its job's `deliver` callback
as it is made (the responder forwards it to the event loop). A cancelled job is stopped at the next token by
a stopping criterion (its row of the batch ends; the other rows go on) and is delivered nothing more.

transformers' continuous batching (`init_continuous_batching`) would let a reply join a running batch; on
transformers 5.24 and a CPU its paged cache took over 20 s to set up and delivered nothing to a streaming
handler within 5 s in a trial here, so this uses plain `generate()`; worth revisiting on a GPU.
"""

from __future__ import annotations

import copy
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from higgs_agent.model.errors import ModelLoadError
from higgs_agent.model.loader import (
    checked_from_pretrained,
    describe_parameters,
    download_weights,
    move_to,
    pick_device,
    pick_dtype,
)
from higgs_agent.model.sources import REPLY_MODEL_OFFLINE, check_reply_folder, is_hub_id

log = logging.getLogger(__name__)
DEFAULT_MAX_BATCH = 8
DEFAULT_GATHER_S = 0.005  # how long a free thread waits for more replies to batch with the first one
Deliver = Callable[[int | None, BaseException | None], None]  # (token, None), then (None, None) or (None, error)


@dataclass
class ReplyModel:
    """A loaded instruct model and its tokenizer."""

    model: Any  # a transformers PreTrainedModel (AutoModelForCausalLM)
    tokenizer: Any
    source: str
    device: torch.device
    dtype: torch.dtype
    stop_ids: tuple[int, ...]  # end of turn: the tokenizer's and the generation config's EOS tokens

    @property
    def writes_tool_tags(self) -> bool:
        """Whether its chat template asks for Hermes-style `<tool_call>` calls (Qwen2.5, Qwen3, Hermes)."""
        return "<tool_call>" in (self.tokenizer.chat_template or "")

    def parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def load_reply_model(source: str, device: str | torch.device | None = None, dtype: str | torch.dtype | None = None,
                     progress: Callable[[str], None] = log.info) -> ReplyModel:
    """A hub id or folder -> the model on `device` (auto: CUDA when present) in `dtype` (auto: bf16 on CUDA,
    float32 on CPU). ModelLoadError, saying how to get one, when it cannot be had."""
    folder = (download_weights(source, "reply model", "--reply-model", progress, size="3 GB for a 1.5B model in bf16",
                        offline=REPLY_MODEL_OFFLINE) if is_hub_id(source) else source)
    folder = str(check_reply_folder(folder))
    target = device if isinstance(device, torch.device) else pick_device(device)
    target_dtype = pick_dtype(target, dtype)
    started = time.perf_counter()
    tokenizer = checked_from_pretrained(AutoTokenizer, folder, "reply model's tokenizer")
    try:
        model = checked_from_pretrained(AutoModelForCausalLM, folder, "reply model", dtype=target_dtype)
    except ValueError as exc:  # a config of a kind AutoModelForCausalLM does not know
        raise ModelLoadError(f"{folder!r} does not hold a causal language model transformers can load: "
                             f"{str(exc).splitlines()[0]}") from exc
    model = move_to(model, target, target_dtype, "reply model").eval()
    stops = {tokenizer.eos_token_id, *_ids(model.generation_config.eos_token_id)}
    for marker in ("<|im_end|>", "<|eot_id|>", "<|end_of_text|>", "<end_of_turn>"):  # ends of a chat turn
        token = tokenizer.convert_tokens_to_ids(marker) if marker in tokenizer.get_vocab() else None
        stops.add(token)
    stops.discard(None)
    progress(f"reply model: {describe_parameters(model)} from {source} on {target} as "
             f"{str(target_dtype).removeprefix('torch.')} ({time.perf_counter() - started:.1f} s)")
    return ReplyModel(model, tokenizer, source, target, target_dtype, tuple(sorted(stops)))


def _ids(value: int | Sequence[int] | None) -> list[int]:
    if value is None:
        return []
    return [value] if isinstance(value, int) else list(value)


@dataclass
class ReplyJob:
    """One reply's generation: its prompt, its token budget, and where its tokens go."""

    prompt_ids: list[int]
    max_new_tokens: int
    deliver: Deliver
    cancelled: threading.Event = field(default_factory=threading.Event)
    made: int = 0  # tokens delivered
    ended: bool = False
    queued_at: float = field(default_factory=time.perf_counter)

    def cancel(self) -> None:
        """Stop at the next token (the thread checks the flag between steps) and deliver nothing more."""
        self.cancelled.set()

    def _token(self, token: int) -> None:
        self.made += 1
        self._send(token, None)

    def _end(self, error: BaseException | None = None) -> None:
        if not self.ended:
            self.ended = True
            self._send(None, error)

    def _send(self, token: int | None, error: BaseException | None) -> None:
        if self.cancelled.is_set() and token is not None:
            return
        try:
            self.deliver(token, error)
        except RuntimeError:  # the consumer's event loop is gone: nobody is listening any more
            self.cancelled.set()


@dataclass
class Sampling:
    """How tokens are picked; None keeps the model's own generation config (Qwen ships sampling with
    temperature 0.7, top_p 0.8, ...)."""

    greedy: bool | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None


class ReplyGenerator:
    """The reply model's own thread (see the module doc). `submit()` from any thread; `close()` to stop."""

    def __init__(self, reply_model: ReplyModel, sampling: Sampling | None = None,
                 max_batch: int = DEFAULT_MAX_BATCH, gather_s: float = DEFAULT_GATHER_S) -> None:
        self.reply_model = reply_model
        self.max_batch = max(1, max_batch)
        self.gather_s = gather_s
        self.generation_config = _generation_config(reply_model, sampling or Sampling())
        self.batch_sizes: list[int] = []  # every batch's size, in order (tests, bench)
        self._queue: queue.Queue[ReplyJob | None] = queue.Queue()
        self._running: list[ReplyJob] = []  # the batch being generated
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._run, name="higgs-reply-model", daemon=True)
        self._thread.start()

    def submit(self, prompt_ids: list[int], deliver: Deliver, max_new_tokens: int) -> ReplyJob:
        job = ReplyJob(list(prompt_ids), max(1, max_new_tokens), deliver)
        if self._closing.is_set() or not self._thread.is_alive():
            raise RuntimeError("the reply model's thread has stopped")
        self._queue.put(job)
        return job

    def close(self, timeout: float = 10.0) -> None:
        """Stop the thread: the running batch is cancelled, replies still queued end without a token."""
        self._closing.set()
        self._queue.put(None)
        for job in list(self._running):
            job.cancel()
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                break
            jobs = [job]
            until = time.perf_counter() + self.gather_s
            while len(jobs) < self.max_batch:
                try:
                    more = self._queue.get(timeout=max(0.0, until - time.perf_counter()))
                except queue.Empty:
                    break
                if more is None:
                    self._queue.put(None)  # stop after this batch
                    break
                jobs.append(more)
            if self._closing.is_set():
                for queued in jobs:
                    queued.cancel()
            for gone in [j for j in jobs if j.cancelled.is_set()]:
                gone._end()
            jobs = [j for j in jobs if not j.cancelled.is_set()]
            if jobs:
                self._running = jobs
                self._generate(jobs)
                self._running = []
        while not self._queue.empty():  # queued behind the stop: ended, never run
            left = self._queue.get_nowait()
            if left is not None:
                left._end()

    def _generate(self, jobs: list[ReplyJob]) -> None:
        self.batch_sizes.append(len(jobs))
        model = self.reply_model.model
        pad = self.generation_config.pad_token_id
        width = max(len(job.prompt_ids) for job in jobs)
        ids = torch.tensor([[pad] * (width - len(j.prompt_ids)) + j.prompt_ids for j in jobs], dtype=torch.long)
        mask = torch.tensor([[0] * (width - len(j.prompt_ids)) + [1] * len(j.prompt_ids) for j in jobs],
                            dtype=torch.long)
        rows = _Rows(jobs, set(self.reply_model.stop_ids))
        try:
            with torch.inference_mode():
                config = copy.deepcopy(self.generation_config)
                config.max_new_tokens = max(job.max_new_tokens for job in jobs)
                model.generate(input_ids=ids.to(model.device), attention_mask=mask.to(model.device),
                               generation_config=config, streamer=rows, stopping_criteria=StoppingCriteriaList([rows]))
        except Exception as exc:  # noqa: BLE001 - one failed batch fails its replies, not the thread
            log.exception("reply model: a batch of %d failed", len(jobs))
            for job in jobs:
                job._end(exc)
        for job in jobs:
            job._end()


class _Rows(BaseStreamer, StoppingCriteria):
    """Routes each step's tokens to their jobs, and tells `generate()` which rows are finished (end of turn,
    own budget spent, cancelled)."""

    def __init__(self, jobs: list[ReplyJob], stops: set[int]) -> None:
        self.jobs = jobs
        self.stops = stops
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # generate() first hands over the prompt
            self.prompt_seen = True
            return
        for job, token in zip(self.jobs, value.reshape(len(self.jobs), -1)[:, -1].tolist(), strict=True):
            if job.ended:
                continue
            if job.cancelled.is_set() or token in self.stops:
                job._end()
                continue
            job._token(token)
            if job.made >= job.max_new_tokens:
                job._end()

    def end(self) -> None:
        pass

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        done = [job.ended or job.cancelled.is_set() for job in self.jobs]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def _generation_config(reply_model: ReplyModel, sampling: Sampling) -> GenerationConfig:
    config = GenerationConfig.from_dict(reply_model.model.generation_config.to_dict())
    config.max_length = None
    config.eos_token_id = list(reply_model.stop_ids)
    tokenizer = reply_model.tokenizer
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else config.pad_token_id
    config.pad_token_id = pad if pad is not None else reply_model.stop_ids[0]
    if sampling.greedy:
        config.do_sample = False
        config.temperature = config.top_p = config.top_k = None
    else:
        config.do_sample = config.do_sample if sampling.greedy is None else True
        for name in ("temperature", "top_p", "top_k"):
            if getattr(sampling, name) is not None:
                setattr(config, name, getattr(sampling, name))
    return config
