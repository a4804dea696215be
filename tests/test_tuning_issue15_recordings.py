"""Issue 15 regressions on what a run is scored and fitted on: item 1 (``--resume`` with a
changed recording), item 8 (bad ``fit_hash_attention`` values) and item 19 (nothing silent
for minutes: HashAttention fitting and ``install.sh`` say what they do)."""

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from sah.recording import make_synthetic_recording, save_recording
from sah.tuning.runner import RunInterrupted, RunOptions, run_study
from sah.infra.checks import ConfigError
from tuning_support import stop_in_second_experiment

ROOT = Path(__file__).resolve().parents[1]


def synthetic(path, seed, num_keys=128, num_queries=4, **meta):
    rec = make_synthetic_recording(num_layers=2, num_heads=2, num_kv_heads=1, head_dim=16,
                                   num_keys=num_keys, num_queries=num_queries, seed=seed)
    rec.metadata.update(meta)
    save_recording(rec, path)
    return path


def small_study(tmp_path, **keys):
    data = {"name": "resumable", "searcher": "random", "num_samples": 3, "seed": 1,
            "chains": [{"name": "sink_local", "maskers": [
                {"type": "SinkMaskerConfig", "sink_size": 2},
                {"type": "LocalMaskerConfig",
                 "window_size": {"search": "uniform", "low": 0.05, "high": 0.5}}]}]}
    data.update(keys)
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def options(study, results, resume=False):
    return RunOptions(config=str(study), results_dir=str(results), resume=resume, progress=False)


def two_experiments(second_maskers):
    """Chains for a run that can be stopped in its second experiment (one trial at a time)."""
    return {"searcher": "optuna", "max_concurrent_trials": 1, "chains": [
        {"name": "first", "num_samples": 2, "maskers": [
            {"type": "SinkMaskerConfig", "sink_size": {"search": "randint", "low": 1, "high": 8}}]},
        {"name": "second", "num_samples": 16, "maskers": second_maskers}]}


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
def test_issue15_item1_resume_refuses_a_recording_whose_content_changed(ray_session, tmp_path):
    """Issue 15 item 1: stopping a run, replacing its recording file and resuming mixed
    recordings silently (half the rows scored on each); `--resume` must refuse when a
    recording's content hash differs from the one run.yaml stored."""
    rec = synthetic(tmp_path / "rec.safetensors", seed=1, num_keys=2048, num_queries=64)
    original = rec.read_bytes()
    study = small_study(tmp_path, recording=str(rec), **two_experiments([
        {"type": "LocalMaskerConfig", "window_size": {"search": "randint", "low": 1, "high": 300}}]))
    results = tmp_path / "results"
    run_dir = stopped_run(study, results)
    before = files_state(run_dir)
    synthetic(rec, seed=2, num_keys=2048, num_queries=64)  # same file name, other content
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
def test_issue15_item1_resume_checks_fit_recordings_too(ray_session, tmp_path, monkeypatch):
    """Issue 15 item 1, for every recording of a run: a changed fit recording (what
    HashAttention was fitted on) is refused on `--resume` as a scored one is."""
    monkeypatch.setenv("SAH_CACHE_DIR", str(tmp_path / "cache"))
    scored = synthetic(tmp_path / "scored.safetensors", seed=1, num_keys=2048, num_queries=64,
                       text_sha256="a" * 64, token_start=0, token_end=2048)
    fit = synthetic(tmp_path / "fit.safetensors", seed=3, text_sha256="b" * 64,
                    token_start=0, token_end=128)
    study = small_study(tmp_path, recordings=[str(scored)], fit_recordings=[str(fit)],
                        fit_hash_attention={"bits": 4, "steps": 1, "hat_mlp_layers": 1,
                                            "hat_mlp_hidden_size": 4},
                        **two_experiments([{"type": "HashAttentionTopKMaskerConfig",
                                            "heavy_size": {"search": "uniform", "low": 0.01,
                                                           "high": 0.5}}]))
    results = tmp_path / "results"
    run_dir = stopped_run(study, results)
    before = files_state(run_dir)
    synthetic(fit, seed=4, text_sha256="b" * 64, token_start=0, token_end=128)
    with pytest.raises(FileExistsError, match=r"fit_recordings\[0\] \(fit, .*content hash"):
        run_study(options(study, results, resume=True))
    assert files_state(run_dir) == before


