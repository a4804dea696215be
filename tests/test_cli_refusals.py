"""Issue 15 (hardening), the command side: the pickle opt-in, memory estimates, one-line
errors instead of tracebacks (run folders, full disks, Ctrl-C twice), resuming a finished
or stopped run, progress bars and `sah compare`. Real Ray Tune runs on small recordings."""

import csv
import errno
import io
import json
import os
import pickle
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from sah.cli import main
from sah.maskers.hash_attention import random_hat_weights
from sah.recording import make_synthetic_recording, save_recording
from sah.tuning.runner import RunInterrupted, RunOptions, run_study
from sah.study.parse import load_study
from sah.infra.checks import ConfigError
from tuning_support import stop_in_second_experiment

ROOT = Path(__file__).resolve().parents[1]
HAT = {"type": "HashAttentionTopKMaskerConfig", "heavy_size": 4, "hat_bits": 8,
       "hat_mlp_layers": 2, "hat_mlp_hidden_size": 6}



@pytest.fixture(scope="module")
def rec_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("rec") / "rec.safetensors"
    save_recording(make_synthetic_recording(num_layers=2, num_heads=2, num_kv_heads=1,
                                            head_dim=16, num_keys=64, num_queries=4, seed=2), path)
    return path


def small_study(rec, name, **extra):
    data = {"name": name, "recording": str(rec), "searcher": "random", "num_samples": 6,
            "seed": 1, "density_targets": [0.3], "configs_per_trial": 3, "chains": [
                {"name": "sink_local", "maskers": [
                    {"type": "SinkMaskerConfig", "sink_size": {"search": "randint", "low": 1, "high": 8}},
                    {"type": "LocalMaskerConfig",
                     "window_size": {"search": "uniform", "low": 0.05, "high": 0.5}}]},
                {"name": "strided", "searcher": "grid", "maskers": [
                    {"type": "StridedPatternConfig", "window_size": {"search": "grid", "values": [4, 8]},
                     "stride": {"search": "grid", "values": [4, 16]}}]}]}
    data.update(extra)
    return data


def write_yaml(path, data):
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def two_runs(ray_session, rec_path, tmp_path_factory):
    """Two finished runs of the same study with different seeds."""
    base = tmp_path_factory.mktemp("runs")
    out = []
    for name, seed in (("run_a", 1), ("run_b", 2)):
        study = write_yaml(base / f"{name}.yaml", small_study(rec_path, name, seed=seed))
        out.append(run_study(RunOptions(config=str(study), results_dir=str(base / "results"),
                                        progress=False)))
    return out


