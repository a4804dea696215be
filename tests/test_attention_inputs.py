"""Regression tests for the core items of issue 15 (11, 13, 14, 15, 16, 17) and the
non-contiguous inputs of issue 12 item 3. Each ``test_issue15_item<N>_...`` fails on the
code before its fix."""

import re

import pytest
import torch

from helpers import random_qkv
from sah import (AttentionContext, HashAttentionTopKMaskerConfig, Mask, OracleTopKConfig,
                 QuestTopKMaskerConfig, ResearchAttention, ResearchAttentionConfig,
                 SinkMaskerConfig)
from sah.estimator import evaluate_mask, sparse_attention
from sah.maskers.base import MaskerRegistry, ResearchMasker
from sah.infra.checks import ConfigError


def chain(*configs):
    return ResearchAttention.create_from_config(ResearchAttentionConfig(list(configs)))


def call(attention, queries, keys, values, **kwargs):
    return attention.custom_attention(None, queries, keys, values, None, None, 0.0, {},
                                      layer_idx=0, **kwargs)


# ---------------------------------------------------------------------- item 11
@pytest.mark.parametrize("bad,what", [(1.5, "1.5"), (-0.25, "-0.25"), (float("nan"), "NaN")])
def test_issue15_item11_from_dense_refuses_weights_outside_0_1(bad, what):
    """Issue 15 item 11: Mask.from_dense accepted weights above 1, below 0 or NaN."""
    w = torch.zeros(1, 2, 3, 5)
    w[0, 1, 2, 4] = bad
    with pytest.raises(ValueError, match=re.escape(what) + r".*\(0, 1, 2, 4\).*\[0, 1\]"):
        Mask.from_dense(w)
    Mask.from_dense(w.nan_to_num(0.0).clamp(0, 1))  # in range: accepted


@pytest.mark.parametrize("column", [5, 7, -1])
def test_issue15_item11_from_sparse_refuses_columns_outside_the_keys(column):
    """Issue 15 item 11: Mask.from_sparse accepted a column index past n (failing later)."""
    shape = (1, 1, 2, 5)
    ptr = torch.tensor([0, 1, 2])
    with pytest.raises(ValueError, match=f"column index {column} is outside the 5 keys"):
        Mask.from_sparse(shape, torch.tensor([0, column]), ptr, torch.tensor([1.0, 0.5]))
    with pytest.raises(ValueError, match=r"weight 2\.0"):
        Mask.from_sparse(shape, torch.tensor([0, 3]), ptr, torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match="sorted and duplicate-free"):
        Mask.from_sparse(shape, torch.tensor([3, 1]), torch.tensor([0, 2, 2]), torch.tensor([1.0, 1.0]))


def test_issue15_item11_custom_attention_refuses_bad_calls():
    """Issue 15 item 11: more queries than keys, zero keys and negative query positions
    returned zeros (and evaluate reported error 0.0); float positions were truncated;
    int64 inputs gave an int64 output."""
    attention = chain(SinkMaskerConfig(2))
    q, k, v = random_qkv(b=1, h=4, hk=2, q=6, n=4, d=8)
    with pytest.raises(ValueError, match=r"more queries \(6\) than keys \(4\)"):
        call(attention, q, k, v)
    with pytest.raises(ValueError, match=r"more queries \(6\) than keys \(4\)"):
        attention.evaluate(AttentionContext(q, k, v))
    q, k, v = random_qkv(b=1, h=4, hk=2, q=2, n=6, d=8)
    with pytest.raises(ValueError, match="keys: shape .* zero-size"):
        call(attention, q, k[:, :, :0], v[:, :, :0])
    with pytest.raises(ValueError, match="query position -1 is negative"):
        call(attention, q, k, v, query_positions=torch.tensor([-1, 5]))
    with pytest.raises(ValueError, match=r"query_positions: got dtype torch.float32.*nothing is rounded"):
        call(attention, q, k, v, query_positions=torch.tensor([3.7, 5.0]))
    with pytest.raises(ValueError, match="queries: dtype torch.int64 is not a floating-point type"):
        call(attention, q.long(), k.long(), v.long())
    with pytest.raises(ValueError, match="values: dtype torch.int64"):
        call(attention, q, k, v.long())
    out, weights = call(attention, q, k, v, query_positions=[4, 5])  # python ints are fine
    assert out.dtype == torch.float32 and weights is None


