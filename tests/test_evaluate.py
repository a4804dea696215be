"""sah.evaluate: per-layer figures against a loop reference, means, cache sharing, groups."""


import pytest

from sah import LocalMaskerConfig, ResearchAttentionConfig, SinkMaskerConfig
from sah.evaluate import (ContextCache, evaluate_config, iter_evaluation, layer_groups,
                          recording_key)
from helpers import sink_local_error_ref
from tuning_support import random_recording


def sink_local(sink, window):
    return ResearchAttentionConfig([SinkMaskerConfig(sink), LocalMaskerConfig(window)])


def test_figures_match_loop_reference_per_layer_and_mean():
    rec = random_recording()
    result = evaluate_config(sink_local(4, 8), rec)
    refs = [sink_local_error_ref(rec, i, 4, 8) for i in range(3)]
    assert [lf.layer for lf in result.layers] == [10, 11, 12]
    for lf, (err, dens) in zip(result.layers, refs):
        assert lf.output_error == pytest.approx(err, rel=1e-4)
        assert lf.density == pytest.approx(dens, rel=1e-9)
    assert result.output_error == pytest.approx(sum(r[0] for r in refs) / 3, rel=1e-4)
    assert result.density == pytest.approx(sum(r[1] for r in refs) / 3, rel=1e-9)
    assert result.aux_bits_per_token == 0.0
    assert [row["layer"] for row in result.per_layer_table()] == [10, 11, 12]


def test_layer_subset_and_groups():
    rec = random_recording(num_layers=5)
    parts = list(iter_evaluation(sink_local(2, 4), rec, layers=[11, 13, 14], group_size=2))
    assert [len(p.layers) for p in parts] == [2, 3]
    assert [p.complete for p in parts] == [False, True]
    assert [lf.layer for lf in parts[-1].layers] == [11, 13, 14]
    whole = evaluate_config(sink_local(2, 4), rec)
    by_layer = {lf.layer: lf.output_error for lf in whole.layers}
    assert parts[-1].output_error == pytest.approx(
        (by_layer[11] + by_layer[13] + by_layer[14]) / 3, rel=1e-6)
    with pytest.raises(ValueError, match="layer 99 is not in the recording"):
        list(iter_evaluation(sink_local(2, 4), rec, layers=[99]))
    assert layer_groups([1, 2, 3, 4, 5], 2) == [[1, 2], [3, 4], [5]]


def test_cache_shares_contexts_and_gives_same_figures():
    rec = random_recording()
    cache = ContextCache()
    first = evaluate_config(sink_local(4, 8), rec, cache=cache)
    ctx = cache.get(rec, 0, "cpu")
    assert "dense_output" in ctx.__dict__  # derived tensors were computed and kept
    dense_before = ctx.__dict__["dense_output"]
    second = evaluate_config(sink_local(4, 8), rec, cache=cache)
    assert cache.get(rec, 0, "cpu") is ctx and ctx.__dict__["dense_output"] is dense_before
    assert [lf.output_error for lf in first.layers] == [lf.output_error for lf in second.layers]
    other = evaluate_config(sink_local(1, 2), rec, cache=cache)  # other params, same contexts
    fresh = evaluate_config(sink_local(1, 2), rec)
    assert [lf.output_error for lf in other.layers] == [lf.output_error for lf in fresh.layers]


def test_recording_key_tells_recordings_apart():
    a, b = random_recording(seed=0), random_recording(seed=1)
    assert recording_key(a) == recording_key(random_recording(seed=0))
    assert recording_key(a) != recording_key(b)
    a.metadata["content_hash"] = "sha256:abc"
    assert recording_key(a) == "sha256:abc"
    cache = ContextCache(max_recordings=1)
    cache.get(a, 0, "cpu")
    cache.get(b, 0, "cpu")
    assert len(cache._store) == 1
