"""Studies validate their own picks: real Ray Tune on small synthetic
recordings that carry text spans, then each chain's picks run inside the real embedded
model (256 tokens, the last 16 sparse). validation.csv checked against
sah.inmodel.validate_configs on the same tuned files; the refusals (texts overlapping a
recording, bad fields) before anything is written; a run stopped during validation resumes
into validation without tuning again, duplicating rows or repeating dense passes."""

import json

import pytest

from sah.attention import ResearchAttentionConfig
from sah.inmodel import InModelValidator, validate_configs
from sah.recording.texts import load_text
from sah.runs.outputs.validation import config_points, far_worse, loglog_fit, spearman
from sah.tuning.runner import RunInterrupted, RunOptions, run_study
from sah.infra.threads import torch_threads
from sah.tuning.steps.validation import VALIDATION_THREADS
from tuning_support import assert_refused, read_csv, save_synthetic, write_study

pytestmark = pytest.mark.slow

TOKENS, POSITIONS = 256, 16
TEXTS = ["code@1024", "prose"]


SHAPE = dict(num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16, num_keys=256,
             num_queries=4)


@pytest.fixture(scope="module")
def recs(tmp_path_factory):
    """Recordings stamped as cut from tokens 0..256 of the embedded texts docs and code."""
    d = tmp_path_factory.mktemp("recs")
    return {text: save_synthetic(d / f"{text}.safetensors", text, 0, 256,
                                 text_sha256=load_text(text).sha256, **SHAPE, seed=seed)
            for text, seed in (("docs", 1), ("code", 2))}


@pytest.fixture(scope="module")
def model():
    from sah.recording.default_model import load_model
    return load_model("default")  # GGUF weights are dequantised to float32


def validation_study(recs, **validate):
    return {
        "name": "val", "recordings": [str(recs["docs"]), str(recs["code"])],
        "density_targets": [0.3, 0.6], "searcher": "random", "num_samples": 4, "seed": 5,
        "validate": {"texts": TEXTS, "tokens": TOKENS, "positions": POSITIONS, **validate},
        "chains": [
            {"name": "sink_local", "maskers": [
                {"type": "SinkMaskerConfig", "sink_size": {"search": "randint", "low": 1, "high": 16}},
                {"type": "LocalMaskerConfig",
                 "window_size": {"search": "uniform", "low": 0.05, "high": 0.6}}]},
            {"name": "top_k", "searcher": "grid", "maskers": [
                {"type": "SinkMaskerConfig", "sink_size": 4},
                {"type": "LocalMaskerConfig", "window_size": 8},
                {"type": "OracleTopKConfig", "heavy_size": {"search": "grid",
                                                            "values": [0.05, 0.2, 0.4]}}]},
        ],
    }


def run(tmp, data, model, **options):
    study = write_study(tmp / "study.yaml", data)
    return run_study(RunOptions(config=str(study), results_dir=str(tmp / "results"),
                                progress=False, validation_model=model, **options))


@pytest.fixture(scope="module")
def finished(ray_session, recs, model, tmp_path_factory):
    return run(tmp_path_factory.mktemp("run"), validation_study(recs), model)


