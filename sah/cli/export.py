"""``sah export RUN --chain C [--density X] [--format yaml|json|hub] [--output FILE]``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sah.validation import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="a run folder (results/<run>)")
    parser.add_argument("--chain", required=True, help="chain name (see the run's summary.md)")
    parser.add_argument("--density", type=float, help="lowest-error config with density <= this")
    parser.add_argument("--format", default="yaml", choices=("yaml", "json", "hub"),
                        help="yaml/json: sah layout; hub: the prior hub's JSON layout")
    parser.add_argument("--output", "-o", help="write here instead of printing")


def run(args: argparse.Namespace) -> int:
    from sah.tuning.export import export_text
    from sah.tuning.outputs.files import atomic_write_text
    try:
        text = export_text(Path(args.run), args.chain, args.density, args.format)
    except (ConfigError, FileNotFoundError) as exc:
        print(f"sah export: error: {exc}", file=sys.stderr)
        return 2
    if args.output:
        atomic_write_text(Path(args.output), text)
    else:
        sys.stdout.write(text)
    return 0
