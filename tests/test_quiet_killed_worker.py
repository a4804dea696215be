"""A Ray worker killed during a run (e.g. by the OS for memory) fails its batch, the run
goes on and exits 0; with ``--quiet`` Ray Tune does not print the failure's traceback (the
failed rows and their error are in trials.csv)."""

import time

import psutil
import pytest

from run_folder_support import finished_batches, launch, write_study, wait_for

pytestmark = pytest.mark.slow


def trial_workers(pid):
    """The Ray worker processes under the run's process that are running a trial."""
    found = []
    for child in psutil.Process(pid).children(recursive=True):
        try:
            title = " ".join(child.cmdline())
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if title.startswith("ray::ImplicitFunc.train"):  # a function trainable, mid-trial
            found.append(child)
    return found


def test_a_killed_worker_fails_its_batch_without_a_traceback_under_quiet(tmp_path):
    import csv
    study = write_study(tmp_path, name="killworker")
    results = tmp_path / "results"
    run_dir = results / "killworker"
    proc = launch(study, results)
    wait_for(proc, lambda: finished_batches(run_dir / "ray" / "_batched") >= 1)
    deadline = time.time() + 120
    workers = []
    while time.time() < deadline and not workers and proc.poll() is None:
        workers = trial_workers(proc.pid)
        time.sleep(0.05)
    assert workers, "no trial worker found"
    workers[0].kill()
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    assert "Traceback" not in out and "Trial task failed" not in out, out
    with open(run_dir / "trials.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    failed = [r for r in rows if r["status"] == "failed"]
    assert failed and all(r["error_message"] for r in failed)
