"""``sah compare RUN [RUN ...] [--format markdown|csv] [--plot FILE.png]``: the best configs
of several runs, chains as rows and runs as columns, and their Pareto fronts on one plot."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sah.infra.checks import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", help="run folders (results/<run>)")
    parser.add_argument("--format", default="markdown", choices=("markdown", "csv"))
    parser.add_argument("--plot", metavar="FILE", help="also draw the runs' Pareto fronts on one "
                                                       "plot (PNG)")


def run(args: argparse.Namespace) -> int:
    from sah.cli import os_error_line
    from sah.runs.compare import compare_text, plot_fronts
    from sah.infra.files import atomic_write_bytes
    runs = [Path(r) for r in args.runs]
    plot = Path(args.plot) if args.plot else None
    if plot is not None and plot.is_dir():
        print(f"sah compare: error: --plot {plot}: is a folder; give a file name, e.g. "
              f"{plot / 'compare.png'}", file=sys.stderr)
        return 2
    try:
        text = compare_text(runs, args.format)
        if plot is not None:
            atomic_write_bytes(plot, plot_fronts(runs))
    except (ConfigError, FileNotFoundError) as exc:
        print(f"sah compare: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"sah compare: error: {os_error_line(exc)}", file=sys.stderr)
        return 2
    sys.stdout.write(text)
    if plot is not None:
        print(f"wrote {plot}", file=sys.stderr)
    return 0
