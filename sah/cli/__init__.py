"""The ``sah`` console script: a thin dispatcher over subcommand modules.

Every subcommand lives in its own module of this package (``sah/cli/<command>.py``), which
defines ``add_arguments(parser)`` and ``run(args) -> int``; modules are imported only when
their subcommand runs, so ``sah --help`` stays fast and the core never imports Ray. The
library (``sah`` outside this package) never imports from here.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import sys
from typing import List, Optional

# subcommand -> (module, one-line help)
SUBCOMMANDS = {
    "record": ("sah.cli.record", "record Q, K, V from a Hugging Face causal LM"),
    "inspect": ("sah.cli.inspect", "summarise a recording"),
    "resources": ("sah.cli.resources", "mask resource analysis of a pattern, tuned chain or saved mask"),
    "patterns": ("sah.cli.patterns", "draw structured patterns and tuned chains' masks"),
    "tune": ("sah.cli.tune", "run a Ray Tune study (same as benchmark/run_optimize_configs.py)"),
    "compare": ("sah.cli.compare", "compare the best configs of several runs"),
    "export": ("sah.cli.export", "export a tuned config from a run"),
    "transfer": ("sah.cli.transfer", "re-score a run's tuned configs on other recordings"),
    "validate": ("sah.cli.validate", "run chain configs inside the model against dense attention"),
    "allocate": ("sah.cli.allocate", "spend one density across a run chain's layers or heads"),
    "speed": ("sah.cli.speed", "time a chain config's decoding call against dense attention"),
}


INTERRUPTED = 130  # the shell's exit status for a Ctrl-C


def os_error_line(exc: OSError) -> str:
    """One line for an operating-system error: what failed, on which file, and the fix."""
    where = f" {exc.filename}" if exc.filename else ""
    what = exc.strerror or str(exc)
    if exc.errno == errno.ENOSPC:
        return (f"no space left on the device while writing{where}; nothing was half-written "
                f"(files are replaced whole); free some space and run again (sah tune: "
                f"--resume keeps every finished trial)")
    if exc.errno == errno.ENAMETOOLONG:
        return f"{what}:{where}; use a shorter --name or --results-dir"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"{what}:{where}; pick a location you can write to"
    return f"{what}:{where}" if where else what


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="sah", description="Sparse attention hyperparameter search")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in SUBCOMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in SUBCOMMANDS:
        args = parser.parse_args(argv)  # prints help or the error for an unknown command
        parser.print_help()
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    name = argv[0]
    module = importlib.import_module(SUBCOMMANDS[name][0])
    cmd_parser = argparse.ArgumentParser(prog=f"sah {name}", description=SUBCOMMANDS[name][1])
    module.add_arguments(cmd_parser)
    args = cmd_parser.parse_args(argv[1:])
    try:
        return int(module.run(args) or 0)
    except (ValueError, FileNotFoundError, FileExistsError) as exc:
        print(f"sah {name}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"sah {name}: error: {os_error_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"sah {name}: interrupted", file=sys.stderr)
        return INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
