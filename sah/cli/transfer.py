"""``sah transfer RUN_DIR --recording R [--recording R2 ...] [--format markdown|csv]``:
re-score a run's tuned configs (best and density-target picks) on other recordings."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sah.recording.format import RecordingError
from sah.infra.checks import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="a run folder (results/<run>)")
    parser.add_argument("--recording", action="append", required=True, metavar="R",
                        help="recording to score on: an embedded name (docs-8192, code, "
                             "prose@4096, ...) or a file; repeat for several")
    parser.add_argument("--format", default="markdown", choices=("markdown", "csv"))
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--partial", action="store_true",
                        help="allow a run that did not finish: its picks come from the trials "
                             "that finished (chains without one are named and left out)")


def run(args: argparse.Namespace) -> int:
    from sah.runs.transfer import transfer, transfer_text
    try:
        result = transfer(Path(args.run), args.recording, progress=not args.quiet,
                          partial=args.partial)
    except (ConfigError, RecordingError, FileNotFoundError) as exc:
        print(f"sah transfer: error: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(transfer_text(result, args.format))
    return 0
