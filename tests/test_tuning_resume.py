"""Stopping and resuming runs: a real `run_optimize_configs.py` process stopped with SIGTERM
and resumed matches an uninterrupted run of the same seed; a resumed run totals its wall
time; a finished run is already complete; `--resume` refuses recordings (scored or fit)
whose content changed."""

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from sah.recording import make_synthetic_recording, save_recording
from sah.tuning.runner import RunInterrupted, RunOptions, run_study
from tuning_support import save_synthetic, stop_in_second_experiment, two_experiments, write_study
ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmark" / "run_optimize_configs.py"
NUM_SAMPLES = 16
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


@pytest.mark.slow
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


def stop_before_first_trial(monkeypatch, experiment):
    """Send this process a real SIGTERM at Ray Tune's first step of ``experiment``, before
    that step makes a trial (the step is skipped): the stop a Ctrl-C gives when it lands
    between an experiment's start and its first trial. Ray Tune then saves a state that
    lists no trials, which it cannot restore by itself."""
    from ray.tune.execution.tune_controller import TuneController
    step = TuneController.step
    sent = []

    def stepping(controller):
        if (controller._storage.experiment_dir_name == experiment and not sent
                and not controller.get_trials()):
            sent.append(controller)
            os.kill(os.getpid(), signal.SIGTERM)
        if sent and sent[0] is controller and not controller.get_trials():
            return None  # no trial made until Ray Tune's loop sees the stop
        return step(controller)

    monkeypatch.setattr(TuneController, "step", stepping)
    return sent


def saved_trials(exp_dir):
    """The trials listed by an experiment's newest saved state (read as JSON)."""
    newest = sorted(Path(exp_dir).glob("experiment_state-*.json"))[-1]
    return json.loads(newest.read_text())["trial_data"]


@pytest.mark.slow
def test_resumed_run_reports_the_total_wall_time_and_a_finished_run_is_already_complete(
        ray_session, tmp_path, capsys, monkeypatch):
    """A run stopped by a real SIGTERM in its second experiment, before that experiment made
    its first trial (Ray Tune saved a state without trials), resumes to the end: every
    trial of both experiments, and summary.md reports the wall time over both parts, not the
    resumed part's; --resume on a finished run says "already complete" without starting an
    experiment, drawing a bar or touching Ray's state or the summary."""
    rec = save_synthetic(tmp_path / "rec.safetensors", num_heads=4, num_kv_heads=2, head_dim=32,
                         num_keys=256, num_queries=16, seed=4)
    study = write_study(tmp_path / "s.yaml", {
        "name": "parts", "recording": str(rec), "seed": 3, **two_experiments([
            {"type": "LocalMaskerConfig", "window_size": {"search": "randint", "low": 1, "high": 300}}])})
    results = tmp_path / "results"
    run_dir = results / "parts"
    options = RunOptions(config=str(study), results_dir=str(results), progress=False)

    sent = stop_before_first_trial(monkeypatch, "second")
    with pytest.raises(RunInterrupted):
        run_study(options)
    assert sent and saved_trials(run_dir / "ray" / "second") == []
    first_part = json.loads((run_dir / "progress.json").read_text())
    assert first_part["first"] == "complete" and "second" not in first_part
    assert len(first_part["_wall_seconds"]) == 1 and not (run_dir / "summary.md").exists()
    time.sleep(1.1)  # the first part lasts long enough to tell the total from the second part

    options.resume = True
    run_study(options)
    progress = json.loads((run_dir / "progress.json").read_text())
    parts = progress["_wall_seconds"]
    assert len(parts) == 2 and progress["_outputs"] == "complete"
    assert len(saved_trials(run_dir / "ray" / "second")) == 16
    shown = float(re.search(r"wall time (\d+) s", (run_dir / "summary.md").read_text()).group(1))
    assert abs(shown - sum(parts)) <= 0.51 and shown > parts[1] + 1  # the total, not part 2

    state = {p: p.stat().st_mtime_ns for p in (run_dir / "ray").rglob("*") if p.is_file()}
    summary = (run_dir / "summary.md").read_text()
    capsys.readouterr()
    options.progress = True
    assert run_study(options) == run_dir.resolve()
    err = capsys.readouterr().err
    assert "already complete" in err and "config/s" not in err and "%|" not in err
    assert {p: p.stat().st_mtime_ns for p in (run_dir / "ray").rglob("*") if p.is_file()} == state
    assert (run_dir / "summary.md").read_text() == summary  # the total stays


