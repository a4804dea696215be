"""End to end with real Ray Tune: a small study on a saved synthetic recording, every output
file, Pareto fronts against a brute force, exports that reproduce their figures, failures
recorded per trial, ASHA with multi-objective Optuna, and `sah compare`."""

import csv
import json

import pytest
import yaml

from sah.attention import ResearchAttentionConfig
from sah.evaluate import evaluate_config
from sah.recording import load_recording
from sah.tuning.runner import RunOptions, run_study
from helpers import brute_force_front
from tuning_support import read_csv, recording_fixture, write_study

pytestmark = pytest.mark.slow


rec_path = recording_fixture("synthetic.safetensors", num_layers=3, num_heads=4, num_kv_heads=2,
                             head_dim=32, num_keys=512, num_queries=8, seed=3)


def study_file(tmp_path, rec_path, **extra):
    data = {
        "name": "e2e", "recording": str(rec_path), "objective": "sparsity_10",
        "density_targets": [0.1, 0.25], "searcher": "random", "num_samples": 6, "seed": 7,
        "layers_per_report": 1,
        "chains": [
            {"name": "sink_local", "maskers": [
                {"type": "SinkMaskerConfig", "sink_size": {"search": "randint", "low": 1, "high": 32}},
                {"type": "LocalMaskerConfig",
                 "window_size": {"search": "loguniform", "low": 0.01, "high": 0.4}},
                {"type": "FailingMaskerConfig", "fail": {"search": "grid", "values": [0, 0, 1]}}]},
            {"name": "strided", "searcher": "grid", "maskers": [
                {"type": "StridedPatternConfig", "window_size": {"search": "grid", "values": [8, 32]},
                 "stride": {"search": "choice", "values": [8, 64]}}]},
        ],
    }
    data.update(extra)
    return write_study(tmp_path / "study.yaml", data)


