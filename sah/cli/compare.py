"""``sah compare RUN [RUN ...] [--format markdown|csv]``: best configs side by side."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sah.validation import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", help="run folders (results/<run>)")
    parser.add_argument("--format", default="markdown", choices=("markdown", "csv"))


def run(args: argparse.Namespace) -> int:
    from sah.tuning.compare import compare_text
    try:
        sys.stdout.write(compare_text([Path(r) for r in args.runs], args.format))
    except (ConfigError, FileNotFoundError) as exc:
        print(f"sah compare: error: {exc}", file=sys.stderr)
        return 2
    return 0
