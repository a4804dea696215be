"""Sampling maskers (random, MagicPig, adaptive/vAttention) against brute-force references:
exact picks and weights per row, the MagicPig transform and collision probability, the
vAttention budget formula, and unbiasedness of the Horvitz-Thompson estimate over seeds.

Statistical tests use fixed seeds (so they are deterministic) and a stated tolerance:
the mean of S independent estimates must lie within Z_TOL standard errors of the exact
value (plus 1e-5 relative, for rows whose estimate has no variance)."""

import math
from statistics import NormalDist

import pytest
import torch

from sah import (AdaptiveSamplingMaskerConfig, AttentionContext, LocalMaskerConfig, Mask,
                 MagicPigConfig, OracleTopKConfig, RandomSamplingMaskerConfig, ResearchAttention,
                 ResearchAttentionConfig, SinkMaskerConfig)
from sah.maskers.adaptive_sampling import adaptive_budget
from sah.maskers.base import ResearchMasker
from sah.maskers.magic_pig import collision_probability, mips_transform

B, H, HK, D, N = 1, 4, 2, 8, 64
POSITIONS = torch.tensor([30, 50, 63])
Z_TOL = 4.5


def make_ctx(seed=0, positions=POSITIONS, n=N, d=D, user_mask=False, spread=1.0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, len(positions), d, generator=gen) * spread
    k = torch.randn(B, HK, n, d, generator=gen)
    v = torch.randn(B, HK, n, d, generator=gen)
    am = torch.rand(B, 1, len(positions), n, generator=gen) > 0.2 if user_mask else None
    return AttentionContext(q, k, v, query_positions=positions, attention_mask=am)


def prefix_mask(ctx):
    """Sink(2) + Local(3) + OracleTopK(2): the deterministic part of a typical chain."""
    attn = ResearchAttention.create_from_config(ResearchAttentionConfig(
        [SinkMaskerConfig(2), LocalMaskerConfig(3), OracleTopKConfig(2)]))
    return attn.compute_mask(ctx)


def run(config, ctx, prev, meta=None, layer_idx=0):
    masker = ResearchMasker.create_from_config(config)
    return masker.add_mask(ctx.keys, ctx.queries, ctx.values, ctx.attention_mask, ctx.scaling,
                           0.0, {} if meta is None else meta, prev, context=ctx,
                           layer_idx=layer_idx)


def ht_estimates(ctx, w):
    """Horvitz-Thompson denominator (b,h,q) and numerator (b,h,q,d) for weights ``w``."""
    active = (w > 0) & ctx.allowed_full
    u = torch.where(active, ctx.exp_scores / torch.where(active, w, torch.ones_like(w)), 0.0)
    return u.double().sum(-1), ctx.weighted_values(u).double()


def assert_unbiased(ctx, masks):
    dens, nums = zip(*(ht_estimates(ctx, m.to_dense()) for m in masks))
    for samples, exact in ((torch.stack(dens), ctx.row_sum.squeeze(-1).double()),
                           (torch.stack(nums), ctx.weighted_values(ctx.exp_scores).double())):
        mean = samples.mean(0)
        se = samples.std(0) / math.sqrt(samples.shape[0])
        gap = (mean - exact).abs()
        assert bool((gap <= Z_TOL * se + 1e-5 * exact.abs() + 1e-6).all()), float((gap / se).max())


def window_rows(ctx):
    d = ctx.dims
    for b in range(d.batch_size):
        for h in range(d.num_heads):
            for i in range(d.seq_len_queries):
                yield b, h, i


# ---------------------------------------------------------------------- random sampling
@pytest.mark.parametrize("rate", [0.05, 0.2, 0.9])
def test_random_sampling_picks_and_weights_match_reference(rate):
    ctx = make_ctx(seed=1, user_mask=True)
    prev = prefix_mask(ctx)
    w_prev = prev.to_dense()
    out = run(RandomSamplingMaskerConfig(sampling_rate=rate, seed=3), ctx, prev).to_dense()
    m = round(rate * N)
    for b, h, i in window_rows(ctx):
        t = int(POSITIONS[i])
        cands = {j for j in range(N) if j <= t and bool(ctx.attention_mask[b, 0, i, j])
                 and w_prev[b, h, i, j] == 0}
        added = {j for j in range(N) if w_prev[b, h, i, j] == 0 and out[b, h, i, j] > 0}
        assert added <= cands and len(added) == min(m, len(cands))
        for j in added:
            assert out[b, h, i, j].item() == pytest.approx(min(m, len(cands)) / len(cands))
    assert torch.equal(out[w_prev > 0], w_prev[w_prev > 0])  # earlier picks kept as they were


