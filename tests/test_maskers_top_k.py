"""Deterministic data-dependent maskers against brute-force references written here with
plain loops: OracleTopK, OracleTopP, Quest and HashAttention top-k, with GQA, decode-style
query positions, a user attention mask and an already-populated previous mask; and their
stated edge cases (Quest's page count and multi-query choices, sign(0) = 0, ties)."""

import math

import pytest
import torch

from sah import (AttentionContext, HashAttentionTopKMaskerConfig, Mask, OracleTopKConfig,
                 OracleTopPMaskerConfig, QuestTopKMaskerConfig, ResearchAttention,
                 ResearchAttentionConfig)
from sah.estimator import sparse_attention
from sah.maskers.base import ResearchMasker
from helpers import call, chain, random_qkv

B, H, HK, D, N = 2, 4, 2, 8, 48
POSITIONS = torch.tensor([20, 33, 47])  # decode-style: query i sees keys [0, POSITIONS[i]]


def make_ctx(seed=0, user_mask=True, positions=POSITIONS, n=N, d=D):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, len(positions), d, generator=gen)
    k = torch.randn(B, HK, n, d, generator=gen)
    v = torch.randn(B, HK, n, d, generator=gen)
    mask = None
    if user_mask:
        mask = torch.rand(B, 1, len(positions), n, generator=gen) > 0.15
    return AttentionContext(q, k, v, query_positions=positions, attention_mask=mask)


def previous(ctx, seed=1):
    """A previous mask with deterministic picks (1.0) and sampled-like weights (0.3)."""
    gen = torch.Generator().manual_seed(seed)
    r = torch.rand(ctx.mask_shape, generator=gen)
    w = torch.where(r < 0.1, 1.0, torch.where(r < 0.2, 0.3, 0.0))
    return Mask.from_dense(w)


def allowed_ref(ctx, b, h, i, j):
    am = ctx.attention_mask
    ok = j <= int(ctx.query_positions[i])
    if am is not None:
        ok = ok and bool(am[b, 0, i, j])
    return ok