@pytest.mark.parametrize("threshold", [0.0, 1.0])
def test_issue15_item11_values_may_have_their_own_head_dim(monkeypatch, threshold):
    """Issue 15 item 11: values whose head dim differs from the keys' gave a reshape
    traceback. Supported now (output (b, h, q, dv)), on the dense and the gathered path."""
    import sah.estimator as est
    monkeypatch.setattr(est, "SPARSE_PATH_MAX_DENSITY", threshold)
    monkeypatch.setattr(est, "SPARSE_PATH_MAX_DENSITY_WITH_LOGITS", threshold)
    q, k, _ = random_qkv(b=2, h=4, hk=2, q=3, n=20, d=8, seed=3)
    v = torch.randn(2, 2, 20, 5, generator=torch.Generator().manual_seed(4))
    pos = torch.tensor([9, 14, 19])
    attention = chain(SinkMaskerConfig(3), OracleTopKConfig(4))
    out, _ = call(attention, q, k, v, query_positions=pos)
    assert out.shape == (2, 4, 3, 5)
    ctx = AttentionContext(q, k, v, query_positions=pos)
    mask = attention.compute_mask(ctx)
    assert torch.allclose(out.double(), estimate_ref(q, k, v, pos, mask.to_dense()), atol=1e-5)
    dense = estimate_ref(q, k, v, pos, torch.ones(ctx.mask_shape))
    assert torch.allclose(ctx.dense_output.double(), dense, atol=1e-5)
    assert evaluate_mask(ctx, mask).output_error > 0


def estimate_ref(q, k, v, pos, w):
    """Plain float64 Horvitz-Thompson estimate (any value head dim), GQA by repetition."""
    g = q.shape[1] // k.shape[1]
    kk, vv = k.double().repeat_interleave(g, 1), v.double().repeat_interleave(g, 1)
    logits = q.double() @ kk.transpose(-1, -2) / q.shape[-1] ** 0.5
    allowed = torch.arange(k.shape[2]).view(1, -1) <= pos.view(-1, 1)
    active = allowed & (w > 0)
    m = logits.masked_fill(~active, float("-inf")).amax(-1, keepdim=True)
    u = torch.where(active, torch.exp(logits - m) / w.double(), torch.zeros(()).double())
    return (u @ vv) / u.sum(-1, keepdim=True)


def test_issue15_item11_hash_attention_refuses_non_finite_weights():
    """Issue 15 item 11: HashAttention weights full of NaN were accepted."""
    weights = {"query_matrix": [torch.randn(4, 8, 6)], "query_bias": [torch.zeros(4, 6)],
               "key_matrix": [torch.randn(2, 8, 6)], "key_bias": [torch.zeros(2, 6)]}
    for name, bad in (("key_matrix", float("nan")), ("query_bias", float("inf"))):
        broken = {key: [t.clone() for t in ts] for key, ts in weights.items()}
        broken[name][0].view(-1)[3] = bad
        cfg = HashAttentionTopKMaskerConfig(heavy_size=2, hat_bits=6, hat_mlp_layers=1,
                                            hat_mlp_hidden_size=6, hat_weights={0: broken})
        with pytest.raises(ConfigError, match=f"{name}\\[0\\] contains NaN or infinite values"):
            ResearchMasker.create_from_config(cfg)
    ResearchMasker.create_from_config(HashAttentionTopKMaskerConfig(
        heavy_size=2, hat_bits=6, hat_mlp_layers=1, hat_mlp_hidden_size=6, hat_weights={0: weights}))


