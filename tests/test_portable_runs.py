"""Portable run folders: a finished run MOVED elsewhere (and the weight file its study named
deleted) still holds tuned configs and exports that load and reproduce their trials.csv
figures; nothing in them is an absolute path; Ray Tune's state sits in a storage folder
outside the run folder and ``--resume`` continues from it after the move."""

import re
import shutil

import pytest
import torch
import yaml

from sah.attention import ResearchAttentionConfig
from sah.cli import main
from sah.evaluate import evaluate_config
from sah.maskers.hash_attention import random_hat_weights
from sah.recording import load_recording
from sah.tuning.runner import RunOptions, run_study
from tuning_support import read_csv, recording_fixture

LAYERS = [0, 2]  # the synthetic recording's layer ids are 0..2; two of them are scored


rec_path = recording_fixture("synthetic.safetensors", num_layers=3, num_heads=4, num_kv_heads=2,
                             head_dim=32, num_keys=384, num_queries=8, seed=4)


def read_rows(run_dir):
    """trials.csv's rows by (chain, trial)."""
    return {(r["chain"], int(r["trial"])): r for r in read_csv(run_dir / "trials.csv")}


def trial_of(config_path):
    """The trial a tuned or exported config came from (its header line)."""
    return int(re.search(r"^# trial (\d+):", config_path.read_text(), re.M).group(1))


def assert_reproduces(config_path, chain, rows, recording, trial=None):
    cfg = ResearchAttentionConfig.from_file(config_path)
    row = rows[(chain, trial_of(config_path) if trial is None else trial)]
    again = evaluate_config(cfg, recording, layers=LAYERS)
    assert again.output_error == float(row["output_error"]), config_path
    assert again.density == float(row["density"]), config_path


def test_weight_file_is_resolved_against_the_config_folder(tmp_path, monkeypatch):
    from sah import HashAttentionTopKMaskerConfig
    from sah.maskers.hash_attention import save_hat_weights
    folder = tmp_path / "configs"
    folder.mkdir()
    save_hat_weights({0: random_hat_weights(2, 1, 8, 4, 1, 8, seed=1)}, folder / "w.safetensors")
    config = ResearchAttentionConfig([HashAttentionTopKMaskerConfig(
        heavy_size=4, hat_bits=4, hat_mlp_layers=1, hat_weight_file="w.safetensors")])
    config.to_file(folder / "c.yaml")
    config.to_file(folder / "c.json", hub=True)
    monkeypatch.chdir(tmp_path)  # not the config's folder
    for name in ("c.yaml", "c.json"):
        loaded = ResearchAttentionConfig.from_file(folder / name)
        assert loaded.masker_configs[0].hat_weight_file == str(folder / "w.safetensors")
    absolute = ResearchAttentionConfig([HashAttentionTopKMaskerConfig(
        heavy_size=4, hat_bits=4, hat_mlp_layers=1, hat_weight_file=str(tmp_path / "x.pt"))])
    absolute.to_file(folder / "abs.yaml")  # an absolute name is kept as it is
    assert ResearchAttentionConfig.from_file(folder / "abs.yaml").masker_configs[0] \
        .hat_weight_file == str(tmp_path / "x.pt")


def test_weights_travel_as_arrays_and_are_rebuilt_once_per_process():
    import pickle

    from sah.runs.artefacts import SharedWeights, with_weights
    weights = {3: random_hat_weights(4, 2, 8, 4, 2, 8, seed=0)}
    shared = SharedWeights(weights)
    first, second = (pickle.loads(pickle.dumps(shared)) for _ in range(2))
    assert first is second  # one rebuild per process, reused by every later trial
    assert first.digest == shared.digest
    for name, tensors in weights[3].items():
        assert all(torch.equal(a, b) for a, b in zip(tensors, first.weights[3][name]))
    other = SharedWeights({3: random_hat_weights(4, 2, 8, 4, 2, 8, seed=1)})
    assert pickle.loads(pickle.dumps(other)) is not first and other.digest != shared.digest
    from sah import HashAttentionTopKMaskerConfig
    cfg = ResearchAttentionConfig([HashAttentionTopKMaskerConfig(
        heavy_size=4, hat_bits=4, hat_mlp_layers=2, hat_mlp_hidden_size=8,
        hat_weight_file="hash_attention.safetensors")])
    resolved = with_weights(cfg, {"hash_attention.safetensors": first})
    assert resolved.masker_configs[0].hat_weight_file is None
    assert resolved.masker_configs[0].hat_weights is first.weights