def error_line(err, command):
    lines = [ln for ln in err.splitlines() if ln.startswith(f"sah {command}: error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


# ---------------------------------------------------------------------- item 2
class _Payload:
    """Unpickling this runs ``os.mkdir(marker)``: proof that a file ran code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_issue15_item2_pickle_opt_in_comes_from_the_person_not_the_file(tmp_path, rec_path,
                                                                        capsys, monkeypatch):
    """issue 15 item 2: a chain config or study with ``hat_weight_file: x.pkl`` and
    ``allow_pickle: true`` ran the pickle's payload (``sah resources --config``, ``sah
    patterns --config``, Ray workers). The opt-in is the person's (--allow-pickle or
    SAH_ALLOW_PICKLE=1); the file's own ``allow_pickle: true`` is refused."""
    from sah.infra.pickle_opt_in import set_pickle_allowed
    monkeypatch.delenv("SAH_ALLOW_PICKLE", raising=False)
    marker = tmp_path / "payload_ran"
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({0: _Payload(marker)}))
    cfg = write_yaml(tmp_path / "chain.yaml", {"masker_configs": [
        {**HAT, "hat_weight_file": str(evil), "allow_pickle": True}]})
    chain_args = ["--recording", str(rec_path), "--config", str(cfg), "--layer", "0", "--heads", "0"]
    assert main(["resources", *chain_args]) == 2
    line = error_line(capsys.readouterr().err, "resources")
    assert "allow_pickle: got True" in line and "cannot switch pickle loading on" in line
    assert "--allow-pickle" in line and "SAH_ALLOW_PICKLE=1" in line
    assert main(["patterns", *chain_args, "--output_dir", str(tmp_path / "png")]) == 2
    assert "cannot switch pickle loading on" in error_line(capsys.readouterr().err, "patterns")
    # even with the person's opt-in, the file's own field is refused (remove it)
    assert main(["resources", *chain_args, "--allow-pickle"]) == 2
    capsys.readouterr()
    set_pickle_allowed(False)  # the flag opts in for the rest of the process; undo it here
    # a study cannot do it either; refused before anything runs
    study = write_yaml(tmp_path / "study.yaml", {
        "name": "p", "recording": str(rec_path), "chains": [
            {"name": "h", "maskers": [{**HAT, "hat_weight_file": str(evil), "allow_pickle": True}]}]})
    with pytest.raises(ConfigError, match=r"chains\[0\]\.maskers\[0\]\.allow_pickle: .*--allow-pickle"):
        load_study(study)
    assert not marker.exists()
    # without the field and without the opt-in: refused, naming the fix
    plain = write_yaml(tmp_path / "plain.yaml", {"masker_configs": [{**HAT, "hat_weight_file": str(evil)}]})
    assert main(["resources", "--recording", str(rec_path), "--config", str(plain),
                 "--layer", "0"]) == 2
    assert "--allow-pickle" in error_line(capsys.readouterr().err, "resources")
    assert not marker.exists()
    # the person's opt-in (flag or environment) loads a trusted pickle
    good = tmp_path / "good.pkl"
    good.write_bytes(pickle.dumps({layer: random_hat_weights(2, 1, 16, 8, 2, 6, seed=layer)
                                   for layer in (0, 1)}))
    trusted = write_yaml(tmp_path / "trusted.yaml", {"masker_configs": [{**HAT, "hat_weight_file": str(good)}]})
    ok_args = ["resources", "--recording", str(rec_path), "--config", str(trusted), "--layer", "1",
               "--heads", "0"]
    assert main([*ok_args, "--allow-pickle"]) == 0
    assert "Total Calculation Points" in capsys.readouterr().out
    set_pickle_allowed(False)
    monkeypatch.setenv("SAH_ALLOW_PICKLE", "1")
    assert main(ok_args) == 0