BAD_FIT_OPTIONS = [
    ({"steps": -1}, "fit_hash_attention.steps: got -1"),
    ({"bits": 0}, "fit_hash_attention.bits: got 0"),
    ({"hat_mlp_hidden_size": 2.5}, "fit_hash_attention.hat_mlp_hidden_size: got 2.5"),
    ({"lr": "fast"}, "fit_hash_attention.lr: got 'fast'"),
    ({"hat_mlp_activation": "softmax"}, "fit_hash_attention.hat_mlp_activation: got 'softmax'"),
    ({"recall_size": 1.5}, "fit_hash_attention.recall_size: got 1.5"),
    ({"steps": True}, "fit_hash_attention.steps: got True"),
    ({"stpes": 3}, "fit_hash_attention.stpes: unknown option"),
    ({"heldout": "x"}, "fit_hash_attention.heldout: unknown option"),
    ({"bits": 8, "hat_bits": 8}, "fit_hash_attention.bits: bits is short for hat_bits"),
    ([1, 2], "fit_hash_attention: got list"),
]


@pytest.mark.parametrize("fit, fragment", BAD_FIT_OPTIONS)
def test_issue15_item8_bad_fit_options_are_refused_before_the_run_folder_exists(tmp_path, fit,
                                                                                 fragment):
    """Issue 15 item 8: bad `fit_hash_attention` values (`steps: -1`, `bits: 0`, ...) were
    refused only after the run folder existed, without naming the file; they must be
    refused with the rest of the study, naming the file and YAML path, writing nothing."""
    rec = synthetic(tmp_path / "rec.safetensors", seed=1)
    study = small_study(tmp_path, recording=str(rec), fit_hash_attention=fit,
                        chains=[{"name": "hat", "maskers": [
                            {"type": "HashAttentionTopKMaskerConfig", "heavy_size": 0.2}]}])
    results = tmp_path / "results"
    with pytest.raises(ConfigError) as info:
        run_study(options(study, results))
    message = str(info.value)
    assert message.startswith(f"{study}: {fragment}"), message
    assert "\n" not in message
    assert not results.exists()


def test_issue15_item19_hash_attention_fitting_reports_each_layer(tmp_path, capfd, monkeypatch):
    """Issue 15 item 19: nothing was printed for minutes while HashAttention was fitted; the
    fit now reports each layer (with its duration) to a callback, and a run prints what it
    fits, a progress bar over the layers and the resulting recall."""
    from sah.maskers.hash_attention_fit import fit_hash_attention
    from sah.tuning.steps.hash_fit import prepare_hash_attention
    from sah.study.parse import parse_study
    monkeypatch.setenv("SAH_CACHE_DIR", str(tmp_path / "cache"))  # fitted here, not copied
    rec = make_synthetic_recording(num_layers=3, num_heads=2, num_kv_heads=1, head_dim=16,
                                   num_keys=128, num_queries=4, seed=1)
    seen = []
    fit_hash_attention(rec, hat_bits=4, hat_mlp_layers=1, hat_mlp_hidden_size=4, steps=2,
                       on_layer=lambda *args: seen.append(args))
    assert [s[:3] for s in seen] == [(0, 1, 3), (1, 2, 3), (2, 3, 3)]
    assert all(isinstance(s[3], float) and s[3] > 0 for s in seen)

    study = parse_study({"name": "p", "recording": "x",
                         "fit_hash_attention": {"bits": 4, "steps": 2, "hat_mlp_layers": 1,
                                                "hat_mlp_hidden_size": 5, "seed": 7},
                         "chains": [{"name": "hat", "maskers": [
                             {"type": "HashAttentionTopKMaskerConfig", "heavy_size": 0.2}]}]},
                        "s.yaml")
    capfd.readouterr()
    prepare_hash_attention(study, {"fitrec": rec}, tmp_path / "run", {"scored": rec},
                           progress=True)
    err = capfd.readouterr().err
    assert "sah: fitting HashAttention hash functions on fitrec: 3 layers, 2 steps each" in err
    assert "HashAttention fit:" in err and "/3 [" in err  # the bar over the 3 layers
    assert re.search(r"sah: HashAttention ready in [0-9.]+ s; top-k recall after \(before\) "
                     r"fitting: fit fitrec [0-9.]+ \([0-9.]+\); scored scored [0-9.]+", err), err


def test_issue15_item19_install_sh_prints_a_line_per_step():
    """Issue 15 item 19: install.sh was silent for minutes; it prints a line before each
    step (what it installs) and one at the end."""
    script = (ROOT / "install.sh").read_text()
    subprocess.run(["bash", "-n", str(ROOT / "install.sh")], check=True)
    lines = [ln.strip() for ln in script.splitlines()]
    installs = [i for i, ln in enumerate(lines) if re.search(r"-m pip install", ln)]
    assert len(installs) >= 3
    for i in installs:
        previous = [ln for ln in lines[:i] if ln and not ln.startswith("#")]
        # the nearest command before each pip install announces it (possibly inside an if)
        announce = [ln for ln in previous[-3:] if ln.startswith(("echo ", "say "))]
        assert announce, f"no line printed before: {lines[i]}"
    assert lines[-1].startswith(("echo ", "say ")) and "done" in lines[-1]
