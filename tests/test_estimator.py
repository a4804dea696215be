import math

import pytest
import torch

from helpers import allowed_ref, chain, logits_ref, random_qkv, sparse_attention_ref
from sah import (AttentionContext, Mask, ResearchAttention, ResearchAttentionConfig,
                 SinkMaskerConfig, output_error, sparse_attention)
from sah.estimator import evaluate_mask, horvitz_thompson_weights, per_head_output_error


def decode_positions(q, n):
    # queries spread over the last part of the keys, not all at the end
    return torch.tensor(sorted({n - 1 - 3 * i for i in range(q)}))


def test_context_allowed_and_logits_match_loops():
    queries, keys, values = random_qkv(b=1, h=4, hk=2, q=3, n=9, d=4, seed=1)
    pos = torch.tensor([2, 5, 8])
    ctx = AttentionContext(queries, keys, values, scaling=0.7, query_positions=pos)
    assert torch.equal(ctx.allowed_full, allowed_ref(1, 4, 3, 9, pos))
    ref = logits_ref(queries, keys, 0.7)
    allowed = ctx.allowed_full
    assert torch.allclose(ctx.logits[allowed].double(), ref[allowed], atol=1e-5)
    assert torch.all(torch.isinf(ctx.logits[~allowed]))
    assert torch.all(ctx.exp_scores[~allowed] == 0)


@pytest.mark.parametrize("case", ["causal_at_the_end", "causal_spread", "sliding", "chunked",
                                  "user_mask", "user_mask_over_queries", "all_allowed"])
def test_logits_hide_exactly_the_disallowed_positions(case):
    """The context's logits touch only the key columns holding a disallowed position; the
    result is the logits with -inf at every disallowed position (a full masked_fill)."""
    from sah.layer_types import LayerType
    queries, keys, values = random_qkv(b=2, h=4, hk=2, q=5, n=40, d=8, seed=3)
    pos, layer_type, user = torch.arange(35, 40), None, None
    if case == "causal_spread":
        pos = torch.tensor([3, 11, 20, 21, 39])
    elif case == "sliding":
        layer_type, pos = LayerType(kind="sliding", size=8), torch.tensor([3, 11, 20, 30, 39])
    elif case == "chunked":
        layer_type, pos = LayerType(kind="chunked", size=16), torch.tensor([3, 11, 20, 30, 39])
    elif case == "user_mask":
        user = torch.rand(2, 1, 5, 40, generator=torch.Generator().manual_seed(4)) > 0.3
    elif case == "user_mask_over_queries":  # broadcast over the keys: a whole query row hidden
        user = torch.tensor([True, False, True, True, True]).view(1, 1, 5, 1)
    elif case == "all_allowed":
        pos = torch.full((5,), 39)
    from sah.context import hide_disallowed
    ctx = AttentionContext(queries, keys, values, scaling=0.5, query_positions=pos,
                           attention_mask=user, layer_type=layer_type)
    raw = torch.randn(ctx.mask_shape, generator=torch.Generator().manual_seed(5))
    want = raw.masked_fill(~ctx.allowed_full, float("-inf"))
    assert torch.equal(hide_disallowed(raw.clone(), ctx.allowed), want)
    hidden = ~ctx.allowed_full
    assert torch.equal(torch.isneginf(ctx.logits), hidden)  # the context's logits, same rule
    assert bool(hidden.any()) == (case != "all_allowed")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_dense_output_matches_loops_with_gqa(dtype):
    queries, keys, values = random_qkv(b=2, h=6, hk=2, q=4, n=13, d=5, seed=2, dtype=dtype)
    pos = decode_positions(4, 13)
    ctx = AttentionContext(queries, keys, values, query_positions=pos)
    ref, empty = sparse_attention_ref(queries.float(), keys.float(), values.float(),
                                      1 / math.sqrt(5), pos)
    assert empty == 0
    assert ctx.dense_output.dtype == torch.float32  # softmax in float32 whatever the input
    assert torch.allclose(ctx.dense_output.double(), ref, atol=1e-5)