def test_issue15_item2_a_run_reads_pickles_only_with_the_persons_opt_in(ray_session, rec_path,
                                                                        tmp_path, monkeypatch):
    """issue 15 item 2: a run reads a .pkl weight file only with the person's opt-in
    (RunOptions.allow_pickle / --allow-pickle; the driver reads it and the trials get the
    tensors); without it the study is refused up front, nothing written."""
    monkeypatch.delenv("SAH_ALLOW_PICKLE", raising=False)
    good = tmp_path / "good.pkl"
    good.write_bytes(pickle.dumps({layer: random_hat_weights(2, 1, 16, 8, 2, 6, seed=layer)
                                   for layer in (0, 1)}))
    study = write_yaml(tmp_path / "study.yaml", {
        "name": "pkl", "recording": str(rec_path), "searcher": "random", "num_samples": 3,
        "chains": [{"name": "hat", "maskers": [
            {**HAT, "hat_weight_file": str(good),
             "heavy_size": {"search": "randint", "low": 2, "high": 12}}]}]})
    results = tmp_path / "results"
    with pytest.raises(ConfigError, match="--allow-pickle"):
        run_study(RunOptions(config=str(study), results_dir=str(results), progress=False))
    assert not results.exists()
    run_dir = run_study(RunOptions(config=str(study), results_dir=str(results), progress=False,
                                   allow_pickle=True))
    with open(run_dir / "trials.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 3 and all(r["status"] == "completed" for r in rows), rows


# ---------------------------------------------------------------------- item 7
def test_issue15_item7_memory_is_estimated_before_allocating(tmp_path, capsys):
    """issue 15 item 7: ``sah resources --mask_size 1000000`` tried to allocate TiBs and
    ``sah patterns --size 100000`` likewise; the memory is estimated first and the work
    refused with the figure and the fix."""
    assert main(["resources", "--pattern", "normal", "--mask_size", "1000000"]) == 2
    line = error_line(capsys.readouterr().err, "resources")
    assert "500,000,500,000 active positions" in line and "TiB of memory" in line
    assert "is available" in line and "use a smaller --mask_size" in line
    assert main(["patterns", "--size", "1000000", "--output_dir", str(tmp_path)]) == 2
    line = error_line(capsys.readouterr().err, "patterns")
    assert "TiB of memory" in line and "--skip_pattern_print" in line
    assert main(["patterns", "--size", "100000", "--full_png", "--skip_pattern_print",
                 "--output_dir", str(tmp_path)]) == 2
    assert "drop --full_png" in error_line(capsys.readouterr().err, "patterns")
    # the sparsity lines alone need no points: counted a chunk of rows at a time
    assert main(["patterns", "--size", "1000000", "--skip_pattern_print", "--no_graphic"]) == 0
    assert "Normal Mask Sparsity: 50.0000%" in capsys.readouterr().out
    assert not any(tmp_path.iterdir())


# ---------------------------------------------------------------------- item 10
def test_issue15_item10_run_folder_errors_are_one_line(tmp_path, rec_path, two_runs, capsys):
    """issue 15 item 10: a --results-dir that is a file or not writable, an empty / list /
    invalid run.yaml on --resume, run.yaml without ``study`` in export/compare and
    ``sah export -o`` onto a directory gave tracebacks; each is one line, nothing written."""
    study = write_yaml(tmp_path / "s.yaml", small_study(rec_path, "s"))
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    assert main(["tune", "--config", str(study), "--results-dir", str(a_file)]) == 2
    assert "is a file, not a folder" in error_line(capsys.readouterr().err, "tune")
    assert main(["tune", "--config", str(study), "--results-dir", str(a_file / "sub")]) == 2
    assert "which is a file" in error_line(capsys.readouterr().err, "tune")
    if os.geteuid() == 0:  # root writes anywhere except where the kernel refuses
        locked = Path("/sys/sah-results")
    else:
        (tmp_path / "locked").mkdir(mode=0o500)
        locked = tmp_path / "locked" / "results"
    assert main(["tune", "--config", str(study), "--results-dir", str(locked)]) == 2
    assert "cannot write in" in error_line(capsys.readouterr().err, "tune")
    assert not locked.exists()

    results = tmp_path / "results"
    for text in ("", "- a\n- b\n", "study: [\n", "study: 3\n"):
        (results / "s").mkdir(parents=True, exist_ok=True)
        (results / "s" / "run.yaml").write_text(text)
        assert main(["tune", "--config", str(study), "--results-dir", str(results), "--resume"]) == 2
        line = error_line(capsys.readouterr().err, "tune")
        assert "run.yaml" in line and ("not a run.yaml written by sah" in line
                                       or "not valid YAML" in line), line
        assert sorted(p.name for p in (results / "s").iterdir()) == ["run.yaml"]

    run_a = two_runs[0]
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "run.yaml").write_text("recording: x\n")
    (broken / "trials.csv").write_text((run_a / "trials.csv").read_text())
    assert main(["export", str(broken), "--chain", "strided"]) == 2
    assert "without 'study'" in error_line(capsys.readouterr().err, "export")
    assert main(["compare", str(run_a), str(broken)]) == 2
    assert "without 'study'" in error_line(capsys.readouterr().err, "compare")
    folder = tmp_path / "out"
    folder.mkdir()
    assert main(["export", str(run_a), "--chain", "strided", "-o", str(folder)]) == 2
    assert "is a folder; give a file name" in error_line(capsys.readouterr().err, "export")
    assert not any(folder.iterdir())


