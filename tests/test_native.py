"""The bound on oneDNN's primitive cache takes effect in a fresh process (it is read when torch's first
convolution runs), so a server that hears turns of ever new lengths evicts their one-off primitives."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from higgs_agent.native import ONEDNN_PRIMITIVE_CACHE_CAPACITY

# Convolutions over more distinct lengths than the bound holds, then the first length again: under the bound
# its primitive was evicted (a cache miss); under oneDNN's default of 1024 it is still there (a hit). Each
# length costs about three entries (the convolution and two reorders), so ~900 entries in all.
ONEDNN_DEFAULT_CAPACITY = 1024
SHAPES = 300
SCRIPT = """
import sys
if sys.argv[1] == "bounded":
    from higgs_agent.native import bound_native_caches
    bound_native_caches()
import torch
weight = torch.randn(64, 64, 7)  # big enough that torch hands it to oneDNN
lengths = [1000 + i for i in range({shapes})] + [1000]
for length in lengths:
    torch.nn.functional.conv1d(torch.randn(1, 64, length), weight)
"""


def last_convolution_lookup(mode: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "ONEDNN_PRIMITIVE_CACHE_CAPACITY"}
    env["ONEDNN_VERBOSE"] = "all"
    script = SCRIPT.format(shapes=SHAPES)
    out = subprocess.run([sys.executable, "-c", script, mode], env=env, capture_output=True, text=True,
                         timeout=300, check=True).stdout
    lookups = [line for line in out.splitlines() if ",create:cache_" in line and ",convolution," in line]
    assert len(lookups) == SHAPES + 1, "oneDNN ran another number of convolutions than asked"
    return lookups[-1].split(",")[3]


@pytest.mark.parametrize(("mode", "expected"), [("bounded", "create:cache_miss"), ("default", "create:cache_hit")])
def test_the_primitive_cache_bound_evicts_one_off_shapes(mode: str, expected: str) -> None:
    assert ONEDNN_PRIMITIVE_CACHE_CAPACITY < SHAPES * 2 and SHAPES * 4 < ONEDNN_DEFAULT_CAPACITY + SHAPES
    assert last_convolution_lookup(mode) == expected
