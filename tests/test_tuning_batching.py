"""Batched trials (several configurations per Ray trial): the driver-side sampling and
batching, the study option, one trials.csv row per configuration through real Ray Tune,
a failing configuration inside a batch, and the HashAttention fit cache."""

import math
from collections import Counter

import numpy as np
import pytest
import yaml

from sah.evaluate import evaluate_config
from sah.recording import load_recording, make_synthetic_recording
from sah.tuning.batching import chain_batches, chain_param_sets, split_batches
from sah.tuning.search_space import ray_domain
from sah.study.space import Domain
from sah.study.parse import parse_study
from sah.infra.checks import ConfigError
# tuning_support also registers FailingMaskerConfig, the masker that fails on demand
from tuning_support import read_csv, save_synthetic, write_study


RANDOM_CHAIN = {"name": "mixed", "maskers": [
    {"type": "SinkMaskerConfig", "sink_size": {"search": "randint", "low": 1, "high": 32}},
    {"type": "LocalMaskerConfig", "window_size": {"search": "loguniform", "low": 0.01, "high": 0.4}},
    {"type": "FailingMaskerConfig", "fail": {"search": "grid", "values": [0, 1]}}]}


def study(**extra):
    data = {"name": "b", "recording": "x", "searcher": "random", "num_samples": 7, "seed": 4,
            "chains": [RANDOM_CHAIN]}
    data.update(extra)
    return parse_study(data, "s.yaml")


def test_domain_samples_stay_in_their_ranges():
    rng = np.random.default_rng(0)
    cases = {
        "randint": ({"search": "randint", "low": 3, "high": 7}, set(range(3, 7))),
        "qrandint": ({"search": "qrandint", "low": 3, "high": 20, "q": 4}, {4, 8, 12, 16, 20}),
        "choice": ({"search": "choice", "values": [2, "a", 5.5]}, {2, "a", 5.5}),
    }
    for kind, (spec, allowed) in cases.items():
        d = Domain.parse(spec, kind)
        seen = {d.sample(rng) for _ in range(400)}
        assert seen == allowed, kind  # every value reachable, nothing else
    for kind in ("uniform", "loguniform"):
        d = Domain.parse({"search": kind, "low": 0.01, "high": 0.5}, kind)
        xs = [d.sample(rng) for _ in range(2000)]
        assert all(0.01 <= x <= 0.5 and isinstance(x, float) for x in xs)
        below = sum(x < math.sqrt(0.01 * 0.5) for x in xs) / len(xs)  # geometric mean
        assert (0.4 < below < 0.6) if kind == "loguniform" else below < 0.25


def test_qrandint_includes_high_in_our_sampler_rays_domain_and_optunas():
    """``qrandint``'s ``high`` is included (the docs say so, tests/test_docs.py) on every
    path: our sampler, Ray's domain and Optuna's distribution; a range holding no multiple
    of q is refused."""
    from ray.tune.search.optuna import OptunaSearch
    rng = np.random.default_rng(0)
    for low, high, q, values in ((3, 20, 4, {4, 8, 12, 16, 20}), (0, 6, 1, set(range(7))),
                                 (2, 12, 5, {5, 10})):
        domain = Domain.parse({"search": "qrandint", "low": low, "high": high, "q": q}, "x")
        assert {domain.sample(rng) for _ in range(500)} == values
        ray_dom = ray_domain(domain, as_grid=False)
        assert {int(ray_dom.sample()) for _ in range(500)} == values
        dist = OptunaSearch.convert_search_space({"x": ray_dom})["x"]
        assert set(range(dist.low, dist.high + 1, dist.step)) == values
    with pytest.raises(ConfigError, match="no multiple of q"):
        Domain.parse({"search": "qrandint", "low": 5, "high": 7, "q": 4}, "x")