# ---------------------------------------------------------------------- item 13
@pytest.mark.parametrize("path", ["dense", "gathered", "weights"])
def test_issue15_item13_active_key_does_not_underflow_on_any_path(monkeypatch, path):
    """Issue 15 item 13: with q = [30, 0], k0 = [-4, 0], k1..k3 = [4, 0] and Sink(1), the
    only active key k0 sits 240 logits below the row maximum (an inactive key): its
    exp(L - m) underflowed, the dense path returned 0 and counted an empty row. Every path
    shifts by the max over ACTIVE keys and returns v0."""
    import sah.estimator as est
    q = torch.tensor([[[[30.0, 0.0]]]])
    k = torch.tensor([[[[-4.0, 0.0], [4.0, 0.0], [4.0, 0.0], [4.0, 0.0]]]])
    v = torch.tensor([[[[1.0, 2.0], [5.0, 5.0], [6.0, 6.0], [7.0, 7.0]]]])
    attention = chain(SinkMaskerConfig(1))
    ctx = AttentionContext(q, k, v, scaling=1.0)
    mask = attention.compute_mask(ctx)
    if path == "dense":  # logits computed, tiny values: evaluation's dense path
        monkeypatch.setattr(est, "SPARSE_PATH_MAX_DENSITY_WITH_LOGITS", 0.0)
        ctx.dense_output
        result = sparse_attention(ctx, mask)
        assert evaluate_mask(ctx, mask).empty_rows == 0
    elif path == "gathered":
        result = sparse_attention(ctx, mask)
    else:
        out, weights = attention.custom_attention(None, q, k, v, None, 1.0, return_weights=True)
        assert torch.equal(weights[0, 0, 0], torch.tensor([1.0, 0.0, 0.0, 0.0]))
        result = est.SparseOutput(out, 0)
    assert result.empty_rows == 0
    assert torch.equal(result.output[0, 0, 0], torch.tensor([1.0, 2.0]))


# ---------------------------------------------------------------------- item 14
@pytest.mark.parametrize("heavy", [0, 0.01])
def test_issue15_item14_quest_zero_heavy_size_still_takes_three_pages(heavy):
    """Issue 15 item 14: a heavy size resolving to 0 keys added nothing; the spec's page
    count min(P, max(3, T // page_size)) is 3 pages."""
    q, k, v = random_qkv(b=1, h=2, hk=1, q=1, n=64, d=8, seed=5)
    ctx = AttentionContext(q, k, v)
    mask = chain(QuestTopKMaskerConfig(heavy_size=heavy, page_size=4)).compute_mask(ctx)
    active = mask.active()[0, :, 0]
    assert active.sum(-1).tolist() == [12, 12]  # three whole pages of 4 keys per head
    pages = active.view(2, 16, 4)
    assert torch.equal(pages.any(-1), pages.all(-1))


# ---------------------------------------------------------------------- item 15
def test_issue15_item15_quest_multi_query_choices_are_stated_and_hold():
    """Issue 15 item 15: with several queries, Quest bounds each query's own page by the
    keys up to that query only, and skips pages whose allowed keys are all active; neither
    was in the spec. Both are sah's stated choices (docs/maskers.md, Quest; tests/test_docs.py
    checks the page says so) and hold here; the spec's plain rule would pick other pages in
    both cases."""
    # 24 keys in 6 pages of 4; queries at positions 12 and 23; q = e0 so a page's score
    # is its largest channel-0 value
    k = torch.zeros(1, 1, 24, 4)
    for key, value in ((0, 2.0), (4, 3.0), (8, 1.0), (12, -1.0), (14, 50.0)):
        k[0, 0, key, 0] = value
    q = torch.zeros(1, 1, 2, 4)
    q[..., 0] = 1.0
    v = torch.randn(1, 1, 24, 4, generator=torch.Generator().manual_seed(0))
    ctx = AttentionContext(q, k, v, query_positions=torch.tensor([12, 23]))
    previous = torch.zeros(ctx.mask_shape, dtype=torch.bool)
    previous[0, 0, 1, :8] = True  # query 1 already holds pages 0 and 1
    masker = ResearchMasker.create_from_config(QuestTopKMaskerConfig(heavy_size=4, page_size=4))
    out = masker.add_mask(k, q, v, None, ctx.scaling, 0.0, {}, Mask.from_bool(previous),
                          context=ctx).active()[0, 0]
    # query 0: its own page 3 is bounded by key 12 (-1) alone, not by the unseen key 14
    # (50): pages 1, 0, 2 (scores 3, 2, 1) win -> keys 0..11
    assert out[0].nonzero().flatten().tolist() == list(range(12))
    # query 1: pages 0 and 1 are all active and skipped; pages 3 (50), 2 (1) and 5 (0, tied
    # with page 4, the most recent first) are added -> keys 0..15 and 20..23
    assert out[1].nonzero().flatten().tolist() == list(range(16)) + list(range(20, 24))