def test_small_study_end_to_end(ray_session, rec_path, tmp_path, capsys):
    run_dir = run_study(RunOptions(config=str(study_file(tmp_path, rec_path)),
                                   results_dir=str(tmp_path / "results"), progress=False))
    for name in ("run.yaml", "trials.csv", "summary.md", "pareto.png", "pareto.json",
                 "tuned/sink_local.yaml", "tuned/sink_local.hub.json", "tuned/strided.yaml",
                 "tuned/strided.hub.json", "resources/sink_local.json", "resources/strided.json"):
        assert (run_dir / name).is_file(), name
    assert (run_dir / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (run_dir / "ray" / "_batched" / "tuner.pkl").is_file()  # one experiment: all batches
    recording = load_recording(rec_path)
    meta = yaml.safe_load((run_dir / "run.yaml").read_text())
    assert meta["recordings"][0]["hash"] == recording.metadata["content_hash"]
    assert meta["fit_recordings"] == []  # nothing fitted
    assert meta["study"]["chains"][0]["name"] == "sink_local" and "ray" in meta["versions"]

    rows = read_csv(run_dir / "trials.csv")
    by_chain = {c: [r for r in rows if r["chain"] == c] for c in ("sink_local", "strided")}
    assert len(by_chain["sink_local"]) == 3 * 6 and len(by_chain["strided"]) == 4
    failed = [r for r in by_chain["sink_local"] if r["FailingMaskerConfig_fail"] == "1"]
    assert len(failed) == 6 and all(r["status"] == "failed" for r in failed)
    assert all("deliberate failure" in r["error_message"] and r["score"] == "" for r in failed)
    ok = [r for r in rows if r["status"] == "completed"]
    assert len(ok) == 12 + 4
    assert {(r["StridedPatternConfig_window_size"], r["StridedPatternConfig_stride"])
            for r in by_chain["strided"]} == {("8", "8"), ("8", "64"), ("32", "8"), ("32", "64")}

    fronts = json.loads((run_dir / "pareto.json").read_text())
    for chain in ("sink_local", "strided"):
        done = [r for r in by_chain[chain] if r["status"] == "completed"]
        points = [(float(r["density"]), float(r["output_error"])) for r in done]
        expected = [int(done[i]["trial"]) for i in brute_force_front(points)]
        assert [p["trial"] for p in fronts[chain]] == expected
        best = min(done, key=lambda r: (float(r["score"]), float(r["density"])))
        tuned = ResearchAttentionConfig.from_file(run_dir / "tuned" / f"{chain}.yaml")
        hub = ResearchAttentionConfig.from_file(run_dir / "tuned" / f"{chain}.hub.json")
        assert tuned.to_dict() == hub.to_dict()
        again = evaluate_config(tuned, recording)  # fresh process state: same figures
        assert again.output_error == float(best["output_error"])
        assert again.density == float(best["density"])
        # the exported config is the best row's parameters
        params = {k: v for k, v in best.items() if "Config_" in k and v != ""}
        flat = {f"{m['type']}_{k}": str(v) for m in tuned.to_dict()["masker_configs"]
                for k, v in m.items() if k != "type"}
        assert all(flat[k] == v for k, v in params.items())
        for target in (0.1, 0.25):
            within = [r for r in done if float(r["density"]) <= target]
            path = run_dir / "tuned" / f"{chain}.density_{target:g}.yaml"
            assert path.is_file() == bool(within)
            if within:
                pick = min(within, key=lambda r: float(r["output_error"]))
                cfg = ResearchAttentionConfig.from_file(path)
                assert evaluate_config(cfg, recording).output_error == float(pick["output_error"])

    summary = (run_dir / "summary.md").read_text()
    assert "| sink_local | 18 (12/6/0)" in summary and "| strided | 4 (4/0/0)" in summary
    resources = json.loads((run_dir / "resources/strided.json").read_text())
    assert resources["source"]["shape"] == [8, 512]

    from sah.cli import main
    assert main(["export", str(run_dir), "--chain", "sink_local", "--density", "0.25",
                 "--output", str(tmp_path / "exp.yaml")]) == 0
    exported = ResearchAttentionConfig.from_file(tmp_path / "exp.yaml")
    assert exported.to_dict() == ResearchAttentionConfig.from_file(
        run_dir / "tuned" / "sink_local.density_0.25.yaml").to_dict()
    capsys.readouterr()
    assert main(["compare", str(run_dir), str(run_dir), "--format", "csv"]) == 0
    table = list(csv.reader(capsys.readouterr().out.splitlines()))
    assert table[0][:3] == ["chain", f"{run_dir}.score", f"{run_dir}.output_error"]
    assert [r[0] for r in table[1:]] == ["sink_local", "strided"]  # chains as rows
    strided = dict(zip(table[0], next(r for r in table if r[0] == "strided")))
    assert strided[f"{run_dir}.score"] != "" and strided[f"{run_dir}.trials"] == "4/4"


def test_asha_and_multi_objective_optuna(ray_session, rec_path, tmp_path):
    path = study_file(tmp_path, rec_path, name="asha", searcher="optuna", multi_objective=True,
                      num_samples=8, scheduler={"type": "asha", "grace_period": 1,
                                                "reduction_factor": 2},
                      chains=[{"name": "topk", "maskers": [
                          {"type": "SinkMaskerConfig", "sink_size": 2},
                          {"type": "LocalMaskerConfig",
                           "window_size": {"search": "uniform", "low": 0.01, "high": 0.5}}]}])
    run_dir = run_study(RunOptions(config=str(path), results_dir=str(tmp_path / "r"),
                                   progress=False))
    rows = read_csv(run_dir / "trials.csv")
    assert len(rows) == 8
    for r in rows:
        assert r["status"] in ("completed", "stopped")
        assert (int(r["layers_done"]) == 3) == (r["status"] == "completed")
    done = [r for r in rows if r["status"] == "completed"]
    fronts = json.loads((run_dir / "pareto.json").read_text())
    points = [(float(r["density"]), float(r["output_error"])) for r in done]
    assert [p["trial"] for p in fronts["topk"]] == [int(done[i]["trial"])
                                                   for i in brute_force_front(points)]