def logit_ref(ctx, b, h, i, j):
    g = ctx.dims.num_heads // ctx.dims.num_kv_heads
    return float(ctx.queries[b, h, i] @ ctx.keys[b, h // g, j]) * ctx.scaling


def run(config, ctx, prev, layer_idx=0):
    masker = ResearchMasker.create_from_config(config)
    return masker.add_mask(ctx.keys, ctx.queries, ctx.values, ctx.attention_mask, ctx.scaling,
                           0.0, {}, prev, context=ctx, layer_idx=layer_idx)


def rows(ctx):
    d = ctx.dims
    for b in range(d.batch_size):
        for h in range(d.num_heads):
            for i in range(d.seq_len_queries):
                yield b, h, i


def expected_from_picks(prev, picks):
    """prev merged with {(b,h,i): set(j)} picks of weight 1."""
    w = prev.to_dense().clone()
    for (b, h, i), js in picks.items():
        for j in js:
            w[b, h, i, j] = 1.0
    return w


@pytest.mark.parametrize("heavy", [5, 0.25, 40])
def test_oracle_top_k_matches_brute_force(heavy):
    ctx = make_ctx()
    prev = previous(ctx)
    k = heavy if isinstance(heavy, int) else int(heavy * N)
    w_prev = prev.to_dense()
    picks = {}
    for b, h, i in rows(ctx):
        cands = [j for j in range(N) if allowed_ref(ctx, b, h, i, j) and w_prev[b, h, i, j] == 0]
        cands.sort(key=lambda j: -logit_ref(ctx, b, h, i, j))
        picks[(b, h, i)] = cands[:k]  # fewer than k candidates: all of them
    out = run(OracleTopKConfig(heavy_size=heavy), ctx, prev)
    assert torch.equal(out.to_dense(), expected_from_picks(prev, picks))
    assert torch.equal(prev.to_dense(), w_prev)  # the previous mask is untouched


def top_p_ref(ctx, w_prev, b, h, i, top_p):
    cands = [j for j in range(ctx.dims.seq_len_keys)
             if allowed_ref(ctx, b, h, i, j) and w_prev[b, h, i, j] == 0]
    if not cands:
        return []
    logits = {j: logit_ref(ctx, b, h, i, j) for j in cands}
    top = max(logits.values())
    weight = {j: math.exp(logits[j] - top) for j in cands}
    total = sum(weight.values())
    order = sorted(cands, key=lambda j: -weight[j])
    if top_p >= 1.0:
        return cands
    covered, chosen = 0.0, []
    for j in order:
        if covered >= top_p * total:
            break
        chosen.append(j)
        covered += weight[j]
    if not chosen:
        return []
    threshold = weight[chosen[-1]]
    return [j for j in cands if weight[j] >= threshold * (1 - 1e-6)]


@pytest.mark.parametrize("top_p", [0.0, 0.3, 0.8, 0.95, 1.0])
def test_oracle_top_p_matches_brute_force(top_p):
    ctx = make_ctx(seed=3)
    prev = previous(ctx, seed=4)
    w_prev = prev.to_dense()
    picks = {row: top_p_ref(ctx, w_prev, *row, top_p) for row in rows(ctx)}
    out = run(OracleTopPMaskerConfig(top_p=top_p), ctx, prev)
    assert torch.equal(out.to_dense(), expected_from_picks(prev, picks))


def test_oracle_top_p_includes_ties_at_threshold():
    # Keys 0..3 identical: their logits tie exactly. One row, all keys allowed.
    gen = torch.Generator().manual_seed(5)
    k = torch.randn(1, 1, 8, 4, generator=gen) * 0.1
    k[0, 0, :4] = torch.tensor([3.0, 0.0, 0.0, 0.0])
    q = torch.tensor([[[[1.0, 0.0, 0.0, 0.0]]]])
    ctx = AttentionContext(q, k, torch.randn(1, 1, 8, 4, generator=gen), scaling=1.0)
    empty = Mask.create_empty(ctx.mask_shape)
    # Each tied key holds ~24% of the mass: reaching 30% needs two, the ties add the rest.
    out = run(OracleTopPMaskerConfig(top_p=0.3), ctx, empty).to_dense()[0, 0, 0]
    assert out[:4].tolist() == [1.0] * 4 and out[4:].sum() == 0


def quantize_ref(vec, bits):
    if bits >= 16:
        return list(vec)
    lo, hi = min(vec), max(vec)
    if hi == lo:
        return list(vec)
    levels = 2 ** bits - 1
    return [lo + min(max(round((x - lo) * levels / (hi - lo)), 0), levels) * (hi - lo) / levels
            for x in vec]


@pytest.mark.parametrize("heavy,page,bits", [(12, 4, 16), (0.3, 5, 4), (2, 8, 16), (20, 3, 2)])
def test_quest_matches_brute_force(heavy, page, bits):
    ctx = make_ctx(seed=6)
    prev = previous(ctx, seed=7)
    w_prev = prev.to_dense()
    g = H // HK
    T = heavy if isinstance(heavy, int) else int(heavy * N)
    pages = math.ceil(N / page)
    wanted = min(pages, max(3, T // page))
    picks = {}
    for b, h, i in rows(ctx):
        t = int(ctx.query_positions[i])
        q = ctx.queries[b, h, i].tolist()
        scores, open_pages = {}, []
        for p in range(pages):
            keys = [j for j in range(p * page, min((p + 1) * page, N)) if j <= t]
            if not keys:
                continue
            kv = ctx.keys[b, h // g]
            lo = quantize_ref([min(float(kv[j, c]) for j in keys) for c in range(D)], bits)
            hi = quantize_ref([max(float(kv[j, c]) for j in keys) for c in range(D)], bits)
            scores[p] = sum(max(q[c] * lo[c], q[c] * hi[c]) for c in range(D))
            if any(allowed_ref(ctx, b, h, i, j) and w_prev[b, h, i, j] == 0 for j in keys):
                open_pages.append(p)
        chosen = sorted(open_pages, key=lambda p: -scores[p])[:wanted]
        picks[(b, h, i)] = [j for p in chosen for j in range(p * page, min((p + 1) * page, N))
                            if allowed_ref(ctx, b, h, i, j)]
    out = run(QuestTopKMaskerConfig(heavy_size=heavy, page_size=page, label_bits=bits), ctx, prev)
    assert torch.equal(out.to_dense(), expected_from_picks(prev, picks))


def random_weights(heads_q, heads_k, sizes, seed):
    gen = torch.Generator().manual_seed(seed)
    w = {"query_matrix": [], "query_bias": [], "key_matrix": [], "key_bias": []}
    for side, heads in (("query", heads_q), ("key", heads_k)):
        for a, b in zip(sizes[:-1], sizes[1:]):
            w[f"{side}_matrix"].append(torch.randn(heads, a, b, generator=gen))
            w[f"{side}_bias"].append(torch.randn(heads, b, generator=gen) * 0.1)
    return w


def mlp_sign_ref(x, mats, biases, head):
    out = x
    for li, (m, bias) in enumerate(zip(mats, biases)):
        out = out @ m[head] + bias[head]
        if li + 1 < len(mats):
            out = torch.relu(out)
    return [1.0 if v >= 0 else -1.0 for v in out.tolist()]


@pytest.mark.parametrize("key_heads", [HK, H])
def test_hash_attention_matches_brute_force(key_heads):
    ctx = make_ctx(seed=8)
    prev = previous(ctx, seed=9)
    w_prev = prev.to_dense()
    bits, hidden, layers, k = 12, 10, 3, 6
    weights = random_weights(H, key_heads, [D, hidden, hidden, bits], seed=10)
    cfg = HashAttentionTopKMaskerConfig(heavy_size=k, hat_bits=bits, hat_mlp_layers=layers,
                                        hat_mlp_hidden_size=hidden, hat_mlp_activation="relu",
                                        hat_weights={2: weights})
    g = H // HK
    picks = {}
    for b, h, i in rows(ctx):
        qs = mlp_sign_ref(ctx.queries[b, h, i], weights["query_matrix"], weights["query_bias"], h)
        kh = h // g if key_heads == HK else h
        score = {}
        for j in range(N):
            if allowed_ref(ctx, b, h, i, j) and w_prev[b, h, i, j] == 0:
                ks = mlp_sign_ref(ctx.keys[b, h // g, j], weights["key_matrix"], weights["key_bias"], kh)
                score[j] = sum(a * c for a, c in zip(qs, ks))
        picks[(b, h, i)] = score
    out = run(cfg, ctx, prev, layer_idx=2).to_dense()
    added = (out > 0) & ~(w_prev > 0)
    for (b, h, i), score in picks.items():
        got = set(added[b, h, i].nonzero().flatten().tolist())
        assert got <= set(score)  # only allowed, not-yet-active keys
        if len(score) <= k:
            assert got == set(score)
            continue
        # Integer scores can tie at the cut: every key above the k-th score is in, and
        # every pick scores at least the k-th score.
        cut = sorted(score.values(), reverse=True)[k - 1]
        assert len(got) == k
        assert {j for j, s in score.items() if s > cut} <= got
        assert all(score[j] >= cut for j in got)
    masker = ResearchMasker.create_from_config(cfg)
    masker.add_mask(ctx.keys, ctx.queries, ctx.values, ctx.attention_mask, ctx.scaling, 0.0, {},
                    prev, context=ctx, layer_idx=2)
    assert masker.aux_bits_per_token(D) == bits * (1 if key_heads == HK else g)


def test_hash_attention_exact_order_with_distinct_scores():
    # One head, 1-layer hash with 20 bits; compare chosen sets where scores are distinct.
    ctx = make_ctx(seed=11, user_mask=False)
    weights = random_weights(H, HK, [D, 40], seed=12)
    cfg = HashAttentionTopKMaskerConfig(heavy_size=N, hat_bits=40, hat_mlp_layers=1,
                                        hat_mlp_hidden_size=1, hat_weights={0: weights})
    out = run(cfg, ctx, Mask.create_empty(ctx.mask_shape)).to_dense()
    assert torch.equal(out > 0, ctx.allowed_full)  # k >= candidates: all allowed keys


def test_selection_respects_causality_and_full_previous():
    ctx = make_ctx(seed=13, user_mask=False)
    for cfg in (OracleTopKConfig(0.9), OracleTopPMaskerConfig(1.0), QuestTopKMaskerConfig(0.9, 4),
                HashAttentionTopKMaskerConfig(0.9, 8, 2, 8)):
        out = run(cfg, ctx, Mask.create_empty(ctx.mask_shape)).to_dense()
        assert not bool((out > 0)[~ctx.allowed_full].any()), type(cfg).__name__
        full = Mask.create_full(ctx.mask_shape)
        assert run(cfg, ctx, full).is_full()


def test_oracle_chain_with_gqa_uses_group_heads():
    # Heads 0,1 share KV head 0: with identical queries they must pick identical keys.
    ctx = make_ctx(seed=14, user_mask=False)
    q = ctx.queries.clone()
    q[:, 1] = q[:, 0]
    ctx2 = AttentionContext(q, ctx.keys, ctx.values, query_positions=POSITIONS)
    attn = ResearchAttention.create_from_config(ResearchAttentionConfig([OracleTopKConfig(7)]))
    w = attn.compute_mask(ctx2).to_dense()
    assert torch.equal(w[:, 0], w[:, 1]) and not torch.equal(w[:, 0], w[:, 2])


@pytest.mark.parametrize("heavy", [0, 0.01])
def test_quest_with_a_heavy_size_of_zero_keys_still_takes_three_whole_pages(heavy):
    """A heavy size that resolves to 0 keys still adds the spec's page count
    min(P, max(3, T // page_size)): 3 whole pages per head."""
    q, k, v = random_qkv(b=1, h=2, hk=1, q=1, n=64, d=8, seed=5)
    ctx = AttentionContext(q, k, v)
    mask = chain(QuestTopKMaskerConfig(heavy_size=heavy, page_size=4)).compute_mask(ctx)
    active = mask.active()[0, :, 0]
    assert active.sum(-1).tolist() == [12, 12]  # three whole pages of 4 keys per head
    pages = active.view(2, 16, 4)
    assert torch.equal(pages.any(-1), pages.all(-1))


def test_quest_bounds_a_querys_own_page_by_its_seen_keys_and_skips_full_pages():
    """With several queries, Quest bounds each query's own page by the keys up to that query
    only, and skips pages whose allowed keys are all active. Both are sah's stated choices
    beyond the spec (docs/maskers.md, Quest; tests/test_docs.py checks the page says so);
    the spec's plain rule would pick other pages in both cases."""
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


def test_hash_attention_sign_of_zero_is_zero():
    """The spec's sign() gives 0 for 0 (not +1): a key whose features are all zero scores 0,
    below a key that agrees with the query on its one non-zero feature."""
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


def test_oracle_top_k_breaks_ties_the_same_way_on_every_path():
    """Tied scores go to the most recent key (highest index) first, with and without the
    shared sorted context and in custom_attention, against a reference sort."""
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