# ---------------------------------------------------------------------- item 16
def test_issue15_item16_hash_attention_sign_of_zero_is_zero():
    """Issue 15 item 16: sign(0) mapped to +1, so zero features got the top score. The
    spec's sign() gives 0: a key whose features are all zero scores 0, below a key that
    agrees with the query on its one non-zero feature."""
    from sah.maskers.hash_attention import signatures
    assert signatures(torch.tensor([-2.0, 0.0, 3.0])).tolist() == [-1.0, 0.0, 1.0]
    d, bits = 4, 2
    # 1-layer hash: feature 0 = channel 0, feature 1 = channel 1 (same for queries and keys)
    eye = torch.eye(d)[:, :bits]
    weights = {"query_matrix": [eye.unsqueeze(0)], "query_bias": [torch.zeros(1, bits)],
               "key_matrix": [eye.unsqueeze(0)], "key_bias": [torch.zeros(1, bits)]}
    cfg = HashAttentionTopKMaskerConfig(heavy_size=1, hat_bits=bits, hat_mlp_layers=1,
                                        hat_mlp_hidden_size=1, hat_weights={0: weights})
    q = torch.tensor([[[[1.0, 1.0, 0.0, 0.0]]]])
    k = torch.zeros(1, 1, 6, d)
    k[0, 0, 4] = torch.tensor([1.0, -1.0, 0.0, 0.0])  # agrees on one feature: score 0
    k[0, 0, 5] = torch.tensor([1.0, 0.0, 0.0, 0.0])   # score 1 (+1 and 0)
    ctx = AttentionContext(q, k, torch.randn(1, 1, 6, d))
    out = ResearchMasker.create_from_config(cfg).add_mask(
        k, q, ctx.values, None, ctx.scaling, 0.0, {}, Mask.create_empty(ctx.mask_shape),
        context=ctx, layer_idx=0)
    assert out.active()[0, 0, 0].nonzero().flatten().tolist() == [5]


# ---------------------------------------------------------------------- item 17
def test_issue15_item17_oracle_top_k_ties_are_the_same_on_every_path():
    """Issue 15 item 17: tied scores were broken by torch.topk's order without the shared
    sorted context and by key index with it. Now: the most recent key (highest index)
    first, everywhere."""
    gen = torch.Generator().manual_seed(17)
    q = torch.randn(1, 4, 2, 8, generator=gen)
    base = torch.randn(5, 8, generator=gen)
    k = base[torch.randint(0, 5, (200,), generator=gen)].view(1, 1, 200, 8).repeat(1, 2, 1, 1)
    v = torch.randn(1, 2, 200, 8, generator=gen)
    attention = chain(OracleTopKConfig(37))
    fresh = AttentionContext(q, k, v)
    shared = AttentionContext(q, k, v)
    shared.shared = True
    mask_fresh = attention.compute_mask(fresh).active()
    mask_shared = attention.compute_mask(shared).active()
    assert "logits_sorted" in shared.__dict__ and "logits_sorted" not in fresh.__dict__
    # reference: descending logits, equal logits from the highest key index down; 37 keys
    flipped = torch.sort(fresh.logits.flip(-1), dim=-1, descending=True, stable=True).indices
    order = (199 - flipped)[..., :37]
    expected = torch.zeros_like(mask_fresh).scatter_(-1, order, True)
    assert torch.equal(mask_fresh, expected)
    assert torch.equal(mask_shared, expected)
    out_fresh, _ = call(attention, q, k, v)
    assert torch.allclose(out_fresh, sparse_attention(shared, Mask.from_bool(expected)).output,
                          atol=1e-6)