def test_issue15_item10_disk_full_while_writing_outputs(ray_session, rec_path, tmp_path,
                                                       capsys, monkeypatch):
    """issue 15 item 10: a full disk while writing the outputs gave a traceback. Now: one
    line naming the file and the fix, no file half-written, and --resume writes the
    outputs. (ENOSPC is raised by the atomic writer when it writes summary.md.)"""
    import sah.infra.files as files
    real = files._write_and_sync

    def full_disk(fh, data, path):
        if path.name == "summary.md":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fh, data, path)

    monkeypatch.setattr(files, "_write_and_sync", full_disk)
    study = write_yaml(tmp_path / "s.yaml", small_study(rec_path, "full"))
    args = ["tune", "--config", str(study), "--results-dir", str(tmp_path / "results"), "--quiet"]
    assert main(args) == 2
    line = error_line(capsys.readouterr().err, "tune")
    run_dir = tmp_path / "results" / "full"
    assert "no space left on the device while writing" in line and "summary.md" in line
    assert "--resume" in line
    assert not (run_dir / "summary.md").exists()
    leftovers = [p for p in run_dir.rglob(".*") if "ray" not in p.relative_to(run_dir).parts]
    assert leftovers == []  # no temp file left behind
    with open(run_dir / "trials.csv", newline="") as fh:
        assert len(list(csv.DictReader(fh))) == 6 + 4  # written whole before the failure
    assert "_outputs" not in json.loads((run_dir / "progress.json").read_text())
    monkeypatch.undo()
    assert main([*args, "--resume"]) == 0
    assert (run_dir / "summary.md").is_file()
    assert json.loads((run_dir / "progress.json").read_text())["_outputs"] == "complete"