def test_param_sets_cover_grid_times_samples_reproducibly():
    s = study(configs_per_trial=3)
    chain = s.chains[0]
    sets = chain_param_sets(chain, s.seed, 0)
    assert len(sets) == chain.expected_trials() == 14
    assert Counter(p["FailingMaskerConfig_fail"] for p in sets) == {0: 7, 1: 7}
    assert all(1 <= p["SinkMaskerConfig_sink_size"] < 32 for p in sets)
    assert sets == chain_param_sets(chain, s.seed, 0)  # same seed, same configurations
    assert sets != chain_param_sets(chain, s.seed + 1, 0)
    assert sets != chain_param_sets(chain, s.seed, 1)  # chains draw independently
    # the batch size only groups the configurations
    flat = [p for b in chain_batches(chain, s.seed, 0) for p in b["params"]]
    assert flat == sets == chain_param_sets(study(configs_per_trial=1).chains[0], s.seed, 0)
    grid = parse_study({"name": "g", "recording": "x", "chains": [{"name": "g", "searcher": "grid",
                        "maskers": [{"type": "StridedPatternConfig",
                                     "window_size": {"search": "grid", "values": [8, 16, 32]},
                                     "stride": {"search": "choice", "values": [8, 64]}}]}]},
                       "g.yaml")
    points = [(p["StridedPatternConfig_window_size"], p["StridedPatternConfig_stride"])
              for p in chain_param_sets(grid.chains[0], 0, 0)]
    assert sorted(points) == sorted((w, st) for w in (8, 16, 32) for st in (8, 64))


