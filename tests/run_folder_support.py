"""Real `sah tune` processes on a small study, stopped part-way: shared by the tests of run
folders from elsewhere, the run folder's lock and killed runs."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from sah.recording import make_synthetic_recording, save_recording

ROOT = Path(__file__).resolve().parents[1]
NUM_SAMPLES = 16


def write_study(tmp_path, name="stopme"):
    """A random chain in batches of 2 with trials slow enough to stop between them."""
    rec = tmp_path / "rec.safetensors"
    save_recording(make_synthetic_recording(num_layers=6, num_heads=8, num_kv_heads=2,
                                            head_dim=64, num_keys=8192, num_queries=512, seed=5),
                   rec)
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump({
        "name": name, "recording": str(rec), "searcher": "random", "num_samples": NUM_SAMPLES,
        "seed": 11, "density_targets": [0.1], "layers_per_report": 2, "configs_per_trial": 2,
        "chains": [{"name": "sink_local", "maskers": [
            {"type": "SinkMaskerConfig", "sink_size": {"search": "randint", "low": 1, "high": 128}},
            {"type": "LocalMaskerConfig",
             "window_size": {"search": "uniform", "low": 0.01, "high": 0.5}}]}]}))
    return study


def launch(study, results, *extra, env=None):
    """``python3 -m sah.cli tune`` as a user starts it (output on one pipe)."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "sah.cli", "tune", "--config", str(study),
                             "--results-dir", str(results), "--quiet", *extra], env=full_env,
                            cwd=str(ROOT), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def finished_batches(exp_dir):
    count = 0
    for result in Path(exp_dir).glob("trial_*/result.json"):
        lines = result.read_text().strip().splitlines()
        count += bool(lines) and json.loads(lines[-1]).get("complete", False)
    return count


def wait_for(proc, ready, seconds=180):
    """Wait until ``ready()`` holds while ``proc`` runs; fail with its output if it ended."""
    deadline = time.time() + seconds
    while time.time() < deadline and proc.poll() is None and not ready():
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be stopped:\n" + proc.stdout.read()
    assert ready(), "the run did not get there in time"


def completed_rows(run_dir):
    import csv
    with open(Path(run_dir) / "trials.csv", newline="") as fh:
        return [r for r in csv.DictReader(fh) if r["status"] == "completed"]


_INTERRUPTED = {}


def interrupted_run(base):
    """A real run stopped with SIGTERM in its first experiment (once per test process,
    under ``base``): chain ``sink_local`` (batched random) has some completed trials,
    chain ``later`` (Optuna, the second experiment) none. Returns (study file, run folder);
    copy the folder before changing it."""
    if "run" in _INTERRUPTED:
        return _INTERRUPTED["run"]
    base = Path(base)
    study = write_study(base, name="halfway")
    data = yaml.safe_load(study.read_text())
    data["chains"].append({"name": "later", "searcher": "optuna", "num_samples": 2,
                           "maskers": [{"type": "LocalMaskerConfig", "window_size": {
                               "search": "randint", "low": 8, "high": 64}}]})
    study.write_text(yaml.safe_dump(data))
    results = base / "results"
    run_dir = results / "halfway"
    proc = launch(study, results)
    wait_for(proc, lambda: finished_batches(run_dir / "ray" / "_batched") >= 2)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 130, out
    assert 1 <= len(completed_rows(run_dir)) < NUM_SAMPLES, out
    _INTERRUPTED["run"] = (study, run_dir)
    return _INTERRUPTED["run"]


def sah(*argv):
    """``python3 -m sah.cli ARGV`` as a user runs it: (exit status, stdout, stderr)."""
    proc = subprocess.run([sys.executable, "-m", "sah.cli", *map(str, argv)],
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=str(ROOT),
                          capture_output=True, text=True, timeout=600)
    return proc.returncode, proc.stdout, proc.stderr
