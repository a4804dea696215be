"""Recording sets: a study scores on several recordings and fits HashAttention on others.
Real Ray Tune on small synthetic recordings whose metadata hold text spans: per-recording columns and per_layer.csv checked against direct evaluation,
run.yaml's lists, the summary, the fit report on fit and scored recordings, ASHA's
intermediate reports, `sah transfer`, and the refusals (overlapping spans, shapes, layers)
before anything is written."""

import csv
import json

import pytest
import yaml

from sah.attention import ResearchAttentionConfig
from sah.evaluate import evaluate_config
from sah.recording import load_recording
from sah.tuning.runner import RunOptions, run_study
from tuning_support import assert_refused, read_csv, save_synthetic, write_study

LAYERS = 3
SHAPE = dict(num_layers=LAYERS, num_heads=4, num_kv_heads=2, head_dim=16, num_keys=256,
             num_queries=4)


@pytest.fixture(scope="module")
def recs(tmp_path_factory):
    d = tmp_path_factory.mktemp("recs")
    return {
        "alpha": save_synthetic(d / "alpha.safetensors", "a", 0, 256, **SHAPE, seed=1),
        "beta": save_synthetic(d / "beta.safetensors", "b", 0, 256, **SHAPE, seed=2),
        # text a, a span disjoint from alpha's
        "fit": save_synthetic(d / "fit.safetensors", "a", 1000, 1256, **SHAPE, seed=3),
        # text a, a span overlapping alpha's
        "overlap": save_synthetic(d / "overlap.safetensors", "a", 200, 456, **SHAPE, seed=4),
        "long": save_synthetic(d / "long.safetensors", "a", 5000, 6024,
                               **{**SHAPE, "num_keys": 1024}, seed=5),
        "wide": save_synthetic(d / "wide.safetensors", "c", 0, 256,
                               **{**SHAPE, "num_heads": 2, "num_kv_heads": 1}, seed=6),
        # the same tensors as beta, without span metadata
        "beta_copy": save_synthetic(d / "beta_copy.safetensors", **SHAPE, seed=2),
    }


def sets_study(recs, **extra):
    data = {
        "name": "sets", "recordings": [str(recs["alpha"]), str(recs["beta"])],
        "fit_recordings": [str(recs["fit"])], "density_targets": [0.2, 0.5],
        "searcher": "random", "num_samples": 5, "seed": 3, "layers_per_report": 1,
        "fit_hash_attention": {"bits": 8, "steps": 2, "hat_mlp_layers": 1,
                               "hat_mlp_hidden_size": 8},
        "chains": [
            {"name": "sink_local", "maskers": [
                {"type": "SinkMaskerConfig", "sink_size": {"search": "randint", "low": 1, "high": 16}},
                {"type": "LocalMaskerConfig",
                 "window_size": {"search": "uniform", "low": 0.02, "high": 0.4}}]},
            {"name": "hat", "maskers": [
                {"type": "SinkMaskerConfig", "sink_size": 4},
                {"type": "HashAttentionTopKMaskerConfig",
                 "heavy_size": {"search": "uniform", "low": 0.05, "high": 0.4}}]},
            {"name": "local_tpe", "searcher": "optuna", "num_samples": 3, "maskers": [
                {"type": "LocalMaskerConfig",
                 "window_size": {"search": "uniform", "low": 0.02, "high": 0.4}}]},
        ],
    }
    data.update(extra)
    return data


@pytest.fixture(scope="module")
def finished(ray_session, recs, tmp_path_factory):
    d = tmp_path_factory.mktemp("run")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SAH_CACHE_DIR", str(d / "cache"))  # the fit runs, the user cache is untouched
        return run_study(RunOptions(config=str(write_study(d / "study.yaml", sets_study(recs))),
                                    results_dir=str(d / "results"), progress=False))