def test_split_batches_sizes():
    for n in range(1, 40):
        for size in range(1, 12):
            batches = split_batches(list(range(n)), size)
            assert [x for b in batches for x in b] == list(range(n))
            lengths = [len(b) for b in batches]
            assert max(lengths) <= size and max(lengths) - min(lengths) <= 1
            assert len(batches) == -(-n // size)


def test_batch_size_option_and_where_it_is_forced_to_one():
    assert study(configs_per_trial=5).chains[0].configs_per_trial == 5
    assert study(configs_per_trial=100).chains[0].configs_per_trial == 14  # at most the chain
    assert study().chains[0].configs_per_trial == 8  # the default
    assert study(configs_per_trial=5, scheduler="asha").chains[0].configs_per_trial == 1
    optuna_chain = {"name": "o", "maskers": RANDOM_CHAIN["maskers"][:2]}
    assert study(searcher="optuna", chains=[optuna_chain]).chains[0].configs_per_trial == 1
    fixed = {"name": "f", "maskers": [{"type": "SinkMaskerConfig", "sink_size": 4}]}
    assert study(chains=[fixed]).chains[0].configs_per_trial == 1
    for bad in (0, 1.5, "8"):
        with pytest.raises(ConfigError, match=r"s.yaml: configs_per_trial: got"):
            study(configs_per_trial=bad)


@pytest.mark.slow
def test_batched_study_one_row_per_configuration(ray_session, tmp_path):
    from sah.tuning.runner import RunOptions, run_study
    rec_path = save_synthetic(tmp_path / "rec.safetensors", num_heads=4, num_kv_heads=2,
                              num_keys=256, seed=1)
    path = write_study(tmp_path / "study.yaml", {
        "name": "batched", "recording": str(rec_path), "searcher": "random", "num_samples": 7,
        "seed": 4, "configs_per_trial": 3, "density_targets": [0.5],
        "chains": [RANDOM_CHAIN, {"name": "tpe", "searcher": "optuna", "num_samples": 3,
                                  "maskers": RANDOM_CHAIN["maskers"][:2]}]})
    run_dir = run_study(RunOptions(config=str(path), results_dir=str(tmp_path / "r"),
                                   progress=False))
    all_rows = read_csv(run_dir / "trials.csv")
    tpe = [r for r in all_rows if r["chain"] == "tpe"]  # Optuna: one configuration per Ray trial
    assert [int(r["trial"]) for r in tpe] == [0, 1, 2] and len({r["trial_id"] for r in tpe}) == 3
    assert all(r["status"] == "completed" and r["batch_slot"] == "" for r in tpe)
    assert sorted(p.name for p in (run_dir / "ray").iterdir()) == ["_batched", "tpe"]
    rows = [r for r in all_rows if r["chain"] == "mixed"]
    assert len(rows) == 14 and [int(r["trial"]) for r in rows] == list(range(14))
    by_ray_trial = {}
    for r in rows:
        by_ray_trial.setdefault(r["trial_id"], []).append(int(r["batch_slot"]))
    assert len(by_ray_trial) == 5  # 14 configurations in batches of at most 3
    assert all(slots == list(range(len(slots))) for slots in by_ray_trial.values())
    mixed = [t for t, _ in by_ray_trial.items()
             if len({r["FailingMaskerConfig_fail"] for r in rows if r["trial_id"] == t}) == 2]
    assert mixed  # some batch holds failing and succeeding configurations
    recording = load_recording(rec_path)
    s = parse_study({**yaml.safe_load(path.read_text()), "chains": [RANDOM_CHAIN]}, str(path))
    expected = chain_param_sets(s.chains[0], s.seed, 0)
    for r, params in zip(rows, expected):
        assert int(r["SinkMaskerConfig_sink_size"]) == params["SinkMaskerConfig_sink_size"]
        assert float(r["LocalMaskerConfig_window_size"]) == params["LocalMaskerConfig_window_size"]
        if r["FailingMaskerConfig_fail"] == "1":
            assert r["status"] == "failed" and r["score"] == "" and r["output_error"] == ""
            assert "deliberate failure" in r["error_message"]
            continue
        assert r["status"] == "completed" and r["error_message"] == ""
        ref = evaluate_config(s.chains[0].build(params), recording)  # fresh process, no batch
        assert float(r["output_error"]) == ref.output_error and float(r["density"]) == ref.density
        assert 0 < float(r["eval_seconds"]) <= float(r["seconds"])
    summary = (run_dir / "summary.md").read_text()
    assert "| mixed | 14 (7/7/0)" in summary


def test_hash_attention_fit_is_cached_between_runs(tmp_path, monkeypatch):
    pytest.importorskip("sah.maskers.hash_attention_fit")
    from sah.tuning.steps.hash_fit import attach_weights, prepare_hash_attention
    monkeypatch.setenv("SAH_CACHE_DIR", str(tmp_path / "cache"))
    data = {"name": "h", "recording": "x", "fit_hash_attention": {"bits": 8, "steps": 2,
                                                                "hat_mlp_layers": 1},
            "chains": [{"name": "hat", "maskers": [
                {"type": "HashAttentionTopKMaskerConfig",
                 "heavy_size": {"search": "uniform", "low": 0.05, "high": 0.2}}]}]}
    rec = make_synthetic_recording(num_layers=2, num_heads=2, num_kv_heads=1, head_dim=16,
                                   num_keys=128, num_queries=4)
    first = parse_study(data, "s.yaml")
    attach_weights(first, tmp_path / "run1")
    fitted = prepare_hash_attention(first, rec, tmp_path / "run1").read_bytes()
    cached = list((tmp_path / "cache" / "hash_attention").glob("*/report.json"))
    assert len(cached) == 1
    cached[0].write_text('{"marker": "from the cache"}\n')  # proves the next run copies
    second = parse_study(data, "s.yaml")
    attach_weights(second, tmp_path / "run2")
    assert prepare_hash_attention(second, rec, tmp_path / "run2").read_bytes() == fitted
    assert "from the cache" in (tmp_path / "run2" / "hash_attention" / "report.json").read_text()
    other = parse_study({**data, "fit_hash_attention": {"bits": 8, "steps": 3,
                                                        "hat_mlp_layers": 1}}, "s.yaml")
    attach_weights(other, tmp_path / "run3")
    prepare_hash_attention(other, rec, tmp_path / "run3")  # other options: fitted again
    assert "marker" not in (tmp_path / "run3" / "hash_attention" / "report.json").read_text()
    assert len(list((tmp_path / "cache" / "hash_attention").glob("*/report.json"))) == 2
