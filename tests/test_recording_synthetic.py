"""The synthetic generator: seeded, shaped like GQA attention, with sinks, recency and heavy hitters."""

import resource

import pytest
import torch

from sah.recording.synthetic import make_synthetic_recording


def test_seeded_determinism():
    a = make_synthetic_recording(num_keys=1024, num_queries=8, seed=5)
    b = make_synthetic_recording(num_keys=1024, num_queries=8, seed=5)
    c = make_synthetic_recording(num_keys=1024, num_queries=8, seed=6)
    for la, lb, lc in zip(a.layers, b.layers, c.layers):
        for name in ("queries", "keys", "values"):
            assert torch.equal(getattr(la, name), getattr(lb, name))
        assert not torch.equal(la.keys, lc.keys)


def test_gqa_shapes_and_positions():
    r = make_synthetic_recording(num_layers=3, num_heads=12, num_kv_heads=3, head_dim=32,
                                 num_keys=2000, num_queries=10, batch_size=2, dtype="bfloat16")
    assert r.layer_ids == [0, 1, 2]
    for lr in r.layers:
        assert lr.queries.shape == (2, 12, 10, 32) and lr.keys.shape == (2, 3, 2000, 32)
        assert lr.values.shape == lr.keys.shape and lr.keys.dtype == torch.bfloat16
    pos = r.query_positions.tolist()
    assert pos[-1] == 1999 and pos[0] >= 1500 and all(x < y for x, y in zip(pos, pos[1:]))
    r.validate()
    with pytest.raises(ValueError, match="multiple of num_kv_heads"):
        make_synthetic_recording(num_heads=6, num_kv_heads=4)


def masses(rec, index):
    """Per-head mean softmax mass on sinks, the last 128 visible keys, the heavy hitters and
    all other keys (the bulk),
    computed with an explicit per-query loop (independent of the library's helpers)."""
    lr = rec.layers[index]
    q, k = lr.queries[0].float(), lr.keys[0].float()
    h, hk = q.shape[0], k.shape[0]
    g = h // hk
    sink, recent, heavy, bulk = torch.zeros(h), torch.zeros(h), torch.zeros(h), torch.zeros(h)
    heavy_keys = k[:, :, 1] > 0.5
    for head in range(h):
        for i, t in enumerate(rec.query_positions.tolist()):
            logits = (k[head // g, : t + 1] @ q[head, i]) * rec.scaling
            p = torch.softmax(logits, -1)
            sink[head] += p[:4].sum()
            recent[head] += p[max(0, t - 127):].sum()
            is_heavy = heavy_keys[head // g, : t + 1]
            heavy[head] += p[is_heavy].sum()
            bulk[head] += p[4: max(4, t - 127)][~is_heavy[4: max(4, t - 127)]].sum()
    n = len(rec.query_positions)
    return sink / n, recent / n, heavy / n, bulk / n


@pytest.mark.parametrize("num_keys", [2048, 16384])
def test_structure_sinks_recency_heavy_hitters(num_keys):
    rec = make_synthetic_recording(num_keys=num_keys, num_queries=8, seed=1)
    for index in range(2):
        sink, recent, heavy, bulk = masses(rec, index)
        # 4 sinks and 8 heavy hitters are a tiny share of keys, but take real mass
        assert float(sink.mean()) > 0.05 and float(sink.max()) > 0.2
        assert float(heavy.mean()) > 0.03
        # the last 128 keys hold far more than their uniform share (128 / num_keys)
        assert float(recent.min()) > max(0.15, 3 * 128 / num_keys)
        # and the remaining bulk keeps some mass, so attention is not trivially sparse
        assert float(bulk.mean()) > 0.005
    # heads differ (per-head offsets)
    assert float(sink.std()) > 0.02


def test_large_size_bounded_memory():
    """131072 keys, 2 KV heads of dim 64, float16: 32 MiB per key/value tensor."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    rec = make_synthetic_recording(num_layers=1, num_heads=4, num_kv_heads=2, head_dim=64,
                                   num_keys=131072, num_queries=4, seed=2)
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert rec.num_keys == 131072 and rec.layers[0].keys.shape == (1, 2, 131072, 64)
    assert rec.query_positions[-1] == 131071
    assert bool(torch.isfinite(rec.layers[0].keys).all())
    # keys + values are 64 MiB; chunked generation adds a few 16K-key float32 chunks
    assert grown_mib < 400, f"peak memory grew by {grown_mib:.0f} MiB"
    # the structure holds at this size for a query near the end (sinks and recency)
    k = rec.layers[0].keys[0, 0].float()
    p = torch.softmax((k @ rec.layers[0].queries[0, 0, -1].float()) * rec.scaling, -1)
    assert float(p[:4].sum() + p[-128:].sum()) > 0.2
