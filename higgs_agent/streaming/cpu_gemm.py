"""CPU only: pre-packed MKL weights for the batched decode's skinny matrix products.

A decode step multiplies a few rows (one per stream) by every weight matrix. MKL's ordinary sgemm repacks
the weight matrix on every call, so on one core 8 rows cost ~3x one row (mini model, 2048x512: 0.64 ms
vs 0.23 ms) although the work is memory-bound. With the weights packed once (`cblas_sgemm_pack`, exposed
by torch as `mkl::_mkl_reorder_linear_weight` / `mkl::_mkl_linear`), 8 rows cost ~1.15x one row.

A packed matrix serves one row count, so batches are padded to a bucket (8, 16, ...: at these sizes a
padded row is nearly free) and each bucket holds one packed copy of the linear weights (built lazily; the
mini model's are ~140 MB each). Only batched decode forwards (>= 3 rows) take this path, and only on the
thread that asked for it: a lone stream, prompts and anything else using the model (`generate`) run the
ordinary kernels, so a lone stream still equals `generate` bit for bit.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import types
from collections.abc import Iterator

import torch
from torch import nn
from torch.nn import functional as F

log = logging.getLogger(__name__)

BUCKET = 8  # rows per packed bucket step
MIN_ROWS = 3  # fewer rows run faster unpacked (2 rows cost about what 1 does; a padded bucket ~1.15x)
MAX_PACKED_BYTES = 2 << 30  # skip packing when one packed copy of the weights would exceed this


def available(model: nn.Module) -> bool:
    """Packing applies to float32 models on a CPU with MKL."""
    parameter = next(model.parameters())
    return (parameter.device.type == "cpu" and parameter.dtype == torch.float32
            and torch.backends.mkl.is_available() and hasattr(torch.ops.mkl, "_mkl_linear"))


def decode_linears(model: nn.Module) -> list[nn.Linear]:
    """The linears an audio decode step runs: the decoder layers' and the audio head (not, say, a text
    head that only some callers use)."""
    layers = [m for m in model.model.layers.modules() if isinstance(m, nn.Linear)]
    return layers + [model.audio_lm_head]


class PackedLinears:
    """Routes the model's `nn.Linear` calls to packed weights inside `with packed.rows(n):` on this thread.
    One per model (`for_model`): the routing forward is installed once on each linear module."""

    def __init__(self, model: nn.Module) -> None:
        self.linears = decode_linears(model)
        self.bytes = sum(m.weight.numel() * m.weight.element_size() for m in self.linears)
        self.enabled = available(model) and self.bytes <= MAX_PACKED_BYTES
        # (id(module), bucket) -> (the weight's (data_ptr, _version) when packed, the packed copy)
        self._packs: dict[tuple[int, int], tuple[tuple[int, int], torch.Tensor]] = {}
        self._pack_lock = threading.Lock()
        self._local = threading.local()
        if self.enabled:
            for module in self.linears:
                # An instance attribute shadowing nn.Linear.forward, bound to the module so that a deep copy
                # of the model routes to the copy's own weights.
                module.forward = types.MethodType(self._router(), module)
        else:
            log.info("packed CPU weights off (device/dtype/MKL, or %.1f GB of weights)", self.bytes / 1e9)

    @classmethod
    def for_model(cls, model: nn.Module) -> PackedLinears:
        existing = getattr(model, "_higgs_packed_linears", None)
        if existing is None:
            existing = cls(model)
            model._higgs_packed_linears = existing  # noqa: SLF001 - one router per model object
        return existing

    def __deepcopy__(self, memo: dict) -> PackedLinears:
        # Packed copies are opaque tensors that cannot be copied; shared, they still serve a copied model's
        # linears (each module is packed on its own, keyed and validated by its weight).
        return self

    @contextlib.contextmanager
    def rows(self, count: int) -> Iterator[None]:
        """Inside, linears whose input has <= the bucket's rows use the packed weights (this thread only)."""
        bucket = -(-count // BUCKET) * BUCKET if self.enabled and count >= MIN_ROWS else 0
        previous = getattr(self._local, "bucket", 0)
        self._local.bucket = bucket
        try:
            yield
        finally:
            self._local.bucket = previous

    def _router(self):  # noqa: ANN202 - a forward, to bind to each linear
        def forward(module: nn.Linear, x: torch.Tensor) -> torch.Tensor:
            bucket = getattr(self._local, "bucket", 0)
            rows = x.numel() // x.shape[-1] if x.numel() else 0
            if not bucket or rows > bucket or rows < MIN_ROWS:
                return F.linear(x, module.weight, module.bias)
            flat = x.reshape(rows, x.shape[-1])
            if rows < bucket:  # pad via this thread's buffer: spare rows hold old inputs, whose outputs are dropped
                padded = self._padding(bucket, flat.shape[1], flat.dtype)
                padded[:rows].copy_(flat)
                flat = padded
            out = torch.ops.mkl._mkl_linear(flat, self._pack(module, bucket), module.weight, module.bias, bucket)
            return out[:rows].view(*x.shape[:-1], out.shape[-1])
        return forward

    def _padding(self, bucket: int, features: int, dtype: torch.dtype) -> torch.Tensor:
        buffers = self._local.__dict__.setdefault("padding", {})
        key = (bucket, features, dtype)
        if key not in buffers:
            buffers[key] = torch.zeros(bucket, features, dtype=dtype)
        return buffers[key]

    def _pack(self, module: nn.Linear, bucket: int) -> torch.Tensor:
        # Validated on every call: a weight changed in place (load_state_dict, a LoRA merge) bumps its version
        # counter, and a replaced one has new storage; either way the packed copy is stale.
        key, weight = (id(module), bucket), module.weight
        stamp = (weight.data_ptr(), _version(weight))
        entry = self._packs.get(key)
        if entry is None or entry[0] != stamp:
            with self._pack_lock, torch.inference_mode():
                entry = self._packs.get(key)
                if entry is None or entry[0] != stamp:
                    entry = (stamp, torch.ops.mkl._mkl_reorder_linear_weight(weight.detach(), bucket))
                    self._packs[key] = entry
        return entry[1]


def _version(tensor: torch.Tensor) -> int:
    """The in-place version counter (an inference tensor has none: it cannot change in place outside
    inference mode, so 0 stands)."""
    try:
        return tensor._version
    except RuntimeError:
        return 0
