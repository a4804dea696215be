"""Mask Resource Calculator (the seed's command, same flags, same analysis lines).

    python benchmark/mask_resource_calculator.py --mask_size 4096 --num_multiplications 256 \
        --window_size 64 --stride 64 --read_limit 300 [--zigzag]

Analyses the normal, strided and fixed masks with the greedy schedule of
spec/RESOURCES.md and prints, for each, the seed's lines (``--- Normal Mask ---``,
``Total Calculation Points: N``, ...). ``--write_text`` writes the seed's text files into
``generated/`` (or ``--output_dir``); ``--json PATH`` writes every figure as JSON.

Only numpy is imported (not torch): ``sah`` loads its names lazily, and the analysis
modules use numpy alone.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _import_light():
    """``sah.resources`` needs numpy only, and ``import sah`` loads nothing heavy."""
    sys.path.insert(0, str(REPO))
    from sah.resources import calculator as resources, text as resources_text
    return resources, resources_text


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Calculate mask resources for sparse matrix multiplications.")
    p.add_argument("--mask_size", type=int, default=1024, help="Size of the square mask matrix (default: 1024)")
    p.add_argument("--num_multiplications", type=int, default=64,
                   help="Total number of simultaneous multiplications (default: 64)")
    p.add_argument("--window_size", type=int, default=32,
                   help="Size of the local attention window for strided/fixed masks (default: 32)")
    p.add_argument("--stride", type=int, default=32, help="Stride for strided attention (default: 32)")
    p.add_argument("--read_limit", type=int, default=1000,
                   help="Most distinct rows + columns held in one step (default: 1000)")
    p.add_argument("--zigzag", action="store_true",
                   help="Enable zigzag pattern for column sorting in odd rows (default: False)")
    p.add_argument("--order", choices=("row_first", "column_first"), default="row_first",
                   help="Walk the points row-first (seed) or column-first (the transpose)")
    p.add_argument("--write_text", action="store_true",
                   help="Write the seed's schedule and analysis text files (default: off)")
    p.add_argument("--output_dir", default="generated", help="Folder for --write_text (default: generated)")
    p.add_argument("--json", metavar="PATH", help="Write every figure of the three masks as JSON")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    resources, resources_text = _import_light()
    try:
        resources.check_analysis_parameters(
            num_multiplications=args.num_multiplications, read_limit=args.read_limit,
            size=args.mask_size, window_size=args.window_size, stride=args.stride)
        for name in resources.SEED_PATTERNS:  # refuse what would not fit in memory, up front
            resources.check_pattern_memory(name, args.mask_size, args.window_size, args.stride,
                                           num_multiplications=args.num_multiplications,
                                           read_limit=args.read_limit, order=args.order)
    except ValueError as exc:
        print(f"mask_resource_calculator.py: error: {exc}", file=sys.stderr)
        return 2
    documents = []
    for name in resources.SEED_PATTERNS:
        analysis = resources.analyse_pattern(
            name, args.mask_size, args.num_multiplications, args.read_limit,
            window_size=args.window_size, stride=args.stride, order=args.order, zigzag=args.zigzag)
        print("\n".join(analysis.seed_lines()))
        if args.write_text:
            for path in resources_text.write_text_outputs(analysis, args.output_dir):
                print(f"Wrote {path}")
        documents.append(analysis.to_dict())
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"masks": documents}, indent=2))
        print(f"Wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