@pytest.mark.slow
def test_every_configuration_is_scored_on_each_recording(finished, recs):
    loaded = {k: load_recording(recs[k]) for k in ("alpha", "beta")}
    rows = read_csv(finished / "trials.csv")
    header = list(rows[0])
    for label in ("alpha", "beta"):
        assert f"output_error[{label}]" in header and f"density[{label}]" in header
    per_layer = read_csv(finished / "per_layer.csv")
    assert list(per_layer[0]) == ["chain", "trial", "recording", "layer", "output_error", "density"]
    from sah.runs.artefacts import RunArtefacts
    from sah.runs.outputs import load_run, row_config
    study, typed, _ = load_run(finished)
    artefacts = RunArtefacts.of_run(study, finished)  # HashAttention weights of the run
    done = [r for r in typed if r["status"] == "completed"]
    assert {r["chain"] for r in done} == {"sink_local", "hat", "local_tpe"}  # batched and not
    assert len(done) == 5 + 5 + 3
    for row in done:
        config = artefacts.resolved(row_config(study.chain(row["chain"]), row))
        direct = {label: evaluate_config(config, rec) for label, rec in loaded.items()}
        for label, ev in direct.items():
            assert row[f"output_error[{label}]"] == ev.output_error
            assert row[f"density[{label}]"] == ev.density
            mine = [r for r in per_layer if (r["chain"], int(r["trial"]), r["recording"])
                    == (row["chain"], row["trial"], label)]
            assert [int(r["layer"]) for r in mine] == [lf.layer for lf in ev.layers]
            assert [float(r["output_error"]) for r in mine] == [lf.output_error for lf in ev.layers]
            assert [float(r["density"]) for r in mine] == [lf.density for lf in ev.layers]
        assert row["output_error"] == sum(ev.output_error for ev in direct.values()) / 2
        assert row["density"] == sum(ev.density for ev in direct.values()) / 2
    assert len(per_layer) == len(done) * 2 * LAYERS
    # exported configs reproduce the mean over the scored recordings
    best = min((r for r in done if r["chain"] == "hat"), key=lambda r: (r["score"], r["density"]))
    tuned = ResearchAttentionConfig.from_file(finished / "tuned" / "hat.yaml")
    mean = sum(evaluate_config(tuned, rec).output_error for rec in loaded.values()) / 2
    assert mean == best["output_error"]


@pytest.mark.slow
def test_run_yaml_summary_and_fit_report_name_the_recordings(finished, recs):
    meta = yaml.safe_load((finished / "run.yaml").read_text())
    hashes = {k: load_recording(recs[k]).metadata["content_hash"] for k in ("alpha", "beta", "fit")}
    assert [(r["name"], r["hash"]) for r in meta["recordings"]] == [
        ("alpha", hashes["alpha"]), ("beta", hashes["beta"])]
    assert [(r["name"], r["hash"], r["token_start"], r["token_end"])
            for r in meta["fit_recordings"]] == [("fit", hashes["fit"], 1000, 1256)]
    summary = (finished / "summary.md").read_text()
    for line in ("| scored | alpha | a | [0, 256) | 256 | 4 |", "| scored | beta | b | [0, 256) |",
                 "| fit | fit | a | [1000, 1256) | 256 | 4 |"):
        assert line in summary, summary
    assert "fitted on the scored recordings" not in summary
    report = json.loads((finished / "hash_attention" / "report.json").read_text())
    assert set(report["fit_recordings"]) == {"fit"}
    assert set(report["scored_recordings"]) == {"alpha", "beta"}
    # the recall figures are those of the saved weights on each recording
    from sah.maskers.hash_attention import load_hat_weights
    from sah.maskers.hash_attention_fit import hash_top_k_recall
    weights = load_hat_weights(finished / "hash_attention" / "weights.safetensors")
    for label in ("alpha", "fit"):
        rec = load_recording(recs[label])
        figures = report["scored_recordings" if label == "alpha" else "fit_recordings"][label]
        direct = [hash_top_k_recall(weights[lr.layer], rec.context(i), figures["k"], "silu")
                  for i, lr in enumerate(rec.layers)]
        assert [figures["per_layer"][str(lr.layer)]["after"] for lr in rec.layers] == direct
        assert figures["recall_after"] == pytest.approx(sum(direct) / len(direct))
        assert f"- {'scored' if label == 'alpha' else 'fit'} {label} (k = {figures['k']})" in summary


