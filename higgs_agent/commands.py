"""What the model-loading commands share: the bundle and the sampling settings named on the command line."""

from __future__ import annotations

import argparse
import sys

from higgs_agent.model import HiggsBundle, ModelLoadError, load_higgs
from higgs_agent.model.sampling import SamplingSettings


def sampling_settings(args: argparse.Namespace) -> SamplingSettings:
    return SamplingSettings(greedy=args.greedy, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                            max_frames=args.max_frames, seed=args.seed)


def load_bundle(args: argparse.Namespace, use_text_head: bool = False) -> HiggsBundle:
    """The model named by --model/--codec/--device/--dtype/--threads, or exit 2 with the loader's advice."""
    try:
        return load_higgs(args.model, codec=args.codec, device=args.device, dtype=args.dtype, threads=args.threads,
                          use_text_head=use_text_head)
    except (ModelLoadError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc
