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
    parser.add_argument("--output", "-o", help="write here (a file) instead of printing")


def run(args: argparse.Namespace) -> int:
    from sah.cli import os_error_line
    from sah.tuning.export import export_text
    from sah.tuning.outputs.files import atomic_write_text
    output = Path(args.output) if args.output else None
    if output is not None and output.is_dir():
        print(f"sah export: error: --output {output}: is a folder; give a file name, e.g. "
              f"{output / (args.chain + '.' + ('yaml' if args.format == 'yaml' else 'json'))}",
              file=sys.stderr)
        return 2
    try:
        text = export_text(Path(args.run), args.chain, args.density, args.format)
        if output is not None:
            atomic_write_text(output, text)
        else:
            sys.stdout.write(text)
    except (ConfigError, FileNotFoundError) as exc:
        print(f"sah export: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"sah export: error: {os_error_line(exc)}", file=sys.stderr)
        return 2
    return 0
