"""Stop a real `run_optimize_configs.py` process with SIGTERM after some trials finished,
resume it, and compare with an uninterrupted run of the same seed."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from sah.recording import make_synthetic_recording, save_recording

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmark" / "run_optimize_configs.py"
NUM_SAMPLES = 32
STABLE = ("chain", "trial", "status", "SinkMaskerConfig_sink_size", "LocalMaskerConfig_window_size",
          "output_error", "density", "score")


def launch(study, results, *extra):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, str(SCRIPT), "--config", str(study), "--results-dir",
                             str(results), "--quiet", *extra], env=env, cwd=str(ROOT),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finished_trials(exp_dir):
    count = 0
    for result in exp_dir.glob("trial_*/result.json"):
        lines = result.read_text().strip().splitlines()
        count += bool(lines) and json.loads(lines[-1]).get("complete", False)
    return count


def stable_rows(path):
    with open(path, newline="") as fh:
        return [tuple(r[k] for k in STABLE) for r in csv.DictReader(fh)]


def test_sigterm_then_resume_matches_uninterrupted_run(tmp_path):
    rec = tmp_path / "rec.safetensors"
    save_recording(make_synthetic_recording(num_layers=6, num_heads=8, num_kv_heads=2,
                                            head_dim=64, num_keys=8192, num_queries=512, seed=5),
                   rec)
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump({
        "name": "killme", "recording": str(rec), "searcher": "random", "num_samples": NUM_SAMPLES,
        "seed": 11, "density_targets": [0.1], "layers_per_report": 2,
        "configs_per_trial": 2,  # small batches: the signal lands while batches remain
        "chains": [{"name": "sink_local", "maskers": [
            {"type": "SinkMaskerConfig", "sink_size": {"search": "randint", "low": 1, "high": 128}},
            {"type": "LocalMaskerConfig",
             "window_size": {"search": "uniform", "low": 0.01, "high": 0.5}}]}]}))
    results = tmp_path / "results"
    exp_dir = results / "killme" / "ray" / "_batched"  # the batches of every grid/random chain
    proc = launch(study, results)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and finished_trials(exp_dir) < 2:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be interrupted:\n" + proc.stdout.read()
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out
    assert "--resume" in out
    partial = stable_rows(results / "killme" / "trials.csv")
    done_before = [r for r in partial if r[2] == "completed"]
    assert 2 <= len(done_before) < NUM_SAMPLES, out
    assert not (results / "killme" / "summary.md").exists()

    proc = launch(study, results, "--resume")
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    resumed = stable_rows(results / "killme" / "trials.csv")
    assert len(resumed) == NUM_SAMPLES and all(r[2] == "completed" for r in resumed)
    assert len({r[1] for r in resumed}) == NUM_SAMPLES  # no trial repeated
    with open(results / "killme" / "trials.csv", newline="") as fh:
        ray_trials = {r["trial_id"] for r in csv.DictReader(fh)}
    assert len(ray_trials) == NUM_SAMPLES // 2  # batched: 2 configurations per Ray trial
    assert set(done_before) <= set(resumed)  # no finished trial lost or re-scored

    proc = launch(study, results, "--name", "straight")
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    straight = stable_rows(results / "straight" / "trials.csv")
    assert sorted(resumed) == sorted(straight)
    for name in ("sink_local.yaml", "sink_local.density_0.1.yaml", "sink_local.hub.json"):
        a = (results / "killme" / "tuned" / name).read_text().replace("run killme", "run X")
        b = (results / "straight" / "tuned" / name).read_text().replace("run straight", "run X")
        assert a == b