def resumable_study(tmp_path, **keys):
    """A study named ``resumable`` (random sink + local, 3 samples) written to
    tmp_path/study.yaml; ``keys`` add or replace study keys."""
    data = {"name": "resumable", "searcher": "random", "num_samples": 3, "seed": 1,
            "chains": [{"name": "sink_local", "maskers": [
                {"type": "SinkMaskerConfig", "sink_size": 2},
                {"type": "LocalMaskerConfig",
                 "window_size": {"search": "uniform", "low": 0.05, "high": 0.5}}]}]}
    data.update(keys)
    return write_study(tmp_path / "study.yaml", data)


def options(study, results, resume=False):
    return RunOptions(config=str(study), results_dir=str(results), resume=resume, progress=False)


def stopped_run(study, results):
    """Run the study and stop it with a real SIGTERM during its second experiment (as
    Ctrl-C / kill would); returns the run folder, which `--resume` continues."""
    run_dir = results / "resumable"

    stopper = stop_in_second_experiment(run_dir)
    with pytest.raises(RunInterrupted):
        run_study(options(study, results))
    stopper.join()
    assert not (run_dir / "summary.md").exists()  # stopped before the end
    return run_dir


def files_state(run_dir):
    return {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_resume_refuses_a_recording_whose_content_changed(ray_session, tmp_path):
    """A stopped run whose recording file is replaced (same name, other content): `--resume`
    refuses in one line naming recordings[0], its content hash and --name, and writes
    nothing (no rows scored on two recordings); with the original back it finishes."""
    rec = save_synthetic(tmp_path / "rec.safetensors", seed=1, num_keys=2048, num_queries=64)
    original = rec.read_bytes()
    study = resumable_study(tmp_path, recording=str(rec), **two_experiments([
        {"type": "LocalMaskerConfig", "window_size": {"search": "randint", "low": 1, "high": 300}}]))
    results = tmp_path / "results"
    run_dir = stopped_run(study, results)
    before = files_state(run_dir)
    save_synthetic(rec, seed=2, num_keys=2048, num_queries=64)  # same file name, other content
    with pytest.raises(FileExistsError) as info:
        run_study(options(study, results, resume=True))
    message = str(info.value)
    assert "recordings[0]" in message and "content hash" in message and "--name" in message
    assert "\n" not in message
    assert files_state(run_dir) == before  # nothing written
    rec.write_bytes(original)  # the original back: resuming finishes the run
    assert run_study(options(study, results, resume=True)) == run_dir.resolve()
    assert (run_dir / "summary.md").is_file()


@pytest.mark.slow
def test_resume_refuses_a_fit_recording_whose_content_changed(ray_session, tmp_path, monkeypatch):
    """Every recording of a run is checked on `--resume`: a changed fit recording (what
    HashAttention was fitted on) is refused as a scored one is, writing nothing."""
    monkeypatch.setenv("SAH_CACHE_DIR", str(tmp_path / "cache"))
    scored = save_synthetic(tmp_path / "scored.safetensors", "a", 0, 2048, seed=1,
                            num_keys=2048, num_queries=64)
    fit = save_synthetic(tmp_path / "fit.safetensors", "b", 0, 128, seed=3, num_keys=128)
    study = resumable_study(tmp_path, recordings=[str(scored)], fit_recordings=[str(fit)],
                        fit_hash_attention={"bits": 4, "steps": 1, "hat_mlp_layers": 1,
                                            "hat_mlp_hidden_size": 4},
                        **two_experiments([{"type": "HashAttentionTopKMaskerConfig",
                                            "heavy_size": {"search": "uniform", "low": 0.01,
                                                           "high": 0.5}}]))
    results = tmp_path / "results"
    run_dir = stopped_run(study, results)
    before = files_state(run_dir)
    save_synthetic(fit, "b", 0, 128, seed=4, num_keys=128)
    with pytest.raises(FileExistsError, match=r"fit_recordings\[0\] \(fit, .*content hash"):
        run_study(options(study, results, resume=True))
    assert files_state(run_dir) == before
