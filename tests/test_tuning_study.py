"""Bad studies are refused before any trial, with the file and YAML path; nothing is written."""


import pytest
import yaml

from sah.recording import make_synthetic_recording, save_recording
from sah.tuning.runner import RunOptions, run_study
from sah.study.parse import load_study
from sah.infra.checks import ConfigError

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


@pytest.fixture(scope="module")
def rec_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("rec") / "rec.safetensors"
    save_recording(make_synthetic_recording(num_layers=2, num_heads=2, num_kv_heads=1,
                                            head_dim=16, num_keys=64, num_queries=4), path)
    return path


def write(tmp_path, data, name="study.yaml"):
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


def edit(**changes):
    data = yaml.safe_load(yaml.safe_dump(GOOD))
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


def assert_refused(tmp_path, data, *fragments, rec=None):
    if isinstance(data, dict) and rec is not None:
        data = {**data, "recording": str(rec)}
    study = write(tmp_path, data)
    results = tmp_path / "results"
    with pytest.raises((ConfigError, FileNotFoundError, FileExistsError, ValueError)) as info:
        run_study(RunOptions(config=str(study), results_dir=str(results), progress=False))
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    assert not results.exists()  # nothing written
    return message


def test_good_study_parses(tmp_path):
    study = load_study(write(tmp_path, GOOD))
    assert [c.name for c in study.chains] == ["a", "b"]
    assert study.chains[0].param_names == ["LocalMaskerConfig_window_size"]
    cfg = study.chains[1].build({"SinkMaskerConfig_sink_size": 0.05})
    assert cfg.masker_configs[0].sink_size == 0.05 and cfg.masker_configs[1].window_size == 8


def test_bad_yaml(tmp_path, rec_path):
    assert_refused(tmp_path, "name: x\nchains: [\n  - {", "study.yaml: not valid YAML")


def test_unknown_masker(tmp_path, rec_path):
    data = edit(**{"chains/1/maskers/0": {"type": "NoSuchMaskerConfig", "x": 1}})
    assert_refused(tmp_path, data, "study.yaml: chains[1].maskers[0].type",
                   "unknown masker type 'NoSuchMaskerConfig'", rec=rec_path)


def test_unknown_field(tmp_path, rec_path):
    data = edit(**{"chains/0/maskers/0": {"type": "SinkMaskerConfig", "sinks": 4}})
    assert_refused(tmp_path, data, "chains[0].maskers[0].sinks",
                   "SinkMaskerConfig has no field 'sinks'", rec=rec_path)


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
    data = edit(**{"chains/1/maskers/0/sink_size": domain})
    assert_refused(tmp_path, data, f"study.yaml: chains[1].maskers[0].{path}", fragment, rec=rec_path)


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
    assert_refused(tmp_path, edit(**{key: value}), fragment, rec=rec_path)


def test_grid_searcher_needs_enumerable_domains(tmp_path, rec_path):
    assert_refused(tmp_path, edit(searcher="grid"), "chains[0].maskers[1].window_size",
                   "cannot be enumerated by the grid searcher", rec=rec_path)


def test_missing_recording(tmp_path):
    missing = tmp_path / "nowhere.safetensors"
    assert_refused(tmp_path, {**GOOD, "recording": str(missing)}, str(missing), "does not exist")


def test_layer_not_in_recording(tmp_path, rec_path):
    assert_refused(tmp_path, {**edit(layers=[7])}, "layers: layer 7 is not in the recording",
                   rec=rec_path)


def test_existing_run_folder_is_never_overwritten(tmp_path, rec_path):
    results = tmp_path / "results"
    run_dir = results / "t"
    run_dir.mkdir(parents=True)
    (run_dir / "run.yaml").write_text(yaml.safe_dump({"study": {"name": "other"}}))
    (run_dir / "trials.csv").write_text("keep me\n")
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    study = write(tmp_path, {**GOOD, "recording": str(rec_path)})
    for resume, fragment in ((False, "already holds a run; pass --resume"),
                             (True, "holds a different study")):
        with pytest.raises(FileExistsError) as info:
            run_study(RunOptions(config=str(study), results_dir=str(results), resume=resume,
                                 progress=False))
        assert fragment in str(info.value)
        after = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
        assert after == before


def test_resume_without_run(tmp_path, rec_path):
    study = write(tmp_path, {**GOOD, "recording": str(rec_path)})
    with pytest.raises(FileNotFoundError, match="no run to resume"):
        run_study(RunOptions(config=str(study), results_dir=str(tmp_path / "r"), resume=True,
                             progress=False))
    assert not (tmp_path / "r").exists()


def test_cli_exit_code_and_one_line_message(tmp_path, rec_path, capsys):
    from sah.cli import main
    study = write(tmp_path, edit(**{"chains/0/maskers/0": {"type": "Nope"}}))
    code = main(["tune", "--config", str(study), "--results-dir", str(tmp_path / "r"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "chains[0].maskers[0].type" in err
    assert not (tmp_path / "r").exists()
