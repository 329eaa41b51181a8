"""A KV cache with a fixed number of slots, one per stream, so one forward can serve many streams.

Each layer holds K and V buffers of shape (slots, kv_heads, capacity, head_dim). A stream owns one slot
and its `length` (tokens cached). A forward gets a `SlotCacheView` for the slots it runs; the model calls
only `view.update(k, v, layer_idx)` (see `HiggsAudioV2Attention.forward`), which writes the new K/V at each
row's own position and returns the slots' buffers up to the longest row. Shorter rows see padding there;
`attention_mask` hides it (probability exactly 0), and since buffers start at zero and only ever hold real
K/V, hidden positions are finite, so 0 x value adds exactly nothing: padding does not change results. (A
stream that failed may have left NaN there: the scheduler `wipe`s its slot, as 0 x NaN is NaN.)

The mask is additive, in the model's dtype (0 visible, the dtype's minimum hidden): transformers' eager
attention adds the mask to the scores and SDPA accepts the same float mask, so both are right. (A bool
mask is right only for SDPA: eager would add it as 0/1 and hide nothing.)

When every row starts at the same position no mask is passed and transformers builds its own (none at all
for a lone stream), exactly as `generate` does for a batch of one; the view answers the two questions mask
creation asks (`get_query_offset`, `get_mask_sizes`).
"""

from __future__ import annotations

import torch


def _head_dim(config) -> int:  # noqa: ANN001 - HiggsAudioV2Config
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


class SlotKVCache:
    """Per-layer K/V buffers for `slots` streams. The token capacity grows lazily (doubling, capped at the
    model's `max_position_embeddings`) so a CPU run does not preallocate the whole context up front."""

    def __init__(self, config, slots: int, dtype: torch.dtype, device: torch.device,  # noqa: ANN001
                 initial_capacity: int = 256) -> None:
        if slots < 1:
            raise ValueError("slots must be >= 1")
        self.slots = slots
        self.max_capacity = int(config.max_position_embeddings)
        self.capacity = min(initial_capacity, self.max_capacity)
        shape = (slots, config.num_key_value_heads, self.capacity, _head_dim(config))
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.num_hidden_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.num_hidden_layers)]
        self.lengths = [0] * slots

    def reserve(self, tokens: int) -> None:
        """Make room for `tokens` positions per slot (copying what is cached into bigger buffers)."""
        if tokens <= self.capacity:
            return
        if tokens > self.max_capacity:
            raise ValueError(f"{tokens} tokens exceed the model's context of {self.max_capacity}")
        capacity = self.capacity
        while capacity < tokens:
            capacity = min(2 * capacity, self.max_capacity)
        # Every new buffer first, then the swap: running out of memory half way leaves the cache as it was
        # (not some layers grown and others not, which would break every later forward).
        grown = [[self._grown(old, capacity) for old in buffers] for buffers in (self.keys, self.values)]
        self.keys, self.values = grown
        self.capacity = capacity

    def _grown(self, old: torch.Tensor, capacity: int) -> torch.Tensor:
        new = old.new_zeros(*old.shape[:2], capacity, old.shape[3])
        new[:, :, :self.capacity] = old
        return new

    def clear(self, slot: int) -> None:
        """Forget a slot's tokens. The stale K/V stay (finite, never visible: the next owner overwrites
        each position before any query may see it)."""
        self.lengths[slot] = 0

    def wipe(self, slot: int) -> None:
        """Forget a slot's tokens and zero its K/V: for a stream that failed, whose K/V may be NaN (hidden
        positions get weight 0, but 0 x NaN is NaN, so the next owner would read garbage)."""
        for buffers in (self.keys, self.values):
            for buf in buffers:
                buf[slot].zero_()
        self.lengths[slot] = 0

    def move(self, src: int, dst: int) -> None:
        """Swap two slots' contents (keeps decoding slots a contiguous range, so forwards read views)."""
        if src == dst:
            return
        span = max(self.lengths[src], self.lengths[dst])
        pair, swapped = [src, dst], [dst, src]
        for buffers in (self.keys, self.values):
            for buf in buffers:
                buf[pair, :, :span] = buf[swapped, :, :span]  # the right side is a copy: a safe swap
        self.lengths[src], self.lengths[dst] = self.lengths[dst], self.lengths[src]

    def view(self, first: int, starts: list[int], q_len: int) -> SlotCacheView:
        """A cache for one forward over slots `first .. first + len(starts) - 1`, row b writing `q_len`
        tokens from position `starts[b]` (which must be the slot's current length)."""
        for b, start in enumerate(starts):
            if self.lengths[first + b] != start:
                raise RuntimeError(f"slot {first + b} holds {self.lengths[first + b]} tokens, not {start}")
        self.reserve(max(starts) + q_len)
        return SlotCacheView(self, first, starts, q_len)


