"""`sah inspect RECORDING`: summary table and per-layer attention statistics."""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recording", help="a recording file (.safetensors) or an embedded recording "
                                          "name (default, docs, code, prose, docs-8192, prose@4096...; "
                                          "made on first use)")
    parser.add_argument("--edge-keys", type=int, default=128,
                        help="keys counted as the first/last block (default 128)")
    parser.add_argument("--top-fraction", type=float, default=0.05,
                        help="fraction of keys counted as the top keys (default 0.05)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    from sah.recording.inspect import format_summary, summarize

    if args.edge_keys < 1:
        raise ValueError(f"--edge-keys must be >= 1; got {args.edge_keys}")
    if not 0.0 < args.top_fraction <= 1.0:
        raise ValueError(f"--top-fraction must be in (0, 1]; got {args.top_fraction}")
    from sah.recording.embedded import resolve_recording
    path = resolve_recording(args.recording, "recording")
    info = summarize(path, edge_keys=args.edge_keys, top_fraction=args.top_fraction)
    print(json.dumps(info, indent=2) if args.json else format_summary(info))
    return 0
