"""``sah export RUN --chain C [--density X] [--format yaml|json|hub] [--output FILE]``.

With ``-o FILE`` a config that needs weights (HashAttention) is written with them next to it
(``<FILE stem>.<name>.safetensors``, named relative to the config); such a config is not
printed (a printed config could only point into the run folder)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sah.infra.checks import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="a run folder (results/<run>)")
    parser.add_argument("--chain", required=True, help="chain name (see the run's summary.md)")
    parser.add_argument("--density", type=float, help="lowest-error config with density <= this")
    parser.add_argument("--format", default="yaml", choices=("yaml", "json", "hub"),
                        help="yaml/json: sah layout; hub: the prior hub's JSON layout")
    parser.add_argument("--output", "-o", help="write here (a file) instead of printing (weight "
                        "files the config needs are written next to it)")


def run(args: argparse.Namespace) -> int:
    from sah.cli import os_error_line
    from sah.runs.export import export_text, export_to_file
    output = Path(args.output) if args.output else None
    if output is not None and output.is_dir():
        print(f"sah export: error: --output {output}: is a folder; give a file name, e.g. "
              f"{output / (args.chain + '.' + ('yaml' if args.format == 'yaml' else 'json'))}",
              file=sys.stderr)
        return 2
    try:
        if output is not None:
            written = export_to_file(Path(args.run), args.chain, output, args.density, args.format)
        else:
            sys.stdout.write(export_text(Path(args.run), args.chain, args.density, args.format))
            return 0
    except (ConfigError, FileNotFoundError) as exc:
        print(f"sah export: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"sah export: error: {os_error_line(exc)}", file=sys.stderr)
        return 2
    print(f"sah export: wrote {written[0]}", file=sys.stderr)
    for path in written[1:]:
        print(f"sah export: wrote {path} (weights the config names; keep it next to the config)",
              file=sys.stderr)
    return 0
