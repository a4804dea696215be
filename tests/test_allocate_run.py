"""``sah allocate`` on a real (small) run and a study's ``allocate:`` section. A real Ray Tune study on small synthetic recordings with text spans; the CLI's
written config is loaded and evaluated again, refusals write nothing, and a run stopped
after tuning allocates on ``--resume``."""

import json
import math
import shutil

import pytest
import yaml

from sah.allocation import evaluate_figures
from sah.attention import ResearchAttentionConfig
from sah.cli import main
from sah.evaluate import evaluate_config
from sah.recording import load_recording
from sah.tuning.runner import RunOptions, run_study
from sah.study.parse import parse_study
from sah.infra.checks import ConfigError
from tuning_support import save_synthetic, write_study

SHAPE = dict(num_layers=3, num_heads=4, num_kv_heads=2, head_dim=16, num_keys=256, num_queries=4)
TARGET = 0.3


def alloc_study(recs, **extra):
    data = {
        "name": "alloc", "recordings": [str(recs["alpha"]), str(recs["beta"])],
        "density_targets": [TARGET], "searcher": "grid", "layers_per_report": 3,
        "chains": [
            {"name": "topk", "maskers": [
                {"type": "SinkMaskerConfig", "sink_size": 4},
                {"type": "LocalMaskerConfig", "window_size": 8},
                {"type": "OracleTopKConfig",
                 "heavy_size": {"search": "grid", "values": [0.05, 0.1, 0.2, 0.4]}}]},
            {"name": "sinks", "maskers": [
                {"type": "SinkMaskerConfig", "sink_size": {"search": "grid", "values": [8, 16]}}]},
        ],
        "allocate": {"density_targets": [TARGET], "chains": ["topk"], "per_head": True},
    }
    data.update(extra)
    return data


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("alloc")
    recs = {name: save_synthetic(d / f"{name}.safetensors", text, 0, 256, seed=seed, **SHAPE)
            for name, seed, text in (("alpha", 1, "a"), ("beta", 2, "b"), ("gamma", 3, "c"))}
    study = write_study(d / "alloc.yaml", alloc_study(recs))
    run_dir = run_study(RunOptions(config=str(study), results_dir=str(d / "results"),
                                   progress=False))
    return run_dir, recs, study


def test_study_allocate_section_writes_config_and_summary(run):
    run_dir, recs, _ = run
    path = run_dir / "tuned" / f"topk.allocated.density_{TARGET:g}.yaml"
    config = ResearchAttentionConfig.from_file(path)
    assert config.layer_overrides and set(config.layer_overrides) <= {0, 1, 2}
    recordings = [load_recording(recs["alpha"]), load_recording(recs["beta"])]
    figures = evaluate_figures(config, recordings, ["alpha", "beta"])
    assert figures.density <= TARGET + 1e-12
    summary = (run_dir / "summary.md").read_text()
    assert "## Allocation across layers and heads" in summary
    row = next(line for line in summary.splitlines() if line.startswith("| topk | 0.3 |"))
    assert f"{figures.output_error:.4g}" in row and "per head" in row
    assert yaml.safe_load((run_dir / "run.yaml").read_text())["study"]["allocate"]["chains"] == ["topk"]


def test_cli_allocate_writes_a_config_whose_figures_are_evaluate_config(run, tmp_path, capsys):
    run_dir, recs, _ = run
    out, js = tmp_path / "a.yaml", tmp_path / "a.json"
    rc = main(["allocate", str(run_dir), "--chain", "topk", "--density", str(TARGET), "--per-head",
               "--heldout", str(recs["gamma"]), "--no-validate", "-o", str(out), "--json", str(js),
               "--quiet"])
    assert rc == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "run's best uniform" in printed and "allocated per head" in printed
    data = json.loads(js.read_text())
    config = ResearchAttentionConfig.from_file(out)
    assert config.layer_overrides
    recordings = [load_recording(recs["alpha"]), load_recording(recs["beta"])]
    figures = evaluate_figures(config, recordings, ["alpha", "beta"])
    assert figures.density <= TARGET + 1e-12
    assert data["allocated"]["density"] == pytest.approx(figures.density, rel=1e-9)
    assert data["allocated"]["output_error"] == pytest.approx(figures.output_error, rel=1e-9)
    for name, rec in (("alpha", recordings[0]), ("beta", recordings[1])):
        ev = evaluate_config(config, rec)
        assert data["allocated"]["per_recording"][name]["output_error"] == pytest.approx(
            ev.output_error, rel=1e-9)
    held = evaluate_config(config, load_recording(recs["gamma"]))
    assert data["heldout_figures"]["allocated"]["output_error"] == pytest.approx(
        held.output_error, rel=1e-9)
    # the baseline is the run's best uniform config at density <= T (tuned/ holds it)
    uniform = ResearchAttentionConfig.from_file(run_dir / "tuned" / f"topk.density_{TARGET:g}.yaml")
    assert data["uniform"]["output_error"] == pytest.approx(
        evaluate_figures(uniform, recordings, ["alpha", "beta"]).output_error, rel=1e-9)
    assert data["allocated"]["output_error"] < data["uniform"]["output_error"]


