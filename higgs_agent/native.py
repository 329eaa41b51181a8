"""Bounds on native caches that Python never sees, set before torch starts.

oneDNN (torch's CPU convolutions) caches a compiled primitive per convolution *shape*, 1024 by default. The
codec sees a new shape with every clip it encodes (each user turn has its own length), so on a busy server the
cache fills with one-off primitives and the process grows with the number of turns it has heard: 480 encodes
of 2-8 s clips grew a process 876 -> 1010 MB and rising with the default, 874 -> 920 MB levelling off with 512,
824 -> 874 MB with 256 (RSS after 80 and after 480). The codec decoder's own working set (every streaming chunk
length x every convolution, with their reorders) is 217 primitives; a cache smaller than that thrashes
(capacity 128: a 10 s streamed decode 346 ms against 241 ms). 512 keeps the decoder's set resident while a
turn's encode adds its one-off shapes, and bounds the rest.
"""

from __future__ import annotations

import os

ONEDNN_PRIMITIVE_CACHE_CAPACITY = 512


def bound_native_caches() -> None:
    """Set the bounds for this process (a value already in the environment wins). oneDNN reads them when its
    cache is first made, so call this before the first convolution runs, best before torch is imported."""
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", str(ONEDNN_PRIMITIVE_CACHE_CAPACITY))