def test_sparse_estimator_matches_loops():
    queries, keys, values = random_qkv(b=2, h=4, hk=4, q=3, n=11, d=4, seed=3)
    pos = decode_positions(3, 11)
    g = torch.Generator().manual_seed(0)
    w = torch.rand(2, 4, 3, 11, generator=g)
    w = torch.where(torch.rand(w.shape, generator=g) < 0.4, w.clamp_min(0.05), torch.zeros_like(w))
    w[0, 0, 0] = 0.0  # an empty row
    ctx = AttentionContext(queries, keys, values, query_positions=pos)
    result = sparse_attention(ctx, Mask.from_dense(w))
    ref, empty = sparse_attention_ref(queries, keys, values, 0.5, pos, weights=w)
    assert result.empty_rows == empty >= 1
    assert torch.allclose(result.output.double(), ref, atol=1e-5)
    assert torch.all(result.output[0, 0, 0] == 0)
    assert not torch.isnan(result.output).any()


def test_full_mask_is_exactly_dense():
    queries, keys, values = random_qkv(b=1, h=8, hk=2, q=6, n=40, d=16, seed=4)
    ctx = AttentionContext(queries, keys, values)
    full = sparse_attention(ctx, Mask.create_full(ctx.mask_shape))
    ones = sparse_attention(ctx, Mask.from_dense(torch.ones(ctx.mask_shape)))
    assert torch.equal(full.output, ctx.dense_output)
    assert torch.equal(ones.output, ctx.dense_output)
    assert output_error(ctx.dense_output, full.output) == 0.0
    # an empty chain is dense attention, and equals torch's causal SDPA
    attn = ResearchAttention.create_from_config(ResearchAttentionConfig([]))
    out, weights = attn.custom_attention(None, queries, keys, values, None, None)
    assert weights is None  # weights only when asked for
    out, weights = attn.custom_attention(None, queries, keys, values, None, None, return_weights=True)
    sdpa_mask = torch.arange(40).view(1, -1) <= torch.arange(34, 40).view(-1, 1)
    ref = torch.nn.functional.scaled_dot_product_attention(
        queries, keys.repeat_interleave(4, 1), values.repeat_interleave(4, 1), attn_mask=sdpa_mask)
    assert torch.allclose(out, ref, atol=1e-5)
    assert torch.allclose(weights.sum(-1), torch.ones(1, 8, 6))


def test_empty_mask_gives_zero_output_and_counts_rows():
    queries, keys, values = random_qkv(b=1, h=2, hk=1, q=3, n=7, d=4)
    ctx = AttentionContext(queries, keys, values)
    result = sparse_attention(ctx, Mask.create_empty(ctx.mask_shape))
    assert result.empty_rows == 6
    assert torch.all(result.output == 0)
    ev = evaluate_mask(ctx, Mask.create_empty(ctx.mask_shape))
    assert ev.output_error == pytest.approx(1.0) and ev.density == 0.0 and ev.empty_rows == 6


def test_gqa_equals_expanded_heads():
    queries, keys, values = random_qkv(b=1, h=6, hk=3, q=4, n=15, d=8, seed=5)
    g = torch.Generator().manual_seed(1)
    w = (torch.rand(1, 6, 4, 15, generator=g) < 0.5).float()
    w[..., -1] = 1.0
    gqa = AttentionContext(queries, keys, values)
    mha = AttentionContext(queries, keys.repeat_interleave(2, 1), values.repeat_interleave(2, 1))
    assert torch.allclose(sparse_attention(gqa, Mask.from_dense(w)).output,
                          sparse_attention(mha, Mask.from_dense(w)).output, atol=1e-6)


def test_sampled_mask_gives_unbiased_numerator_and_denominator():
    """Poisson sampling: each allowed key kept independently with probability p_j, weight p_j.
    Over many draws (the batch dimension), the means of sum u_j V_j and sum u_j equal the
    dense sums. Tolerance: 5 standard errors of the mean, computed from the draws."""
    draws = 20000
    q1, k1, v1 = random_qkv(b=1, h=2, hk=1, q=2, n=12, d=3, seed=6)
    queries, keys, values = (t.expand(draws, -1, -1, -1).contiguous() for t in (q1, k1, v1))
    ctx = AttentionContext(queries, keys, values)
    g = torch.Generator().manual_seed(7)
    p = torch.rand(1, 2, 2, 12, generator=g) * 0.8 + 0.1
    keep = torch.rand(draws, 2, 2, 12, generator=g) < p
    mask = Mask.from_dense(torch.where(keep, p.expand(draws, -1, -1, -1), torch.zeros(())))
    u = horvitz_thompson_weights(ctx, mask)
    num = ctx.weighted_values(u)          # (draws, h, q, d)
    den = u.sum(-1)                       # (draws, h, q)
    exact_num = ctx.weighted_values(ctx.exp_scores)[0]
    exact_den = ctx.row_sum[0, ..., 0]
    for est, exact in ((num, exact_num), (den, exact_den)):
        mean = est.double().mean(0)
        sem = est.double().std(0) / math.sqrt(draws)
        assert torch.all((mean - exact.double()).abs() <= 5 * sem + 1e-9), (mean, exact)