def test_issue15_item10_ctrl_c_twice_exits_130_without_traceback(tmp_path):
    """issue 15 item 10: Ctrl-C twice printed a KeyboardInterrupt traceback. Now exit
    status 130 and one message (a real `sah tune` process, two real SIGINTs)."""
    rec = tmp_path / "rec.safetensors"
    save_recording(make_synthetic_recording(num_layers=4, num_heads=4, num_kv_heads=2, head_dim=32,
                                            num_keys=4096, num_queries=64, seed=1), rec)
    study = write_yaml(tmp_path / "s.yaml", {
        "name": "cc", "recording": str(rec), "searcher": "random", "num_samples": 200, "seed": 1,
        "configs_per_trial": 2, "chains": [{"name": "sl", "maskers": [
            {"type": "SinkMaskerConfig", "sink_size": {"search": "randint", "low": 1, "high": 64}},
            {"type": "LocalMaskerConfig", "window_size": {"search": "uniform", "low": 0.01, "high": 0.5}}]}]})
    results = tmp_path / "results"
    proc = subprocess.Popen([sys.executable, "-m", "sah.cli", "tune", "--config", str(study),
                             "--results-dir", str(results), "--quiet"],
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=str(ROOT),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            # Ctrl-C reaches the command even when the test runner itself
                            # ignores SIGINT (started in the background by a shell)
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            if any((results / "cc" / "ray" / "_batched").glob("trial_*/result.json")):
                break
            time.sleep(0.2)
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        proc.send_signal(signal.SIGINT)
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, out[-3000:]
    assert "Traceback" not in out and "KeyboardInterrupt" not in out, out[-3000:]
    last = out.strip().splitlines()[-1]
    assert last.startswith("sah") and "--resume" in last, out[-3000:]


# ---------------------------------------------------------------------- item 22
def test_issue15_item22_resume_totals_wall_time_and_finished_runs_are_complete(
        ray_session, rec_path, tmp_path, capsys):
    """issue 15 item 22: --resume on a finished run took 35 s, showed every bar at 0 and
    replaced summary.md's wall time with the resumed part's. Now: a stopped run (a real
    SIGTERM during its second experiment) resumed reports the total over both parts; a
    finished run is "already complete" without starting an experiment."""
    rec = tmp_path / "rec.safetensors"  # big enough that the second experiment takes a while
    save_recording(make_synthetic_recording(num_layers=2, num_heads=4, num_kv_heads=2, head_dim=32,
                                            num_keys=2048, num_queries=64, seed=4), rec)
    study = write_yaml(tmp_path / "s.yaml", {
        "name": "parts", "recording": str(rec), "searcher": "optuna", "seed": 3,
        "max_concurrent_trials": 1, "chains": [
            {"name": "first", "num_samples": 2, "maskers": [
                {"type": "SinkMaskerConfig", "sink_size": {"search": "randint", "low": 1, "high": 8}}]},
            {"name": "second", "num_samples": 16, "maskers": [
                {"type": "LocalMaskerConfig", "window_size": {"search": "randint", "low": 1, "high": 300}}]}]})
    results = tmp_path / "results"
    run_dir = results / "parts"
    options = RunOptions(config=str(study), results_dir=str(results), progress=False)

    stopper = stop_in_second_experiment(run_dir)
    with pytest.raises(RunInterrupted):
        run_study(options)
    stopper.join()
    first_part = json.loads((run_dir / "progress.json").read_text())
    assert first_part["first"] == "complete" and "second" not in first_part
    assert len(first_part["_wall_seconds"]) == 1 and not (run_dir / "summary.md").exists()

    options.resume = True
    run_study(options)
    progress = json.loads((run_dir / "progress.json").read_text())
    parts = progress["_wall_seconds"]
    assert len(parts) == 2 and progress["_outputs"] == "complete"
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


# ---------------------------------------------------------------------- item 23
def test_issue15_item23_progress_bar_shows_the_current_best(capsys):
    """issue 15 item 23: the bar's best score was set after its last update, so the bar
    showed a stale best. The postfix is set with the update and a finished chain's bar
    is drawn at once with its final best (real Ray Trial objects drive the callback)."""
    from ray.tune.experiment import Trial

    from sah.tuning.progress import TrialProgress

    def finished(score):
        trial = Trial("__fake", config={"chain": "a"}, stub=True)
        trial.run_metadata.last_result = {"score": score, "complete": True}
        return trial

    progress = TrialProgress({"a": 2})
    progress.setup()
    progress.on_trial_complete(0, [], finished(0.5))
    progress.on_trial_complete(1, [], finished(0.2))
    shown = capsys.readouterr().err  # before close(): what the person sees now
    frames = [f for f in re.split(r"[\r\n]", shown) if "2/2" in f]
    assert frames and "best_score=0.2" in frames[-1], shown
    progress.close()


# ---------------------------------------------------------------------- item 24
def test_issue15_item24_compare_chains_as_rows_runs_as_columns_with_a_plot(two_runs, tmp_path,
                                                                           capsys):
    """issue 15 item 24: `sah compare` printed one row per quantity (64 rows for 2 runs).
    Now chains are rows and runs columns (a table per quantity) and --plot draws the runs'
    Pareto fronts on one figure."""
    run_a, run_b = two_runs
    png = tmp_path / "fronts.png"
    assert main(["compare", str(run_a), str(run_b), "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines.count("| chain | run_a | run_b |") == 4  # score, error, trials, parameters
    assert len(lines) < 40
    score_rows = [ln for ln in lines if ln.startswith("| sink_local |")]
    assert len(score_rows) == 4 and score_rows[0].count("*") >= 1
    assert any("sink_size=" in ln and "window_size=" in ln for ln in score_rows)
    strided = [ln for ln in lines if ln.startswith("| strided |")]
    assert "4/4, 0 bits" in strided[2]
    from sah.runs.outputs import load_run
    from sah.runs.outputs.picks import best_row
    _, rows_a, _ = load_run(run_a)
    assert f"{best_row(rows_a, 'sink_local')['score']:.4g}" in score_rows[0]

    import matplotlib.image
    import matplotlib.pyplot as plt
    image = matplotlib.image.imread(png)
    assert image.shape[0] > 300 and image.shape[1] > 600
    for chain_index in (0, 1):  # both chains' colours are drawn
        colour = plt.get_cmap("tab10")(chain_index)[:3]
        close = (abs(image[..., :3] - colour).max(axis=-1) < 0.05).sum()
        assert close > 100, chain_index

    assert main(["compare", str(run_a), str(run_b), "--format", "csv"]) == 0
    table = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert [r[0] for r in table] == ["chain", "sink_local", "strided"]
    assert "run_a.score" in table[0] and "run_b.parameters" in table[0]
