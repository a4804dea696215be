"""Studies run retrieval tasks on their picks (``validate.tasks``): real Ray Tune on small
synthetic recordings, then the picks answer passkey questions inside the real embedded
model. retrieval.csv checked against sah.inmodel.retrieval.validate_retrieval on the same
tuned files; the heatmap and the summary section written; bad task entries refused before
anything is written."""

import csv

import pytest
import yaml

from sah.attention import ResearchAttentionConfig
from sah.inmodel.retrieval import validate_retrieval
from sah.recording import make_synthetic_recording, save_recording
from sah.tuning.runner import RunOptions, run_study
from tuning_support import assert_refused

pytestmark = pytest.mark.slow

LENGTHS = [160, 224]


@pytest.fixture(scope="module")
def recs(tmp_path_factory):
    d = tmp_path_factory.mktemp("recs")
    paths = []
    for seed in (1, 2):
        rec = make_synthetic_recording(num_layers=2, num_keys=128, num_queries=4, seed=seed,
                                       num_heads=4, num_kv_heads=2, head_dim=16)
        save_recording(rec, d / f"r{seed}.safetensors")
        paths.append(str(d / f"r{seed}.safetensors"))
    return paths


@pytest.fixture(scope="module")
def model():
    from sah.recording.default_model import load_model
    return load_model("default")


def study_data(recs, **task):
    return {
        "name": "ret", "recordings": recs, "density_targets": [0.3], "searcher": "random",
        "num_samples": 2, "seed": 5,
        "validate": {"tasks": [{"task": "passkey", "lengths": LENGTHS, "samples": 2,
                                "picks": ["density_0.3"], **task}]},
        "chains": [
            {"name": "top_k", "searcher": "grid", "maskers": [
                {"type": "SinkMaskerConfig", "sink_size": 4},
                {"type": "LocalMaskerConfig", "window_size": 8},
                {"type": "OracleTopKConfig", "heavy_size": {"search": "grid",
                                                            "values": [0.1, 0.3]}}]},
            {"name": "local", "searcher": "grid", "maskers": [
                {"type": "SinkMaskerConfig", "sink_size": 4},
                {"type": "LocalMaskerConfig", "window_size": {"search": "grid",
                                                              "values": [0.1, 0.3]}}]},
        ],
    }


@pytest.fixture(scope="module")
def finished(ray_session, recs, model, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run")
    study = tmp / "study.yaml"
    study.write_text(yaml.safe_dump(study_data(recs), sort_keys=False))
    return run_study(RunOptions(config=str(study), results_dir=str(tmp / "results"),
                                progress=False, validation_model=model))


def test_retrieval_csv_matches_validate_retrieval_on_the_tuned_files(finished, model):
    with open(finished / "retrieval.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    keys = [(r["chain"], r["pick"], int(r["tokens"])) for r in table]
    assert keys == [(c, p, n) for n in LENGTHS
                    for c, p in (("dense", ""), ("top_k", "density_0.3"),
                                 ("local", "density_0.3"))]
    files = [r["config"] for r in table if r["chain"] != "dense"][:2]
    assert files == ["tuned/top_k.density_0.3.yaml", "tuned/local.density_0.3.yaml"]
    direct = validate_retrieval({f: ResearchAttentionConfig.from_file(finished / f)
                                 for f in files}, ["passkey"], LENGTHS, 2, model=model)
    for r in table:
        entry = direct.get(r["config"] or "dense", "passkey", int(r["tokens"]))
        assert bool(int(r["scored"])) == entry.scored
        if entry.scored:
            assert float(r["accuracy"]) == entry.accuracy
    assert not (finished / "validation.csv").exists()  # no texts: no KL validation
    assert (finished / "retrieval_passkey.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = (finished / "summary.md").read_text()
    assert "## Retrieval inside the model" in summary and "passkey, 160 tokens" in summary
    assert "## In-model validation" not in summary


@pytest.mark.parametrize("task, fragments", [
    ({"task": "passkeys"}, ["validate.tasks[0].task", "passkeys", "niah_multikey"]),
    ({"text": "docs"}, ["validate.tasks[0].text", "own filler"]),
    ({"lengths": [9000]}, ["validate.tasks[0].lengths[0]", "9000", "8192"]),
    ({"lengths": [30]}, ["validate.tasks[0].lengths", "got 30", "at least"]),
    ({"samples": 0}, ["validate.tasks[0].samples", "got 0"]),
    ({"picks": ["best2"]}, ["validate.tasks[0].picks[0]", "best2"]),
    ({"task": "niah", "text": "prose@25000", "lengths": [2048]},
     ["validate.tasks[0].text", "prose@25000", "shorter than a 2048-token niah prompt"]),
])
def test_bad_task_entries_are_refused_before_anything_is_written(tmp_path, recs, task,
                                                                 fragments):
    assert_refused(tmp_path, study_data(recs, **task), *fragments)


def test_default_and_long_context_studies_run_retrieval_on_their_density_0_1_picks():
    from pathlib import Path

    from sah.study.parse import load_study
    root = Path(__file__).resolve().parents[1]
    default = load_study(root / "configs" / "default.yaml").validate
    assert [(t.task, t.lengths, t.picks) for t in default.tasks] == \
        [("passkey", [2048], ["density_0.1"])]
    assert default.texts  # the KL validation stays
    long = load_study(root / "configs" / "long_context.yaml").validate
    assert [(t.task, t.lengths, t.picks) for t in long.tasks] == \
        [("passkey", [8192], ["density_0.1"]), ("niah", [8192], ["density_0.1"])]
