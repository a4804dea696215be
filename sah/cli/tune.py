"""``sah tune`` (and ``benchmark/run_optimize_configs.py``): run a Ray Tune study."""

from __future__ import annotations

import argparse
import sys

from sah.cli import INTERRUPTED, os_error_line
from sah.recording.format import RecordingError
from sah.infra.checks import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML study file (default: configs/default.yaml)")
    parser.add_argument("--name", help="run name: results go to RESULTS_DIR/NAME (default: the study's name)")
    parser.add_argument("--searcher", choices=("grid", "random", "optuna"), help="override the study's searcher")
    parser.add_argument("--num-samples", type=int,
                        help="samples per chain (random and optuna searchers; a grid domain "
                             "runs all its values for each sample); wins over the study's and "
                             "the chains' own num_samples")
    parser.add_argument("--seed", type=int, help="seed of the searchers (reruns are reproducible)")
    parser.add_argument("--configs-per-trial", type=int,
                        help="configurations one Ray trial scores (grid/random chains; default 8)")
    parser.add_argument("--cpus-per-trial", type=float, help="CPUs per trial (also torch threads)")
    parser.add_argument("--gpus-per-trial", type=float, help="GPUs (or a fraction) per trial")
    parser.add_argument("--address", help="join an existing Ray cluster ('auto' or HOST:PORT of its "
                        "head) instead of starting a private local one")
    parser.add_argument("--storage-path", help="where Ray Tune keeps experiment state: a folder every "
                        "node reaches or a URI (s3://...); default: the run folder (study key storage_path)")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run (Tuner.restore)")
    parser.add_argument("--results-dir", default="results", help="folder of run folders (default: results)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--max-configurations", type=int,
                        help="refuse studies expanding to more configurations (default 100000)")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="let HashAttention load .pkl weight files (unpickling runs code: "
                             "only for files you trust); also SAH_ALLOW_PICKLE=1")


def run(args: argparse.Namespace) -> int:
    from sah.tuning.runner import RunInterrupted, RunOptions, run_study
    if args.quiet:  # a failed trial is in trials.csv (error_message) and the summary; Ray
        # Tune would also log its full traceback (e.g. a worker killed by the OS)
        import os
        os.environ.setdefault("TUNE_PRINT_ALL_TRIAL_ERRORS", "0")
    options = RunOptions(config=args.config, name=args.name, searcher=args.searcher,
                         num_samples=args.num_samples, seed=args.seed,
                         cpus_per_trial=args.cpus_per_trial, gpus_per_trial=args.gpus_per_trial,
                         address=args.address, storage_path=args.storage_path,
                         resume=args.resume, results_dir=args.results_dir,
                         progress=not args.quiet, allow_pickle=args.allow_pickle,
                         extra={"configs_per_trial": args.configs_per_trial,
                                "max_configurations": args.max_configurations})
    try:
        run_dir = run_study(options)
    except (ConfigError, RecordingError, FileExistsError, FileNotFoundError, ConnectionError) as exc:
        print(f"sah tune: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"sah tune: error: {os_error_line(exc)}", file=sys.stderr)
        return 2
    except RunInterrupted as exc:
        from sah.tuning.signals import install_interrupt_sentinel
        install_interrupt_sentinel()  # a further Ctrl-C while Ray shuts down: exit 130 at once
        print(f"sah tune: {exc}", file=sys.stderr)
        return INTERRUPTED
    except KeyboardInterrupt:
        # a Ctrl-C outside Ray Tune's graceful stop; another one while Ray shuts down (at
        # exit) must not print a traceback either: it exits at once with the same status
        from sah.tuning.signals import install_interrupt_sentinel
        install_interrupt_sentinel()
        print("sah tune: interrupted (Ctrl-C); finished trials are kept; continue with --resume",
              file=sys.stderr)
        return INTERRUPTED
    print(f"run finished: {run_dir}")
    summary = run_dir / "summary.md"
    if summary.is_file():
        print(summary.read_text())
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="run_optimize_configs.py",
                                     description="Tune sparse attention chains with Ray Tune")
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except KeyboardInterrupt:  # a Ctrl-C before the run's own handling starts
        print("run_optimize_configs.py: interrupted", file=sys.stderr)
        return INTERRUPTED