def test_output_error_formulas():
    dense = torch.randn(2, 3, 4, 5, generator=torch.Generator().manual_seed(8))
    sparse = dense + 0.1 * torch.randn(2, 3, 4, 5, generator=torch.Generator().manual_seed(9))
    ref = math.sqrt(float(((dense - sparse) ** 2).sum())) / math.sqrt(float((dense ** 2).sum()))
    assert output_error(dense, sparse) == pytest.approx(ref, rel=1e-6)
    per_head = per_head_output_error(dense, sparse)
    for hi in range(3):
        r = math.sqrt(float(((dense[:, hi] - sparse[:, hi]) ** 2).sum())) / math.sqrt(
            float((dense[:, hi] ** 2).sum()))
        assert float(per_head[hi]) == pytest.approx(r, rel=1e-5)


def test_user_attention_mask_bool_and_additive():
    queries, keys, values = random_qkv(b=1, h=2, hk=2, q=2, n=6, d=4, seed=10)
    user = torch.tensor([True, False, True, True, True, True]).view(1, 1, 1, 6)
    additive = torch.where(user, 0.0, float("-inf"))
    a = AttentionContext(queries, keys, values, attention_mask=user)
    b = AttentionContext(queries, keys, values, attention_mask=additive)
    assert torch.equal(a.allowed_full, b.allowed_full)
    assert not bool(a.allowed_full[..., 1].any())
    # dropping key 1 by the user mask equals attention without key 1
    keep = torch.tensor([0, 2, 3, 4, 5])
    c = AttentionContext(queries, keys[:, :, keep], values[:, :, keep],
                         scaling=0.5, query_positions=torch.tensor([3, 4]))
    assert torch.allclose(a.dense_output, c.dense_output, atol=1e-6)
    with pytest.raises(ValueError, match="does not broadcast"):
        AttentionContext(queries, keys, values, attention_mask=torch.ones(1, 1, 2, 7, dtype=torch.bool)).allowed


def test_bad_shapes_are_named():
    queries, keys, values = random_qkv(b=1, h=6, hk=4, q=2, n=6, d=4)
    with pytest.raises(ValueError, match=r"query heads \(6\) must be a multiple of key/value heads \(4\)"):
        AttentionContext(queries, keys, values)
    queries, keys, values = random_qkv(b=1, h=4, hk=2, q=2, n=6, d=4)
    with pytest.raises(ValueError, match="beyond the last key"):
        AttentionContext(queries, keys, values, query_positions=torch.tensor([4, 6]))
    with pytest.raises(ValueError, match="head dims differ"):
        AttentionContext(queries, keys[..., :3], values)


@pytest.mark.parametrize("threshold,precompute", [(0.0, False), (1.0, False), (1.0, True)])
def test_gathered_and_dense_paths_agree_with_loops(monkeypatch, threshold, precompute):
    """Both estimator paths (dense weights, CSR gather) give the loop reference's output."""
    import sah.estimator as est
    monkeypatch.setattr(est, "SPARSE_PATH_MAX_DENSITY", threshold)
    monkeypatch.setattr(est, "SPARSE_PATH_MAX_DENSITY_WITH_LOGITS", threshold)
    queries, keys, values = random_qkv(b=2, h=6, hk=2, q=3, n=17, d=4, seed=11, dtype=torch.float16)
    pos = torch.tensor([9, 13, 16])
    g = torch.Generator().manual_seed(3)
    w = torch.rand(2, 6, 3, 17, generator=g)
    w = torch.where(torch.rand(w.shape, generator=g) < 0.2, w.clamp_min(0.05), torch.zeros_like(w))
    w[1, 2, 1] = 0.0
    ctx = AttentionContext(queries, keys, values, query_positions=pos)
    if precompute:
        ctx.logits  # the gathered path then reads them instead of recomputing dot products
    out = sparse_attention(ctx, Mask.from_dense(w))
    ref, empty = sparse_attention_ref(queries.float(), keys.float(), values.float(), 0.5, pos, weights=w)
    assert out.empty_rows == empty
    assert torch.allclose(out.output.double(), ref, atol=1e-5)


