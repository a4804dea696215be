"""A good study parses; bad studies are refused before any trial, with the file and YAML
path, and nothing is written; command-line values win over the study's."""

import argparse

import pytest
import yaml

from sah.tuning.runner import RunOptions, run_study
from sah.study.parse import load_study
from tuning_support import assert_refused, write_study

GOOD = {
    "name": "t", "recording": "REC", "objective": "sparsity_10", "density_targets": [0.1],
    "searcher": "random", "num_samples": 2, "seed": 0,
    "chains": [
        {"name": "a", "maskers": [{"type": "SinkMaskerConfig", "sink_size": 4},
                                  {"type": "LocalMaskerConfig",
                                   "window_size": {"search": "randint", "low": 2, "high": 9}}]},
        {"name": "b", "maskers": [{"type": "SinkMaskerConfig",
                                   "sink_size": {"search": "uniform", "low": 0.01, "high": 0.2}},
                                  {"type": "LocalMaskerConfig", "window_size": 8}]},
    ],
}


def edit(recording="REC", **changes):
    """GOOD with ``recording`` and ``changes`` ("chains/1/name": a path through the study)."""
    data = yaml.safe_load(yaml.safe_dump({**GOOD, "recording": str(recording)}))
    for dotted, value in changes.items():
        target = data
        keys = dotted.split("/")
        for k in keys[:-1]:
            target = target[int(k)] if isinstance(target, list) else target[k]
        last = keys[-1]
        if isinstance(target, list):
            target[int(last)] = value
        else:
            target[last] = value
    return data


def test_good_study_parses(tmp_path):
    study = load_study(write_study(tmp_path / "study.yaml", GOOD))
    assert [c.name for c in study.chains] == ["a", "b"]
    assert study.chains[0].param_names == ["LocalMaskerConfig_window_size"]
    cfg = study.chains[1].build({"SinkMaskerConfig_sink_size": 0.05})
    assert cfg.masker_configs[0].sink_size == 0.05 and cfg.masker_configs[1].window_size == 8


def test_bad_yaml(tmp_path, rec_path):
    assert_refused(tmp_path, "name: x\nchains: [\n  - {", "study.yaml: not valid YAML")


def test_unknown_masker(tmp_path, rec_path):
    data = edit(rec_path, **{"chains/1/maskers/0": {"type": "NoSuchMaskerConfig", "x": 1}})
    assert_refused(tmp_path, data, "study.yaml: chains[1].maskers[0].type",
                   "unknown masker type 'NoSuchMaskerConfig'")


def test_unknown_field(tmp_path, rec_path):
    data = edit(rec_path, **{"chains/0/maskers/0": {"type": "SinkMaskerConfig", "sinks": 4}})
    assert_refused(tmp_path, data, "chains[0].maskers[0].sinks",
                   "SinkMaskerConfig has no field 'sinks'")


@pytest.mark.parametrize("domain, path, fragment", [
    ({"search": "uniform", "low": 0.01, "high": 1.5}, "sink_size.high", "fraction of the keys"),
    ({"search": "uniform", "low": 0.3, "high": 0.2}, "sink_size.high", "low must be below high"),
    ({"search": "loguniform", "low": 0.0, "high": 0.2}, "sink_size.low", "needs low > 0"),
    ({"search": "gaussian", "low": 0.0, "high": 0.2}, "sink_size.search", "use one of grid"),
    ({"search": "randint", "low": 0.5, "high": 3}, "sink_size.low", "needs ints"),
    ({"search": "choice", "values": [4, -2]}, "sink_size.values[1]", "must be >= 0"),
    ({"search": "randint", "low": -5, "high": 3}, "sink_size.low", "must be >= 0"),
    ({"search": "uniform", "low": 0.1}, "sink_size", "needs 'high'"),
])
def test_bad_domains(tmp_path, rec_path, domain, path, fragment):
    data = edit(rec_path, **{"chains/1/maskers/0/sink_size": domain})
    assert_refused(tmp_path, data, f"study.yaml: chains[1].maskers[0].{path}", fragment)