@pytest.mark.slow
def test_moved_run_folder_still_exports_and_resumes(ray_session, rec_path, tmp_path, capsys):
    import ray
    recording = load_recording(rec_path)
    given = tmp_path / "inputs" / "given.pt"  # weights named by the study, as a .pt file
    given.parent.mkdir()
    torch.save({lr.layer: random_hat_weights(4, 2, 32, 8, 1, 16, seed=lr.layer + 5)
                for lr in recording.layers}, given)
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump({
        "name": "portable", "recording": str(rec_path), "searcher": "random", "num_samples": 4,
        "seed": 2, "layers": LAYERS, "density_targets": [0.3], "configs_per_trial": 2,
        "chains": [
            {"name": "sink_local", "maskers": [
                {"type": "SinkMaskerConfig", "sink_size": {"search": "randint", "low": 1, "high": 16}},
                {"type": "LocalMaskerConfig",
                 "window_size": {"search": "uniform", "low": 0.02, "high": 0.3}}]},
            {"name": "hat", "maskers": [
                {"type": "HashAttentionTopKMaskerConfig", "hat_bits": 8, "hat_mlp_layers": 1,
                 "hat_weight_file": str(given),
                 "heavy_size": {"search": "uniform", "low": 0.05, "high": 0.3}}]}]}))
    storage = tmp_path / "storage"  # outside the run folder
    options = dict(config=str(study), storage_path=str(storage), progress=False)
    run_dir = run_study(RunOptions(results_dir=str(tmp_path / "results"), **options))
    rows = read_rows(run_dir)
    assert len(rows) == 8 and all(r["status"] == "completed" for r in rows.values())
    assert {r["node_id"] for r in rows.values()} == {ray.get_runtime_context().get_node_id()}
    assert not (run_dir / "ray").exists()  # Ray Tune's state went to the storage folder
    assert (run_dir / "tuned" / "given.safetensors").is_file()  # the .pt, as safetensors
    for path in (run_dir / "tuned").glob("*"):
        if path.suffix in (".yaml", ".json"):
            text = path.read_text()
            assert str(tmp_path) not in text, path  # no absolute path: not the run's, not given's
    tuned = yaml.safe_load((run_dir / "tuned" / "hat.yaml").read_text().split("\n", 2)[2])
    assert tuned["masker_configs"][0]["hat_weight_file"] == "given.safetensors"

    # move the run folder and remove the weights the study named
    moved = tmp_path / "elsewhere" / "results" / "portable"
    moved.parent.mkdir(parents=True)
    shutil.move(str(run_dir), str(moved))
    given.unlink()
    for path in sorted((moved / "tuned").glob("*.yaml")):
        assert_reproduces(path, path.name.split(".")[0], rows, recording)
    best_hat = trial_of(moved / "tuned" / "hat.yaml")
    assert_reproduces(moved / "tuned" / "hat.hub.json", "hat", rows, recording, best_hat)

    # exports: the config with its weights next to it, named relative to it
    exports = tmp_path / "exports"
    capsys.readouterr()
    assert main(["export", str(moved), "--chain", "hat", "-o", str(exports / "best.yaml")]) == 0
    said = capsys.readouterr().err
    assert f"wrote {exports / 'best.given.safetensors'}" in said and "keep it next to" in said
    assert main(["export", str(moved), "--chain", "hat", "--density", "0.3", "--format", "hub",
                 "-o", str(exports / "at_0.3.json")]) == 0
    assert "hat_weight_file: best.given.safetensors" in (exports / "best.yaml").read_text()
    shutil.move(str(exports), str(tmp_path / "exports_moved"))  # the pair travels together
    assert_reproduces(tmp_path / "exports_moved" / "best.yaml", "hat", rows, recording)
    assert_reproduces(tmp_path / "exports_moved" / "at_0.3.json", "hat", rows, recording,
                      trial_of(moved / "tuned" / "hat.density_0.3.yaml"))
    capsys.readouterr()
    assert main(["export", str(moved), "--chain", "hat"]) == 2  # printing: no file to name
    err = capsys.readouterr().err
    assert "needs the weight file given.safetensors" in err and "pass -o FILE" in err
    assert main(["export", str(moved), "--chain", "sink_local"]) == 0  # nothing to carry
    printed = ResearchAttentionConfig.from_yaml(capsys.readouterr().out)
    assert printed.to_dict() == ResearchAttentionConfig.from_file(
        moved / "tuned" / "sink_local.yaml").to_dict()

    # --resume from the storage folder after the move: experiments restored, not re-run
    again = run_study(RunOptions(results_dir=str(tmp_path / "elsewhere" / "results"),
                                 resume=True, **options))
    assert again == moved.resolve()
    resumed = read_rows(moved)
    assert {k: r["trial_id"] for k, r in resumed.items()} == {k: r["trial_id"] for k, r in rows.items()}
    assert {k: r["output_error"] for k, r in resumed.items()} == {k: r["output_error"] for k, r in rows.items()}
    assert not (moved / "ray").exists()


def test_a_missing_weight_file_is_refused_before_the_run_folder(rec_path, tmp_path):
    from sah.infra.checks import ConfigError
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump({
        "name": "nofile", "recording": str(rec_path), "chains": [{"name": "hat", "maskers": [
            {"type": "HashAttentionTopKMaskerConfig", "hat_bits": 8, "hat_mlp_layers": 1,
             "hat_weight_file": str(tmp_path / "missing.pt"), "heavy_size": 0.1}]}]}))
    with pytest.raises(ConfigError, match=r"study.yaml: chains\[0\].maskers\[0\]: "
                                          r"hat_weight_file .*missing.pt: no such file"):
        run_study(RunOptions(config=str(study), results_dir=str(tmp_path / "r"), progress=False))
    assert not (tmp_path / "r").exists()