@pytest.mark.slow
def test_transfer_rescores_the_tuned_configs(finished, recs, capsys):
    from sah.cli import main
    from sah.runs.artefacts import RunArtefacts
    from sah.runs.outputs import best_row, load_run, row_config, target_row
    capsys.readouterr()
    assert main(["transfer", str(finished), "--recording", str(recs["long"]), "--quiet",
                 "--format", "csv"]) == 0
    table = read_csv_text(capsys.readouterr().out)
    study, rows, _ = load_run(finished)
    artefacts = RunArtefacts.of_run(study, finished)
    long = load_recording(recs["long"])
    expected = []
    for chain in study.chains:
        picks = [("best", best_row(rows, chain.name))] + [
            (f"density <= {t:g}", target_row(rows, chain.name, t)) for t in study.density_targets]
        expected += [(chain.name, pick, row) for pick, row in picks if row is not None]
    assert [(r["chain"], r["pick"], int(r["trial"])) for r in table] == [
        (c, p, row["trial"]) for c, p, row in expected]
    for line, (chain, _, row) in zip(table, expected):
        ev = evaluate_config(artefacts.resolved(row_config(study.chain(chain), row)), long)
        assert line["recording"] == "long"
        assert float(line["output_error"]) == ev.output_error
        assert float(line["density"]) == ev.density
        assert float(line["run output_error"]) == row["output_error"]
        assert float(line["error ratio"]) == ev.output_error / row["output_error"]
        assert float(line["density ratio"]) == ev.density / row["density"]
    # markdown: one row per pick, a note for a recording that overlaps the fit span
    assert main(["transfer", str(finished), "--recording", str(recs["long"]), "--recording",
                 str(recs["fit"]), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "| chain | pick | trial | recording |" in out
    assert out.count("| hat | best |") == 2
    assert "fit overlaps the run's fit recording fit" in out
    # another model's recording (another shape): scored over its own layers, without the
    # picks that carry the run's model (HashAttention's fitted hashes), with a note
    assert main(["transfer", str(finished), "--recording", str(recs["wide"]), "--quiet",
                 "--format", "csv"]) == 0
    table = read_csv_text(capsys.readouterr().out)
    wide = load_recording(recs["wide"])
    kept = [(c, p, row) for c, p, row in expected if c != "hat"]
    assert [(r["chain"], r["pick"]) for r in table] == [(c, p) for c, p, _ in kept]
    for line, (chain, _, row) in zip(table, kept):
        ev = evaluate_config(row_config(study.chain(chain), row), wide, wide.layer_ids)
        assert line["recording"] == "wide" and float(line["output_error"]) == ev.output_error
    assert main(["transfer", str(finished), "--recording", str(recs["wide"]), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert ("wide is another model (2 heads, 1 KV, head dim 16; the run's: 4 heads, 2 KV, "
            "head dim 16)") in out and "hat left out" in out


def read_csv_text(text):
    return list(csv.DictReader(text.splitlines()))


@pytest.mark.slow
def test_asha_reports_each_layer_group_over_every_recording(ray_session, recs, tmp_path):
    """Report g of every trial covers the first g layers of EVERY recording (mean over
    recordings of the mean over those layers), so ASHA compares like with like."""
    data = sets_study(recs, name="asha", searcher="optuna", num_samples=4,
                      scheduler={"type": "asha", "grace_period": 1, "reduction_factor": 2},
                      chains=[sets_study(recs)["chains"][2]])
    data.pop("fit_hash_attention")
    data.pop("fit_recordings")
    run_dir = run_study(RunOptions(config=str(write_study(tmp_path / "s.yaml", data)),
                                   results_dir=str(tmp_path / "r"), progress=False))
    loaded = [load_recording(recs[k]) for k in ("alpha", "beta")]
    results = sorted((run_dir / "ray" / "local_tpe").glob("trial_*/result.json"))
    assert results
    checked = 0
    for path in results:
        reports = [json.loads(line) for line in path.read_text().splitlines()]
        window = reports[0]["config"]["LocalMaskerConfig_window_size"]
        config = ResearchAttentionConfig.from_dict({"masker_configs": [
            {"type": "LocalMaskerConfig", "window_size": window}]})
        layers = [evaluate_config(config, rec).layers for rec in loaded]
        for g, report in enumerate(reports, 1):
            assert report["layers_done"] == g
            expected = sum(sum(lf.output_error for lf in ls[:g]) / g for ls in layers) / 2
            assert report["output_error"] == pytest.approx(expected, rel=1e-12)
            checked += 1
    assert checked > len(results)  # some trials reported more than once


# ---------------------------------------------------------------------- refusals
def test_fit_recording_overlapping_a_scored_span_is_refused_before_anything_is_written(
        recs, tmp_path):
    data = sets_study(recs, fit_recordings=[str(recs["overlap"])])
    assert_refused(tmp_path, data, "fit_recordings[0]", "overlaps the scored recording",
                   "recordings[0]", "tokens [200, 456)", "tokens [0, 256)")
    # without span metadata, the same content is still refused
    assert_refused(tmp_path, sets_study(recs, fit_recordings=[str(recs["beta_copy"])]),
                   "fit_recordings[0]", "is the scored recording recordings[1] (beta)")


def test_embedded_spans_are_checked_before_any_recording_is_made(recs, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("SAH_CACHE_DIR", str(cache))
    data = sets_study(recs, recordings=["docs", "code-1024"], fit_recordings=["docs-512@1800"])
    assert_refused(tmp_path, data, "fit_recordings[0]", "docs-512@1800",
                   "tokens [1800, 2312)", "recordings[0] docs")
    assert not cache.exists()  # the embedded model was never asked for anything


def test_recording_lists_are_validated_like_the_rest(recs, tmp_path):
    base = sets_study(recs)
    cases = [
        ({**base, "recording": str(recs["alpha"])}, ["recording:", "not both"]),
        ({**base, "recordings": []}, ["recordings:", "non-empty list"]),
        ({**base, "recordings": [str(recs["alpha"]), 3]}, ["recordings[1]:", "got 3"]),
        ({**base, "fit_recordings": "prose"}, ["fit_recordings:", "expected a list"]),
        ({**base, "recordings": ["docs-99999"]}, ["recordings[0]:", "8192"]),
        ({k: v for k, v in base.items() if k != "fit_hash_attention"},
         ["fit_recordings:", "nothing is fitted"]),
        ({**base, "recordings": [str(recs["alpha"]), str(recs["alpha"])]},
         ["recordings[1]:", "listed twice"]),
        ({**base, "recordings": [str(recs["alpha"]), str(recs["wide"])]},
         ["recordings[1]:", "heads/KV heads/head dim (2, 1, 16)", "one model shape"]),
        ({**base, "fit_recordings": [str(recs["wide"])]}, ["fit_recordings[0]:", "one model shape"]),
        ({**base, "layers": [0, 7]}, ["layers: layer 7 is not in the recording alpha"]),
        ({**base, "recordings": [str(recs["alpha"]), str(tmp_path / "nope.safetensors")]},
         ["recordings[1]:", "does not exist"]),
    ]
    for data, fragments in cases:
        assert_refused(tmp_path, data, *fragments)


def test_one_recording_keeps_working_and_names_its_yaml_key(recs, tmp_path):
    from sah.study.parse import parse_study
    data = sets_study(recs)
    data.pop("recordings")
    study = parse_study({**data, "recording": str(recs["alpha"])}, "s.yaml")
    assert study.recordings == [str(recs["alpha"])] and study.recording == str(recs["alpha"])
    data["recording"] = str(recs["wide"])
    data["chains"] = data["chains"][1:2]
    assert_refused(tmp_path, data, "fit_recordings[0]:", "but recording (wide) has (2, 1, 16)")


def test_without_fit_recordings_hash_attention_is_fitted_on_the_scored_ones(recs, tmp_path):
    """Without fit_recordings the scored recordings are what HashAttention is fitted on:
    run.yaml lists them as fit recordings and the summary says the figures are optimistic."""
    from sah.runs.outputs.summary import summary_markdown
    from sah.study.recordings import load_recording_sets
    from sah.study.parse import parse_study
    data = sets_study(recs)
    data.pop("fit_recordings")
    study = parse_study(data, "s.yaml")
    sets = load_recording_sets(study)
    described = sets.describe(fitting=True)
    assert [r["name"] for r in described["fit_recordings"]] == ["alpha", "beta"]
    assert sets.describe(fitting=False)["fit_recordings"] == []
    text = summary_markdown(study, [], {"recordings": described, "fitted_on_scored": True})
    assert "| fit | alpha | a | [0, 256) |" in text
    assert "HashAttention was fitted on the scored recordings" in text