@pytest.mark.parametrize("key, value, fragment", [
    ("num_samples", "many", "num_samples: got 'many'"),
    ("searcher", "bayes", "searcher: got 'bayes'"),
    ("objective", "fast", "objective: got 'fast'"),
    ("density_targets", [0.1, 2], "density_targets[1]"),
    ("surprise", 1, "surprise: unknown study key"),
    ("chains/0/maskers/0/sink_size", "big", "chains[0].maskers[0].sink_size"),
    ("chains/1/name", "a", "chains[1].name: 'a' is already"),
])
def test_wrong_types_and_keys(tmp_path, rec_path, key, value, fragment):
    assert_refused(tmp_path, edit(rec_path, **{key: value}), fragment)


def test_grid_searcher_needs_enumerable_domains(tmp_path, rec_path):
    assert_refused(tmp_path, edit(rec_path, searcher="grid"), "chains[0].maskers[1].window_size",
                   "cannot be enumerated by the grid searcher")


def test_missing_recording(tmp_path):
    missing = tmp_path / "nowhere.safetensors"
    assert_refused(tmp_path, {**GOOD, "recording": str(missing)}, str(missing), "does not exist")


def test_layer_not_in_recording(tmp_path, rec_path):
    assert_refused(tmp_path, edit(rec_path, layers=[7]),
                   "layers: layer 7 is not in the recording")


def test_existing_run_folder_is_never_overwritten(tmp_path, rec_path):
    results = tmp_path / "results"
    run_dir = results / "t"
    run_dir.mkdir(parents=True)
    (run_dir / "run.yaml").write_text(yaml.safe_dump({"study": {"name": "other"}}))
    (run_dir / "trials.csv").write_text("keep me\n")
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    study = write_study(tmp_path / "study.yaml", edit(rec_path))
    for resume, fragment in ((False, "already holds a run; pass --resume"),
                             (True, "holds a different study")):
        with pytest.raises(FileExistsError) as info:
            run_study(RunOptions(config=str(study), results_dir=str(results), resume=resume,
                                 progress=False))
        assert fragment in str(info.value)
        after = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
        assert after == before


def test_resume_without_run(tmp_path, rec_path):
    study = write_study(tmp_path / "study.yaml", edit(rec_path))
    with pytest.raises(FileNotFoundError, match="no run to resume"):
        run_study(RunOptions(config=str(study), results_dir=str(tmp_path / "r"), resume=True,
                             progress=False))
    assert not (tmp_path / "r").exists()


def test_cli_exit_code_and_one_line_message(tmp_path, rec_path, capsys):
    from sah.cli import main
    study = write_study(tmp_path / "study.yaml", edit(**{"chains/0/maskers/0": {"type": "Nope"}}))
    code = main(["tune", "--config", str(study), "--results-dir", str(tmp_path / "r"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "chains[0].maskers[0].type" in err
    assert not (tmp_path / "r").exists()


def test_command_line_num_samples_wins_over_the_study_and_its_chains(tmp_path, rec_path):
    """``--num-samples`` (RunOptions.num_samples) wins over the study's ``num_samples`` and
    a chain's own; run.yaml's study says so, and the flag's help states it."""
    path = write_study(tmp_path / "study.yaml",
                       edit(rec_path, num_samples=4, **{"chains/1/num_samples": 5}))
    assert [c.num_samples for c in load_study(path).chains] == [4, 5]
    options = RunOptions(config=str(path), num_samples=3)
    forced = load_study(path, options.overrides())
    assert [c.num_samples for c in forced.chains] == [3, 3]
    assert all(c.to_dict()["num_samples"] == 3 for c in forced.chains)  # run.yaml says so
    from sah.cli.tune import add_arguments
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert "wins over" in next(a.help for a in parser._actions if a.dest == "num_samples")