def test_random_sampling_is_deterministic_per_seed_and_layer():
    ctx = make_ctx(seed=2)
    empty = Mask.create_empty(ctx.mask_shape)
    a = run(RandomSamplingMaskerConfig(0.2, seed=5), ctx, empty).to_dense()
    assert torch.equal(a, run(RandomSamplingMaskerConfig(0.2, seed=5), ctx, empty).to_dense())
    assert not torch.equal(a, run(RandomSamplingMaskerConfig(0.2, seed=6), ctx, empty).to_dense())
    assert not torch.equal(a, run(RandomSamplingMaskerConfig(0.2, seed=5), ctx, empty,
                                  layer_idx=1).to_dense())


def test_random_sampling_is_unbiased():
    ctx = make_ctx(seed=4, spread=2.0)
    prev = prefix_mask(ctx)
    masks = [run(RandomSamplingMaskerConfig(0.15, seed=s), ctx, prev) for s in range(400)]
    assert_unbiased(ctx, masks)
    # Inclusion frequency of every candidate matches its stored probability.
    w = torch.stack([m.to_dense() for m in masks])
    sampled = (w > 0) & (prev.to_dense() == 0)
    prob = torch.where(sampled, w, 0.0).amax(0)
    freq = sampled.float().mean(0)
    cand = prob > 0
    se = (prob * (1 - prob) / 400).sqrt()
    assert bool(((freq - prob).abs()[cand] <= Z_TOL * se[cand] + 1e-9).all())


# ---------------------------------------------------------------------- MagicPig
def mips_ref(q, k_all, kv_keys, center):
    """Brute-force MIPS transform of one query and one KV head's keys."""
    if center:
        mean = kv_keys.mean(0)
        q, k_all = q - mean, k_all - mean
    norms = [float(torch.linalg.vector_norm(k)) for k in k_all]
    big = max(norms)
    k_hat = [torch.cat([k / big, torch.tensor([math.sqrt(max(big * big - n * n, 0.0)) / big])])
             for k, n in zip(k_all, norms)]
    q_hat = torch.cat([q / torch.linalg.vector_norm(q), torch.zeros(1)])
    return q_hat, k_hat


def test_magic_pig_transform_invariants():
    ctx = make_ctx(seed=6)
    for center in (True, False):
        q_hat, k_hat = mips_transform(ctx.queries, ctx.keys, center)
        assert torch.allclose(torch.linalg.vector_norm(k_hat, dim=-1), torch.ones(1), atol=1e-5)
        assert torch.allclose(torch.linalg.vector_norm(q_hat, dim=-1), torch.ones(1), atol=1e-5)
        # Per head, q^.k^ is q.k / (|q| M) (centred): the order of keys is the order of scores.
        q_ref, k_ref = mips_ref(ctx.queries[0, 3, 1], ctx.keys[0, 1], ctx.keys[0, 1], center)
        got = q_hat[0, 3, 1] @ k_hat[0, 1].T
        want = torch.stack([q_ref @ k for k in k_ref])
        assert torch.allclose(got, want, atol=1e-5)


def test_magic_pig_collision_probability_formula():
    cos = torch.tensor([1.0, 0.5, 0.0, -0.3])
    got = collision_probability(cos, bits=3, tables=5)
    for c, p in zip(cos.tolist(), got.tolist()):
        theta = math.acos(c)
        assert p == pytest.approx(1 - (1 - (1 - theta / math.pi) ** 3) ** 5, rel=1e-5, abs=1e-7)
    assert got[0].item() == 1.0  # parallel vectors collide with probability 1


def test_magic_pig_parallel_key_always_collides_with_weight_one():
    gen = torch.Generator().manual_seed(7)
    q = torch.randn(1, 1, 1, D, generator=gen)
    k = torch.randn(1, 1, 16, D, generator=gen) * 0.2
    k[0, 0, 5] = 10.0 * q[0, 0, 0] / torch.linalg.vector_norm(q)  # parallel, the largest norm
    ctx = AttentionContext(q, k, torch.randn(1, 1, 16, D, generator=gen))
    for seed in range(30):
        w = run(MagicPigConfig(lsh_l=2, lsh_k=10, center=False, seed=seed), ctx,
                Mask.create_empty(ctx.mask_shape)).to_dense()
        assert w[0, 0, 0, 5].item() == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize("center", [True, False])