# ---------------------------------------------------------------------- issue 12, item 3
def every_masker_config():
    """One config of every registered masker (small sizes, random HashAttention weights)."""
    configs = []
    for name in MaskerRegistry.config_names():
        cls = MaskerRegistry.config_class(name)
        if name in ("TopKMaskerConfig", "TopPMaskerConfig", "PatternMaskerConfig"):
            continue  # bases without a masker of their own
        if name == "HashAttentionTopKMaskerConfig":
            configs.append(cls(heavy_size=5, hat_bits=8, hat_mlp_layers=2, hat_mlp_hidden_size=8))
        elif name == "StridedPatternConfig":
            configs.append(cls(window_size=4, stride=3))
        elif name in ("FixedPatternConfig", "SlidingWindowPatternConfig"):
            configs.append(cls(window_size=4))
        elif name == "DilatedSlidingWindowPatternConfig":
            configs.append(cls(window_size=4, dilation=2))
        elif name in ("SinkMaskerConfig",):
            configs.append(cls(sink_size=2))
        elif name == "LocalMaskerConfig":
            configs.append(cls(window_size=3))
        elif name == "AdaptiveSamplingMaskerConfig":
            configs.append(cls(base_rate_sampling=0.1, epsilon=0.3, delta=0.3, init_offset=2,
                               local_offset=2))
        elif name in ("OracleTopKConfig", "QuestTopKMaskerConfig"):
            configs.append(cls(heavy_size=6) if name == "OracleTopKConfig" else cls(heavy_size=6, page_size=4))
        else:
            configs.append(cls())
    return configs


def non_contiguous(t, how):
    if how == "transposed":  # the layout a model's .view(...).transpose(1, 2) gives
        return t.transpose(1, 2).contiguous().transpose(1, 2)
    if how == "cache_slice":  # the first n keys of a longer preallocated KV cache
        cache = torch.full((t.shape[0], t.shape[1], t.shape[2] + 9, t.shape[3]), 99.0)
        cache[:, :, :t.shape[2]] = t
        return cache[:, :, :t.shape[2]]
    # a strided slice: every other channel of a wider tensor
    wide = torch.stack([t, torch.full_like(t, 99.0)], dim=-1).flatten(-2)
    return wide[..., ::2]


@pytest.mark.parametrize("how", ["transposed", "strided", "cache_slice"])
@pytest.mark.parametrize("config", every_masker_config(), ids=lambda c: type(c).__name__)
def test_every_masker_accepts_non_contiguous_inputs(config, how):
    """Issue 12 item 3 (unit level): a model passes non-contiguous queries, keys and values
    (transposed views); every registered masker, in a chain after sink + local, gives the
    same mask and output as on contiguous copies (MagicPig raised on .view before)."""
    q, k, v = random_qkv(b=1, h=4, hk=2, q=3, n=40, d=8, seed=12)
    pos = torch.tensor([20, 30, 39])
    configs = [SinkMaskerConfig(2), config]
    if MaskerRegistry.get_masker_class(type(config)).is_sampling:
        configs.insert(1, OracleTopKConfig(3))
    attention = chain(*configs)
    views = [non_contiguous(t, how) if how != "cache_slice" or t is not q else
             non_contiguous(t, "transposed") for t in (q, k, v)]
    assert not any(t.is_contiguous() for t in views)
    assert all(torch.equal(a, b) for a, b in zip(views, (q, k, v)))
    out_views, _ = call(attention, *views, query_positions=pos)
    out_plain, _ = call(attention, q, k, v, query_positions=pos)
    assert torch.allclose(out_views, out_plain, atol=1e-6)
    mask_views = attention.compute_mask(AttentionContext(*views, query_positions=pos), layer_idx=0)
    mask_plain = attention.compute_mask(AttentionContext(q, k, v, query_positions=pos), layer_idx=0)
    # same picks; weights (sampling probabilities) equal up to float32 reduction order
    assert torch.equal(mask_views.active(), mask_plain.active())
    assert torch.allclose(mask_views.to_dense(), mask_plain.to_dense(), rtol=1e-5, atol=0)