class SlotCacheView:
    """What the model sees as `cache` for one forward (duck-typed: the model only calls
    `update`; mask creation asks `get_query_offset`/`get_mask_sizes` when no mask is passed)."""

    is_compileable = False

    def __init__(self, cache: SlotKVCache, first: int, starts: list[int], q_len: int) -> None:
        self.cache = cache
        self.rows = slice(first, first + len(starts))
        self.starts = starts
        self.q_len = q_len
        self.kv_len = max(starts) + q_len
        self.uniform = all(s == starts[0] for s in starts)
        device = cache.keys[0].device
        self._row_index = torch.arange(first, first + len(starts), device=device)
        self._pos_index = torch.tensor(starts, device=device)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int,
               *args: object, **kwargs: object) -> tuple[torch.Tensor, torch.Tensor]:
        keys, values = self.cache.keys[layer_idx], self.cache.values[layer_idx]
        if self.uniform:
            at = slice(self.starts[0], self.starts[0] + self.q_len)
            keys[self.rows, :, at] = key_states
            values[self.rows, :, at] = value_states
        else:  # ragged rows decode one token each
            if self.q_len != 1:
                raise ValueError("rows at different positions must each add one token")
            keys[self._row_index, :, self._pos_index] = key_states[:, :, 0]
            values[self._row_index, :, self._pos_index] = value_states[:, :, 0]
        return keys[self.rows, :, :self.kv_len], values[self.rows, :, :self.kv_len]

    def commit(self) -> None:
        """Book the written tokens (after the forward succeeded)."""
        for b, start in enumerate(self.starts):
            self.cache.lengths[self.rows.start + b] = start + self.q_len

    # Asked by transformers' mask creation when no 4-D mask is given (only when rows start together).
    def get_query_offset(self, layer_idx: int = 0) -> int:
        return self.starts[0]

    def get_mask_sizes(self, query_length: int, layer_idx: int = 0) -> tuple[int, int]:
        return self.kv_len, 0

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.starts[0]

    def attention_mask(self) -> torch.Tensor | None:
        """(B, 1, q, L) additive, in the cache's dtype: 0 where key j is visible to query i of row b (j <=
        start_b + i), the dtype's minimum elsewhere (exp underflows to exactly 0; no -inf, so no NaN). None
        when all rows start together (transformers then builds the same causal mask itself, or none for a
        lone row)."""
        if self.uniform:
            return None
        device, dtype = self._pos_index.device, self.cache.keys[0].dtype
        keys = torch.arange(self.kv_len, device=device)
        limit = self._pos_index[:, None] + torch.arange(self.q_len, device=device)[None]  # (B, q)
        hidden = (keys[None, None, :] > limit[:, :, None])[:, None]
        return torch.zeros(hidden.shape, dtype=dtype, device=device).masked_fill(hidden, torch.finfo(dtype).min)

    def position_ids(self) -> torch.Tensor:
        """(B, q): start_b + i."""
        return self._pos_index[:, None] + torch.arange(self.q_len, device=self._pos_index.device)[None]