def test_magic_pig_matches_brute_force(center):
    ctx = make_ctx(seed=8, user_mask=True)
    prev = prefix_mask(ctx)
    w_prev = prev.to_dense()
    K, L, seed, layer = 3, 4, 11, 2
    out = run(MagicPigConfig(lsh_l=L, lsh_k=K, center=center, seed=seed), ctx, prev,
              layer_idx=layer).to_dense()
    planes = torch.randn(D + 1, K * L, generator=torch.Generator().manual_seed(seed + layer))
    g = H // HK
    for b, h, i in window_rows(ctx):
        kv = ctx.keys[b, h // g]
        q_hat, k_hat = mips_ref(ctx.queries[b, h, i], kv, kv, center)
        q_bits = [(q_hat @ planes[:, c]).item() > 0 for c in range(K * L)]
        for j in range(N):
            if not (j <= int(POSITIONS[i]) and bool(ctx.attention_mask[b, 0, i, j])):
                assert out[b, h, i, j] == 0
                continue
            if w_prev[b, h, i, j] > 0:
                assert out[b, h, i, j] == w_prev[b, h, i, j]
                continue
            k_bits = [(k_hat[j] @ planes[:, c]).item() > 0 for c in range(K * L)]
            hit = any(q_bits[t * K:(t + 1) * K] == k_bits[t * K:(t + 1) * K] for t in range(L))
            if not hit:
                assert out[b, h, i, j] == 0
                continue
            theta = math.acos(max(-1.0, min(1.0, float(q_hat @ k_hat[j]))))
            p = 1 - (1 - (1 - theta / math.pi) ** K) ** L
            assert out[b, h, i, j].item() == pytest.approx(p, rel=1e-4)


def test_magic_pig_collision_frequency_matches_probability():
    ctx = make_ctx(seed=9, positions=torch.tensor([N - 1]))
    empty = Mask.create_empty(ctx.mask_shape)
    S = 600
    hits = torch.zeros(ctx.mask_shape)
    for seed in range(S):
        w = run(MagicPigConfig(lsh_l=3, lsh_k=2, seed=seed), ctx, empty).to_dense()
        hits += (w > 0).float()
        prob = torch.where(w > 0, w, 0.0) if seed == 0 else torch.maximum(prob, w)
    q_hat, k_hat = mips_transform(ctx.queries, ctx.keys, True)
    cos = (q_hat.view(1, HK, H // HK, -1) @ k_hat.transpose(-1, -2)).view(ctx.mask_shape)
    expected = collision_probability(cos.double(), 2, 3).float()
    se = (expected * (1 - expected) / S).sqrt()
    assert bool(((hits / S - expected).abs() <= Z_TOL * se + 1e-6).all())


def test_magic_pig_is_unbiased_and_deterministic():
    ctx = make_ctx(seed=10, spread=2.0)
    prev = prefix_mask(ctx)
    cfg = MagicPigConfig(lsh_l=4, lsh_k=2, seed=1)
    assert torch.equal(run(cfg, ctx, prev).to_dense(), run(cfg, ctx, prev).to_dense())
    assert_unbiased(ctx, [run(MagicPigConfig(lsh_l=4, lsh_k=2, seed=s), ctx, prev)
                          for s in range(500)])


# ---------------------------------------------------------------------- adaptive sampling
def test_adaptive_budget_formula():
    gen = torch.Generator().manual_seed(12)
    static = torch.rand(50, generator=gen) * 5
    mean = torch.rand(50, generator=gen)
    std = torch.rand(50, generator=gen) * 3
    count = torch.randint(2, 500, (50,), generator=gen)
    base = torch.minimum(torch.full((50,), 10), count)
    static[0] = 0.0
    mean[0] = 0.0  # D^ = 0: the base size
    for eps, delta in ((0.25, 0.25), (0.05, 0.01), (0.5, 0.4)):
        got = adaptive_budget(static, mean, std, count, base, eps, delta)
        z = NormalDist().inv_cdf(1 - delta)
        for r in range(50):
            est = static[r].item() + count[r].item() * mean[r].item()
            want = base[r].item() if est == 0 else math.ceil(
                (z * std[r].item() * count[r].item() / (eps * est)) ** 2)
            want = min(max(want, base[r].item()), count[r].item())
            assert got[r].item() == want


@pytest.mark.parametrize("base_rate", [0.25, 5, 1.0])
def test_adaptive_sampling_matches_reference(base_rate):
    ctx = make_ctx(seed=13, user_mask=True, spread=2.0)
    prev = prefix_mask(ctx)
    w_prev = prev.to_dense()
    eps, delta, init, local = 0.2, 0.1, 3, 4
    meta = {}
    cfg = AdaptiveSamplingMaskerConfig(base_rate, eps, delta, init, local, seed=2)
    out = run(cfg, ctx, prev, meta).to_dense()
    z = NormalDist().inv_cdf(1 - delta)
    e = ctx.exp_scores
    budgets = []
    for b, h, i in window_rows(ctx):
        t = int(POSITIONS[i])
        allowed = [j for j in range(N) if j <= t and bool(ctx.attention_mask[b, 0, i, j])]
        window = [j for j in allowed if w_prev[b, h, i, j] == 0 and init <= j < t + 1 - local]
        added = [j for j in range(N) if w_prev[b, h, i, j] == 0 and out[b, h, i, j] > 0]
        count = len(window)
        if count < 2:
            assert added == [] and meta["adaptive_sampling_budget"][b, h, i] == 0
            continue
        static = sum(e[b, h, i, j].item() / w_prev[b, h, i, j].item() for j in allowed
                     if w_prev[b, h, i, j] > 0)
        n_b = base_rate if isinstance(base_rate, int) else int(base_rate * count)
        n_b = min(max(2, n_b), count)
        mean = meta["adaptive_sampling_base_mean"][b, h, i].item()
        std = meta["adaptive_sampling_base_std"][b, h, i].item()
        if n_b == count:  # the base sample is the whole window: its statistics are exact
            vals = [e[b, h, i, j].item() for j in window]
            mu = sum(vals) / count
            assert mean == pytest.approx(mu, rel=1e-5)
            assert std == pytest.approx(math.sqrt(sum((x - mu) ** 2 for x in vals) / (count - 1)),
                                        rel=1e-4, abs=1e-9)
        else:
            vals = [e[b, h, i, j].item() for j in window]
            assert min(vals) - 1e-6 <= mean <= max(vals) + 1e-6
        est = static + count * mean
        want = math.ceil((z * std * count / (eps * est)) ** 2) if est > 0 else n_b
        want = min(max(want, n_b), count)
        budget = int(meta["adaptive_sampling_budget"][b, h, i])
        assert abs(budget - want) <= (1 if want not in (n_b, count) else 0)  # ceil at fp edge
        assert set(added) <= set(window) and len(added) == budget
        for j in added:
            assert out[b, h, i, j].item() == pytest.approx(budget / count)
        budgets.append(budget)
    assert meta["adaptive_sampling_mean_budget"] == pytest.approx(sum(budgets) / len(budgets))
    assert meta["adaptive_sampling_mean_budget_per_layer"][0] == meta["adaptive_sampling_mean_budget"]


def test_adaptive_sampling_disabled_and_tiny_windows_return_previous():
    ctx = make_ctx(seed=14)
    prev = prefix_mask(ctx)
    assert run(AdaptiveSamplingMaskerConfig(0, 0.1, 0.1, 0, 0), ctx, prev) is prev
    # init_offset past every query: no window anywhere.
    meta = {}
    assert run(AdaptiveSamplingMaskerConfig(0.5, 0.1, 0.1, N, 0), ctx, prev, meta) is prev
    assert meta["adaptive_sampling_mean_budget"] == 0.0


def test_adaptive_sampling_is_unbiased_and_deterministic():
    ctx = make_ctx(seed=15, spread=2.0)
    prev = prefix_mask(ctx)
    cfg = AdaptiveSamplingMaskerConfig(0.1, 0.4, 0.3, 2, 2, seed=9)
    assert torch.equal(run(cfg, ctx, prev).to_dense(), run(cfg, ctx, prev).to_dense())
    masks = [run(AdaptiveSamplingMaskerConfig(0.1, 0.4, 0.3, 2, 2, seed=s), ctx, prev)
             for s in range(400)]
    assert_unbiased(ctx, masks)
