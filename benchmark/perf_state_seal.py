"""What signing Ray Tune's state costs (:mod:`sah.tuning.state_seal`): an experiment folder
laid out like Ray's (per trial: params.json, params.pkl, result.json, progress.csv, an
events file; at the top the experiment and searcher state), with sizes taken from a real
run, for several trial counts. Prints the median of 5 of: a first signature (every file
read), a signature again with nothing changed (what the run does about once a second: a
stat per file), and the check ``--resume`` makes (every file read).

    python3 benchmark/perf_state_seal.py
"""

import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sah.tuning.state_seal import SealCallback, check_sealed  # noqa: E402

TRIAL_FILES = {"params.json": 339, "params.pkl": 176, "result.json": 2913,
               "progress.csv": 2555, "events.out.tfevents.1.vm": 1264}


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(ln.split(":", 1)[1].strip() for ln in out.splitlines()
                    if ln.startswith("Model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown"


def make_experiment(root: Path, trials: int) -> Path:
    exp = root / "ray" / "_batched"
    exp.mkdir(parents=True)
    (exp / "experiment_state-x.json").write_bytes(os.urandom(8500 * trials))
    (exp / "basic-variant-state-x.json").write_bytes(os.urandom(8248))
    (exp / "tuner.pkl").write_bytes(os.urandom(20000))
    for i in range(trials):
        folder = exp / f"trial_{i:05d}"
        folder.mkdir()
        for name, size in TRIAL_FILES.items():
            (folder / name).write_bytes(os.urandom(size))
    return exp


def median_ms(fn, repeat=5) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> None:
    print(f"CPU: {cpu_model()}; Python {platform.python_version()}")
    print("| trials | files | first signature (ms) | again, unchanged (ms) | check on --resume (ms) |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["SAH_CACHE_DIR"] = str(Path(tmp) / "cache")
        for trials in (16, 100, 1000):
            run_dir = Path(tmp) / f"run{trials}"
            exp = make_experiment(run_dir, trials)
            files = 3 + 5 * trials
            first = median_ms(lambda: SealCallback(run_dir, "_batched", str(exp)).seal_now())
            warm = SealCallback(run_dir, "_batched", str(exp))
            warm.seal_now()
            again = median_ms(warm.seal_now)
            check = median_ms(lambda: check_sealed(run_dir, [("_batched", str(exp))]))
            print(f"| {trials} | {files} | {first:.1f} | {again:.1f} | {check:.1f} |")


if __name__ == "__main__":
    main()