def test_cli_allocate_per_layer_starts_from_per_layer_csv(run, tmp_path, capsys):
    run_dir, recs, _ = run
    js = tmp_path / "l.json"
    rc = main(["allocate", str(run_dir), "--chain", "topk", "--density", str(TARGET),
               "--heldout", str(recs["gamma"]), "--no-validate", "--json", str(js), "--quiet"])
    assert rc == 0, capsys.readouterr().err
    data = json.loads(js.read_text())
    assert data["points"]["run"] == 4  # the four grid trials of the run are curve points
    assert not data["per_head"] and all(not isinstance(s, list) for s in data["sizes"])
    printed = capsys.readouterr().out
    config = ResearchAttentionConfig.from_yaml(printed[printed.index("masker_configs:"):])
    recordings = [load_recording(recs["alpha"]), load_recording(recs["beta"])]
    figures = evaluate_figures(config, recordings, ["alpha", "beta"])
    assert figures.density <= TARGET + 1e-12
    assert data["allocated"]["output_error"] == pytest.approx(figures.output_error, rel=1e-9)


@pytest.mark.parametrize("args, message", [
    (["--chain", "nope", "--density", "0.3"], "no chain 'nope' in the study; chains: topk, sinks"),
    (["--chain", "sinks", "--density", "0.3"], "its family has no size field"),
    (["--chain", "topk", "--density", "0.01"], "is below the least mean density chain 'topk' reaches"),
    (["--chain", "topk", "--density", "1.5"], "--density: got 1.5"),
    (["--chain", "topk", "--density", "0.3", "--per-head", "--validate"],
     "--per-head: the run's recordings have 4 query heads but the embedded model"),
])
def test_cli_allocate_refusals_write_nothing(run, tmp_path, capsys, args, message):
    run_dir, recs, _ = run
    out = tmp_path / "x.yaml"
    validate = [] if "--validate" in args else ["--no-validate"]
    args = [a for a in args if a != "--validate"]
    rc = main(["allocate", str(run_dir), *args, "--heldout", str(recs["gamma"]), *validate,
               "-o", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and err.count("\n") == 1, err
    assert not out.exists()
    if "least mean density" in message:
        least = float(err.split("reaches (")[1].split(":")[0])
        assert 0.01 < least < TARGET and f"--density {math.ceil(least * 1e4) / 1e4:g}" in err


def test_cli_allocate_refuses_a_run_without_per_layer_csv(run, tmp_path, capsys):
    run_dir, recs, _ = run
    copy = tmp_path / "old_run"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("ray"))
    (copy / "per_layer.csv").unlink()
    rc = main(["allocate", str(copy), "--chain", "topk", "--density", "0.3", "--no-validate",
               "--heldout", str(recs["gamma"]), "-o", str(tmp_path / "x.yaml")])
    err = capsys.readouterr().err
    assert rc == 2 and "per_layer.csv: no per-layer table" in err and "sah tune" in err
    assert not (tmp_path / "x.yaml").exists()


def test_cli_allocate_refuses_a_heldout_the_allocation_used(run, tmp_path, capsys):
    run_dir, recs, _ = run
    rc = main(["allocate", str(run_dir), "--chain", "topk", "--density", "0.3", "--no-validate",
               "--heldout", str(recs["alpha"]), "-o", str(tmp_path / "x.yaml")])
    err = capsys.readouterr().err
    assert rc == 2 and "overlaps the run's scored recording alpha" in err
    assert not (tmp_path / "x.yaml").exists()


@pytest.mark.parametrize("section, message", [
    ({"density_targets": [0.3], "chains": ["sinks"]}, "allocate.chains[0]: chain 'sinks' cannot be allocated"),
    ({"density_targets": [0.3], "chains": ["nope"]}, "allocate.chains[0]: no chain 'nope'"),
    ({"density_targets": [], "chains": ["topk"]}, "allocate.density_targets: got []"),
    ({"density_targets": [0.3], "per_head": "yes"}, "allocate.per_head: got 'yes'"),
    ({"density_targets": [0.3], "budget": 1}, "allocate.budget: unknown key"),
])
def test_study_allocate_section_refusals(run, section, message):
    _, recs, _ = run
    with pytest.raises(ConfigError, match=None) as info:
        parse_study(alloc_study(recs, allocate=section), "s.yaml")
    assert str(info.value).startswith("s.yaml: ") and message in str(info.value)


def test_resume_after_tuning_still_allocates(run, tmp_path):
    run_dir, recs, study = run
    copy = tmp_path / "results" / "alloc"
    shutil.copytree(run_dir, copy)
    allocated = copy / "tuned" / f"topk.allocated.density_{TARGET:g}.yaml"
    expected = allocated.read_text()
    allocated.unlink()
    progress = json.loads((copy / "progress.json").read_text())
    progress.pop("_outputs")  # stopped after tuning, before the outputs were complete
    (copy / "progress.json").write_text(json.dumps(progress))
    run_study(RunOptions(config=str(study), results_dir=str(tmp_path / "results"), resume=True,
                         progress=False))
    assert allocated.read_text() == expected
    assert json.loads((copy / "progress.json").read_text())["_outputs"] == "complete"
    assert (copy / "summary.md").read_text().count("## Allocation across layers and heads") == 1


@pytest.mark.slow
def test_cli_allocate_in_model_kl(run, tmp_path, capsys):
    """The in-model check runs the embedded model (real weights) on a short window (per
    layer: the synthetic recordings have 4 heads, the model 9)."""
    run_dir, recs, _ = run
    js = tmp_path / "v.json"
    rc = main(["allocate", str(run_dir), "--chain", "topk", "--density", str(TARGET),
               "--heldout", str(recs["gamma"]), "--validate-text", "manual", "--tokens", "256",
               "--positions", "16", "--json", str(js), "-o", str(tmp_path / "v.yaml"), "--quiet"])
    assert rc == 0, capsys.readouterr().err
    data = json.loads(js.read_text())
    assert set(data["kl"]) == {"uniform", "allocated"}
    assert all(math.isfinite(v) and v >= 0 for v in data["kl"].values())
    assert data["validation"]["text"] == "manual" and "in-model KL (manual)" in capsys.readouterr().out
