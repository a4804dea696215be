"""Benchmark 2: trial throughput of a study end to end through Ray Tune (issue 7).

Runs a study (default ``configs/default.yaml``) through the real runner
(:func:`sah.tuning.runner.run_study`) into a temporary results folder under a fresh run
name, without progress bars, and prints a markdown table:

- ``wall s``: wall time of the whole study (Ray start-up, recording load, HashAttention
  fitting, the Ray experiments, writing the outputs, Ray shutdown);
- ``ray start s``: time of ``ray.init`` alone (started here, with the runner's own
  :func:`~sah.tuning.ray_setup.init_ray`, just before the study; ``ray.shutdown`` is timed
  after it);
- ``configs``: configurations scored (rows of ``trials.csv``), ``ray trials``: Ray Tune
  trials that scored them (several configurations per Ray trial when batched);
- ``configs/min``: configurations per minute of wall time (``trials per minute`` in the
  issue: one trial = one scored configuration);
- ``eval s``: the sum over configurations of ``eval_seconds``, the time a trial spends
  inside chain evaluation (building the chain, masks, estimator, error; measured in the
  trainable around the evaluation calls; excludes Ray, reporting and worker start-up);
- ``share``: ``eval s / (wall s x slots)``, where ``slots = min(floor(CPUs /
  cpus_per_trial), max_concurrent_trials)`` is how many trials can run at once; 100% means
  every slot was evaluating chains for the whole run. ``share excl. Ray start/stop`` uses
  ``wall s - ray start s - ray stop s`` instead (the issue's "excluding Ray start-up";
  ``ray.shutdown`` waits about 1.4 s for Ray's processes to exit).

A second table splits the wall time into phases (the runner logs them): Ray start-up,
loading the study and recording, the HashAttention fit, each Ray experiment (chain
evaluation happens in there), writing the outputs, and the rest.

Repeats (``--repeats``) give one row each plus a median row. Other processes on the
machine slow both evaluation and overhead; say so when quoting figures taken under load.

    python benchmark/perf_tuning.py                       # the default study
    python benchmark/perf_tuning.py --num-samples 8 --layers 0,9 --batch-size 4
"""

from __future__ import annotations

import argparse
import csv
import logging
import math
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def run_once(args: argparse.Namespace, results_dir: Path, name: str) -> Dict[str, Any]:
    import ray

    from sah.tuning.ray_setup import init_ray
    from sah.tuning.runner import DEFAULT_STUDY, RunOptions, run_study
    from sah.study.parse import load_study

    extra: Dict[str, Any] = {}
    if args.layers:
        extra["layers"] = [int(x) for x in args.layers.split(",")]
    if args.batch_size is not None:
        extra["configs_per_trial"] = args.batch_size
    options = RunOptions(config=args.config, name=name, num_samples=args.num_samples,
                         results_dir=str(results_dir), progress=False, extra=extra)
    study = load_study(options.config or DEFAULT_STUDY, options.overrides())
    cpus = os.cpu_count() or 1
    slots = max(1, math.floor(cpus / study.cpus_per_trial))
    if study.max_concurrent_trials:
        slots = min(slots, study.max_concurrent_trials)

    phases: Dict[str, float] = {}

    class PhaseLog(logging.Handler):  # the runner logs "phase NAME: SECONDS s"
        def emit(self, record: logging.LogRecord) -> None:
            match = re.match(r"phase (.+): ([0-9.]+) s$", record.getMessage())
            if match:
                phases[match.group(1)] = phases.get(match.group(1), 0.0) + float(match.group(2))

    logger = logging.getLogger("sah.tuning")
    handler = PhaseLog(logging.INFO)
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    started = time.perf_counter()
    init_ray(None, 0)  # what the runner would do; timed on its own
    ray_start = time.perf_counter() - started
    try:
        run_dir = run_study(options)
    finally:
        stopping = time.perf_counter()
        ray.shutdown()
        ray_stop = time.perf_counter() - stopping
        logger.removeHandler(handler)
        logger.setLevel(level)
    wall = time.perf_counter() - started
    phases = {"ray start": ray_start, **phases, "ray stop": ray_stop}
    phases["other"] = wall - sum(phases.values())

    with open(run_dir / "trials.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    eval_s = sum(float(r["eval_seconds"]) for r in rows if r.get("eval_seconds"))
    ray_trials = len({(r["chain"], r["trial_id"]) for r in rows})
    return {"wall": wall, "ray_start": ray_start, "configs": len(rows), "ray_trials": ray_trials,
            "failed": sum(r["status"] != "completed" for r in rows),
            "per_min": 60.0 * len(rows) / wall, "eval": eval_s, "slots": slots,
            "share": eval_s / (wall * slots),
            "share_excl": eval_s / ((wall - ray_start - ray_stop) * slots), "phases": phases}


def phase_table(runs: List[Dict[str, Any]]) -> str:
    """Where the wall time went (medians over the runs), in run order."""
    names: List[str] = []
    for r in runs:
        names += [n for n in r["phases"] if n not in names]
    lines = ["| phase | seconds (median) |", "|---|---|"]
    for n in names:
        lines.append(f"| {n} | {statistics.median(r['phases'].get(n, 0.0) for r in runs):.1f} |")
    return "\n".join(lines)


def table(runs: List[Dict[str, Any]]) -> str:
    cols = [("wall s", "wall", "{:.1f}"), ("ray start s", "ray_start", "{:.1f}"),
            ("configs", "configs", "{:d}"), ("ray trials", "ray_trials", "{:d}"),
            ("failed", "failed", "{:d}"), ("configs/min", "per_min", "{:.1f}"),
            ("eval s", "eval", "{:.1f}"), ("slots", "slots", "{:d}"),
            ("share", "share", "{:.0%}"), ("share excl. Ray start/stop", "share_excl", "{:.0%}")]
    lines = ["| run | " + " | ".join(c[0] for c in cols) + " |",
             "|---|" + "---|" * len(cols)]
    shown = list(enumerate(runs, 1))
    if len(runs) > 1:
        median = {k: statistics.median(r[k] for r in runs) for _, k, _ in cols}
        for k in ("configs", "ray_trials", "failed", "slots"):
            median[k] = int(median[k])
        shown.append(("median", median))
    for label, r in shown:
        lines.append(f"| {label} | " + " | ".join(fmt.format(r[k]) for _, k, fmt in cols) + " |")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", help="study file (default: configs/default.yaml)")
    parser.add_argument("--num-samples", type=int, help="override the study's num_samples "
                        "(chains that set their own keep theirs)")
    parser.add_argument("--layers", help="comma-separated layer ids (override the study's)")
    parser.add_argument("--batch-size", type=int,
                        help="configurations per Ray trial (the study's configs_per_trial)")
    parser.add_argument("--repeats", type=int, default=1, help="runs (a median row is added)")
    parser.add_argument("--keep", help="keep the run folders in this folder")
    args = parser.parse_args(argv)
    results = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="sah-perf-tuning-"))
    runs = []
    try:
        for i in range(args.repeats):
            name = f"perf_{time.strftime('%Y%m%d_%H%M%S')}_{os.getpid()}_{i}"
            runs.append(run_once(args, results, name))
            print(table(runs[-1:]).splitlines()[-1].replace("| 1 |", f"| {i + 1} |"),
                  file=sys.stderr, flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(results, ignore_errors=True)
    print(f"study: {args.config or 'configs/default.yaml'}; CPUs: {os.cpu_count()}; "
          f"load average before the last run ended: {os.getloadavg()[0]:.2f}")
    print(table(runs))
    print()
    print(phase_table(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
