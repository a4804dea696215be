"""Pickled HashAttention weight files run code when loaded: only the person opts in
(--allow-pickle or SAH_ALLOW_PICKLE=1), never a config file or a study, and a payload never
runs without that opt-in. Real Ray Tune for the run."""

import os
import pickle

import pytest

from sah.cli import main
from sah.maskers.hash_attention import random_hat_weights
from sah.tuning.runner import RunOptions, run_study
from sah.study.parse import load_study
from sah.infra.checks import ConfigError
from tuning_support import error_line, read_csv, recording_fixture, write_study

HAT = {"type": "HashAttentionTopKMaskerConfig", "heavy_size": 4, "hat_bits": 8,
       "hat_mlp_layers": 2, "hat_mlp_hidden_size": 6}

rec_path = recording_fixture(seed=2)


class _Payload:
    """Unpickling this runs ``os.mkdir(marker)``: proof that a file ran code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_a_config_file_cannot_switch_pickle_loading_on_only_the_person_can(tmp_path, rec_path,
                                                                           capsys, monkeypatch):
    """A chain config or study with ``hat_weight_file: x.pkl`` and ``allow_pickle: true`` is
    refused (``sah resources --config``, ``sah patterns --config``, studies) and the pickle's
    payload never runs; the opt-in is the person's (--allow-pickle or SAH_ALLOW_PICKLE=1),
    and with it a trusted pickle loads."""
    from sah.infra.pickle_opt_in import set_pickle_allowed
    monkeypatch.delenv("SAH_ALLOW_PICKLE", raising=False)
    marker = tmp_path / "payload_ran"
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({0: _Payload(marker)}))
    cfg = write_study(tmp_path / "chain.yaml", {"masker_configs": [
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
    study = write_study(tmp_path / "study.yaml", {
        "name": "p", "recording": str(rec_path), "chains": [
            {"name": "h", "maskers": [{**HAT, "hat_weight_file": str(evil), "allow_pickle": True}]}]})
    with pytest.raises(ConfigError, match=r"chains\[0\]\.maskers\[0\]\.allow_pickle: .*--allow-pickle"):
        load_study(study)
    assert not marker.exists()
    # without the field and without the opt-in: refused, naming the fix
    plain = write_study(tmp_path / "plain.yaml", {"masker_configs": [{**HAT, "hat_weight_file": str(evil)}]})
    assert main(["resources", "--recording", str(rec_path), "--config", str(plain),
                 "--layer", "0"]) == 2
    assert "--allow-pickle" in error_line(capsys.readouterr().err, "resources")
    assert not marker.exists()
    # the person's opt-in (flag or environment) loads a trusted pickle
    good = tmp_path / "good.pkl"
    good.write_bytes(pickle.dumps({layer: random_hat_weights(2, 1, 16, 8, 2, 6, seed=layer)
                                   for layer in (0, 1)}))
    trusted = write_study(tmp_path / "trusted.yaml", {"masker_configs": [{**HAT, "hat_weight_file": str(good)}]})
    ok_args = ["resources", "--recording", str(rec_path), "--config", str(trusted), "--layer", "1",
               "--heads", "0"]
    assert main([*ok_args, "--allow-pickle"]) == 0
    assert "Total Calculation Points" in capsys.readouterr().out
    set_pickle_allowed(False)
    monkeypatch.setenv("SAH_ALLOW_PICKLE", "1")
    assert main(ok_args) == 0


def test_a_run_reads_a_pickle_weight_file_only_with_the_persons_opt_in(ray_session, rec_path,
                                                                        tmp_path, monkeypatch):
    """A run reads a .pkl weight file only with the person's opt-in (RunOptions.allow_pickle
    / --allow-pickle; the driver reads it and the trials get the tensors); without it the
    study is refused up front, nothing written."""
    monkeypatch.delenv("SAH_ALLOW_PICKLE", raising=False)
    good = tmp_path / "good.pkl"
    good.write_bytes(pickle.dumps({layer: random_hat_weights(2, 1, 16, 8, 2, 6, seed=layer)
                                   for layer in (0, 1)}))
    study = write_study(tmp_path / "study.yaml", {
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
    rows = read_csv(run_dir / "trials.csv")
    assert len(rows) == 3 and all(r["status"] == "completed" for r in rows), rows