def test_blockwise_half_precision_matches_single_block(monkeypatch):
    """Half-precision keys/values are converted block by block; the result must not depend
    on the block size."""
    import sah.context as context_module
    queries, keys, values = random_qkv(b=1, h=4, hk=2, q=3, n=21, d=8, seed=12, dtype=torch.bfloat16)
    whole = AttentionContext(queries, keys, values)
    ref_logits, ref_out = whole.logits.clone(), whole.dense_output.clone()
    monkeypatch.setattr(context_module, "KEY_BLOCK", 4)
    blocked = AttentionContext(queries, keys, values)
    assert torch.allclose(blocked.logits, ref_logits, atol=1e-6, equal_nan=True)
    assert torch.allclose(blocked.dense_output, ref_out, atol=1e-6)


def test_evaluate_mask_figures_match_mask_measures():
    queries, keys, values = random_qkv(b=2, h=4, hk=2, q=3, n=19, d=4, seed=13)
    pos = torch.tensor([6, 12, 18])
    ctx = AttentionContext(queries, keys, values, query_positions=pos)
    g = torch.Generator().manual_seed(5)
    w = torch.where(torch.rand(2, 4, 3, 19, generator=g) < 0.3, 1.0, 0.0)  # some outside allowed
    mask = Mask.from_dense(w)
    ev = evaluate_mask(ctx, mask)
    assert ev.density == pytest.approx(mask.density(ctx.allowed))
    assert ev.density_rect == pytest.approx(mask.density_rect(ctx.allowed))
    assert ev.per_head_density == pytest.approx(mask.per_head_density(ctx.allowed).tolist())
    full = evaluate_mask(ctx, Mask.create_full(ctx.mask_shape))
    assert full.density == 1.0 and full.per_head_density == [1.0] * 4
    assert full.density_rect == pytest.approx(Mask.create_full(ctx.mask_shape).density_rect(ctx.allowed))


@pytest.mark.parametrize("uneven", [False, True])
def test_gathered_path_padded_and_scattered_layouts(monkeypatch, uneven):
    """Rows with equal key counts take the padded batched product, very uneven rows the
    scatter-add; both equal the loop reference."""
    import sah.estimator as est
    monkeypatch.setattr(est, "SPARSE_PATH_MAX_DENSITY", 1.0)
    monkeypatch.setattr(est, "SPARSE_PATH_MAX_DENSITY_WITH_LOGITS", 1.0)
    queries, keys, values = random_qkv(b=1, h=4, hk=2, q=3, n=40, d=4, seed=14)
    pos = torch.tensor([20, 30, 39])
    g = torch.Generator().manual_seed(9)
    w = torch.zeros(1, 4, 3, 40)
    for hi in range(4):
        for qi in range(3):
            count = 30 if (uneven and hi == 0 and qi == 2) else 3
            cols = torch.randperm(int(pos[qi]) + 1, generator=g)[:count]
            w[0, hi, qi, cols] = torch.rand(count, generator=g).clamp_min(0.1)
    if uneven:
        w[0, 3, 1] = 0.0
    ctx = AttentionContext(queries, keys, values, query_positions=pos)
    out = sparse_attention(ctx, Mask.from_dense(w))
    ref, empty = sparse_attention_ref(queries, keys, values, 0.5, pos, weights=w)
    assert out.empty_rows == empty
    assert torch.allclose(out.output.double(), ref, atol=1e-5)


@pytest.mark.parametrize("path", ["dense", "gathered", "weights"])
def test_an_active_key_far_below_the_row_maximum_does_not_underflow_on_any_path(monkeypatch,
                                                                                path):
    """With q = [30, 0], k0 = [-4, 0], k1..k3 = [4, 0] and Sink(1), the only active key k0
    sits 240 logits below the row maximum (an inactive key). Every path (dense, gathered,
    custom_attention's weights) shifts by the max over ACTIVE keys: it returns v0 and
    counts no empty row (shifting by the row maximum would underflow to 0)."""
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