def test_validation_csv_matches_validate_configs_on_the_tuned_files(finished, model):
    from sah.runs.outputs import load_run
    from sah.runs.outputs.picks import best_row, target_row
    study, rows, _ = load_run(finished)
    table = read_csv(finished / "validation.csv")
    expected_keys = []
    for chain in ("sink_local", "top_k"):
        picks = {"best": best_row(rows, chain), "density_0.3": target_row(rows, chain, 0.3),
                 "density_0.6": target_row(rows, chain, 0.6)}
        for pick, row in picks.items():
            if row is not None:
                expected_keys += [(chain, pick, text) for text in TEXTS]
    assert [(r["chain"], r["pick"], r["text"]) for r in table] == expected_keys
    assert len(table) >= 8  # both chains have picks at both targets and a best
    files = list(dict.fromkeys(r["config"] for r in table))
    with torch_threads(VALIDATION_THREADS):  # as the run's validation step
        direct = validate_configs({f: ResearchAttentionConfig.from_file(finished / f)
                                   for f in files}, TEXTS, TOKENS, POSITIONS, model=model)
    by_trial = {(r["chain"], r["trial"]): r for r in rows}
    for r in table:
        trial = by_trial[(r["chain"], int(r["trial"]))]
        assert float(r["offline_output_error"]) == trial["output_error"]
        assert float(r["offline_density"]) == trial["density"]
        # a pick that is the same trial as an earlier pick was validated from that file
        same = [x for x in table if (x["chain"], x["trial"], x["text"]) ==
                (r["chain"], r["trial"], r["text"])]
        pair = direct.get(same[0]["config"], r["text"])
        f = pair.figures
        assert float(r["kl"]) == pytest.approx(f.kl, rel=1e-6, abs=1e-9)
        assert float(r["top1_agreement"]) == f.top1_agreement
        assert float(r["ppl_ratio"]) == pytest.approx(f.ppl_ratio, rel=1e-6)
        assert float(r["inmodel_density"]) == pytest.approx(f.density, rel=1e-9)
        assert int(r["token_start"]) == pair.token_start and int(r["token_end"]) == pair.token_end
        assert int(r["worst_layer"]) == f.worst_layer.layer
    # the same config under two picks has the same figures, and the file is the first pick's
    for r in table:
        if r["config"].endswith(f"{r['chain']}.yaml"):
            assert r["pick"] == "best"
    assert (finished / "offline_vs_online.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_summary_reports_the_rank_correlation_and_far_worse_rule(finished):
    from sah.runs.outputs.validation import read_validation_csv
    summary = (finished / "summary.md").read_text()
    rows = read_validation_csv(finished / "validation.csv")
    points = config_points(rows)
    rho = spearman([p["offline_output_error"] for p in points], [p["kl"] for p in points])
    assert "## In-model validation" in summary
    assert (f"Spearman rank correlation between offline output_error and in-model KL: "
            f"**{rho:.3f}** over {len(points)} configs") in summary
    assert "Chains far worse inside the model than their offline error predicts" in summary
    progress = json.loads((finished / "progress.json").read_text())
    assert progress["_validation"] == "complete"
    from sah.runs.outputs import load_run
    study, _, _ = load_run(finished)
    assert study.validate.picks == ["best", "density_0.3", "density_0.6"]


def test_rank_correlation_and_far_worse_rule_by_hand():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # average ranks for ties (scipy.stats.spearmanr gives the same figures)
    assert spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(0.9486832980505139)
    assert spearman([0.1, 0.5, 0.3, 0.2, 0.9], [1, 2, 5, 3, 4]) == pytest.approx(0.5)
    assert spearman([1, 1, 1], [1, 2, 3]) is None
    points = [{"chain": c, "offline_output_error": e, "kl": k}
              for c, e, k in (("a", 0.1, 0.01), ("b", 0.2, 0.04), ("c", 0.4, 0.16),
                              ("d", 0.1, 0.05))]
    fit = loglog_fit(points)
    assert fit is not None
    worse = far_worse(points, fit)
    assert list(worse) == ["d"] and worse["d"] > 2
    assert loglog_fit(points[:2]) is None and far_worse(points[:2], None) == {}


# ---------------------------------------------------------------------- refusals
def test_validate_text_overlapping_a_recording_is_refused_before_anything_is_written(
        recs, tmp_path, monkeypatch):
    data = validation_study(recs)
    data["validate"]["texts"] = ["prose", "docs@100"]
    assert_refused(tmp_path, data, "validate.texts[1]", "'docs@100'", "tokens [100, 357)",
                   "overlaps the recording recordings[0] docs", "tokens [0, 256)")
    data["validate"]["texts"] = ["code@255"]  # window [255, 512): touches code's last token
    assert_refused(tmp_path, data, "validate.texts[0]", "recordings[1] code")
    # embedded names: checked before any recording is made (the cache stays empty)
    cache = tmp_path / "cache"
    monkeypatch.setenv("SAH_CACHE_DIR", str(cache))
    data = {**validation_study(recs), "recordings": ["docs-1024", "code"]}
    data["validate"]["texts"] = ["docs@1000"]
    assert_refused(tmp_path, data, "validate.texts[0]", "recordings[0] docs-1024",
                   "tokens [0, 1024)")
    assert not cache.exists()


def test_hash_attention_fitted_on_fewer_layers_than_the_model_is_refused_before_the_run(
        recs, tmp_path):
    """Validation runs a chain in every layer of the model (30 in the embedded one): hash
    weights fitted on the recordings' 2 layers would fail after tuning."""
    data = validation_study(recs)
    data["fit_hash_attention"] = {"bits": 8, "steps": 2}
    data["chains"].append({"name": "hashed", "maskers": [
        {"type": "LocalMaskerConfig", "window_size": 8},
        {"type": "HashAttentionTopKMaskerConfig", "heavy_size": 0.1}]})
    assert_refused(tmp_path, data, "validate: chain 'hashed'", "all 30 layers",
                   "fitted on layers [0, 1]", "recordings[0] (docs)", "missing [2, 3, 4, 5, 6, 7, ...]",
                   "sah record --layers all")
    data["fit_hash_attention"]["layers"] = [0]
    assert_refused(tmp_path, data, "fitted on layers [0] (from fit_hash_attention.layers)")
    del data["validate"]  # no validation: a fit on the recorded layers is all tuning needs
    study = write_study(tmp_path / "study.yaml", data)
    from sah.study.parse import load_study
    from sah.study.recordings import load_recording_sets
    from sah.study.validate import check_validate_layers
    parsed = load_study(str(study))
    check_validate_layers(parsed, load_recording_sets(parsed))


def test_validate_fields_are_checked_with_the_study(recs, tmp_path):
    def case(**validate):
        data = validation_study(recs)
        data["validate"] = {**data["validate"], **validate}
        return data

    bare = validation_study(recs)
    cases = [
        ({**bare, "validate": [1]}, ["validate:", "expected a mapping"]),
        (case(text=["prose"]), ["validate.text:", "unknown key"]),
        (case(texts=[]), ["validate.texts:", "non-empty list"]),
        (case(texts=["prose", "prose"]), ["validate.texts[1]:", "list each text once"]),
        (case(texts=["no_such_text"]), ["validate.texts[0]:", "neither a text name"]),
        (case(texts=["prose@x"]), ["validate.texts[0]:", "not a token offset"]),
        (case(tokens=1), ["validate.tokens:", "at least 2 tokens"]),
        (case(tokens="256"), ["validate.tokens:", "expected an int"]),
        (case(positions=256), ["validate.positions:", "lower validate.positions"]),
        (case(tokens=9000), ["validate.tokens:", "8192"]),
        (case(picks=["density_0.5"]), ["validate.picks[0]:", "best, density_0.3, density_0.6"]),
        (case(picks=[]), ["validate.picks:", "non-empty list"]),
        (case(texts=["prose@26300"]), ["validate.texts[0]:", "prose has", "from token 26300"]),
        (case(model=""), ["validate.model:", "expected default, gemma-3-270m"]),
        (case(model=str(tmp_path / "no_model")), ["validate.model:", "cannot load a tokenizer"]),
    ]
    for data, fragments in cases:
        assert_refused(tmp_path, data, *fragments)


# ---------------------------------------------------------------------- resume
def test_stopped_during_validation_resumes_into_validation(ray_session, recs, model, finished,
                                                           tmp_path, monkeypatch):
    calls = {"dense": 0, "sparse": 0}
    real_dense, real_sparse = InModelValidator.dense, InModelValidator.sparse

    def dense(self, *args, **kwargs):
        calls["dense"] += 1
        return real_dense(self, *args, **kwargs)

    def sparse(self, *args, **kwargs):
        calls["sparse"] += 1
        if calls.get("stop_at") == calls["sparse"]:
            raise KeyboardInterrupt  # what a Ctrl-C (or SIGTERM, forwarded) raises here
        return real_sparse(self, *args, **kwargs)

    monkeypatch.setattr(InModelValidator, "dense", dense)
    monkeypatch.setattr(InModelValidator, "sparse", sparse)
    calls["stop_at"] = 2
    with pytest.raises(RunInterrupted, match="during in-model validation"):
        run(tmp_path, validation_study(recs), model)
    run_dir = tmp_path / "results" / "val"
    partial = read_csv(run_dir / "validation.csv")
    assert 1 <= len(partial) <= 3  # the first config's picks on the first text
    assert "_validation" not in json.loads((run_dir / "progress.json").read_text())
    assert "In-model validation" not in (run_dir / "summary.md").read_text()
    trials_before = (run_dir / "trials.csv").read_bytes()
    ray_before = sorted(p.name for p in (run_dir / "ray").rglob("*"))

    calls.update(dense=0, sparse=0, stop_at=None)
    run(tmp_path, validation_study(recs), model, resume=True)
    table = read_csv(run_dir / "validation.csv")
    expected = read_csv(finished / "validation.csv")
    keys = [(r["chain"], r["pick"], r["text"]) for r in table]
    assert keys == [(r["chain"], r["pick"], r["text"]) for r in expected]  # no duplicates
    for got, want in zip(table, expected):
        assert float(got["kl"]) == pytest.approx(float(want["kl"]), rel=1e-6, abs=1e-9)
        assert got["config"] == want["config"]
    unique = {(r["chain"], r["trial"], r["text"]) for r in table}
    assert calls["sparse"] == len(unique) - 1  # only what was missing
    assert calls["dense"] == len(TEXTS)        # one dense pass per text, none repeated
    assert (run_dir / "trials.csv").read_bytes() == trials_before   # tuning not redone
    assert sorted(p.name for p in (run_dir / "ray").rglob("*")) == ray_before
    assert "## In-model validation" in (run_dir / "summary.md").read_text()
    assert json.loads((run_dir / "progress.json").read_text())["_validation"] == "complete"
    calls.update(dense=0, sparse=0)
    run(tmp_path, validation_study(recs), model, resume=True)  # complete: nothing runs
    assert calls == {"dense": 0, "sparse": 0, "stop_at": None}


def test_writing_validation_again_keeps_other_summary_sections_once(finished):
    """summary.md is written again with the validation section: a section another step
    appended (the allocation's) is kept, and the validation section appears once."""
    from sah.runs.outputs import load_run, write_validation_outputs
    from sah.runs.outputs.validation import read_validation_csv
    from sah.study.recordings import load_recording_sets
    study, rows, _ = load_run(finished)
    summary = finished / "summary.md"
    original = summary.read_text()
    summary.write_text(original + "\n## Allocation across layers and heads\n\nallocated rows\n")
    try:
        write_validation_outputs(finished, study, rows, read_validation_csv(
            finished / "validation.csv"), load_recording_sets(study), 1.0)
        text = summary.read_text()
        assert text.count("## In-model validation") == 1
        assert text.count("## Allocation across layers and heads") == 1
        assert text.index("## Allocation") < text.index("## In-model validation")
        assert "allocated rows" in text
    finally:
        summary.write_text(original)
