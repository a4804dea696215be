"""Sparse Transformer attention masks (the seed's command, same flags).

    python benchmark/sparse_transformer_mask.py --size 1024 --window_size 32 --stride 32 \
        [--sample_size 128 | --full_png] [--no_graphic] [--order row_first] [--skip_pattern_print]

Prints the non-zero elements of the five patterns (unless ``--skip_pattern_print``) and
the seed's sparsity lines; without ``--no_graphic`` writes the PNG figures (one per
pattern and the side-by-side comparison) into ``--output_dir`` (default
``generated/patterns``). Same as ``sah patterns``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sah.cli.patterns import add_arguments, run_patterns  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Sparse Transformer Attention Mask Implementation")
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run_patterns(args)
    except ValueError as exc:
        print(f"sparse_transformer_mask.py: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
