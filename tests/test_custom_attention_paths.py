"""The fast paths of ``custom_attention`` against plain references: exact picks,
outputs within 1e-5 (float32 sums in another order), in ``custom_attention`` as in
evaluation (fresh and shared contexts)."""

import math

import pytest
import torch

from helpers import chain, estimate_ref, random_qkv
from sah import (AdaptiveSamplingMaskerConfig, AttentionContext, HashAttentionTopKMaskerConfig,
                 LocalMaskerConfig, MagicPigConfig, Mask, OracleTopKConfig,
                 OracleTopPMaskerConfig, QuestTopKMaskerConfig, RandomSamplingMaskerConfig,
                 SinkMaskerConfig, StridedPatternConfig)
from sah.estimator import evaluate_mask, sparse_attention
from sah.maskers.magic_pig import KEPT_CODES_KEY, collision_probability
from sah.maskers.top_k import (recent_first_order, top_k_positions, top_k_positions_presorted,
                               top_p_positions, top_p_positions_fast)

TOL = 1e-5


def random_scores(seed, shape=(2, 3, 4, 97), ties=False):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(shape, generator=g) * 3
    if ties:
        scores = (scores * 2).round() / 2
    candidates = torch.rand(shape, generator=g) < torch.rand(1, generator=g).item()
    candidates[0, 0, 0] = False
    candidates[0, 0, 1] = True
    return scores, candidates


# ---------------------------------------------------------------------- selections
@pytest.mark.parametrize("seed", range(25))
@pytest.mark.parametrize("ties", [False, True])
def test_top_k_partial_selection_equals_the_sorted_order(seed, ties):
    """topk + tie repair picks exactly the first k candidates of a descending sort with
    equal scores ordered most recent key first."""
    scores, candidates = random_scores(seed, ties=ties)
    order = recent_first_order(scores)[1]
    for k in (0, 1, 5, 30, 96, 97, 200):
        assert torch.equal(top_k_positions(scores, candidates, k),
                           top_k_positions_presorted(order, candidates, k)), k


@pytest.mark.parametrize("kind", ["plain", "ties", "few", "off_grid", "flat"])
def test_top_k_prefilter_on_long_rows_equals_the_sorted_order(kind):
    """Rows of >= 2048 keys take the sampled-cut prefilter (with per-row fallback); the
    picks equal the first k candidates of the recency-ordered descending sort."""
    g = torch.Generator().manual_seed(5)
    scores = torch.randn(1, 3, 5, 4096, generator=g)
    candidates = torch.rand(scores.shape, generator=g) < 0.9
    if kind == "ties":
        scores = (scores * 2).round() / 2
    elif kind == "few":  # some rows with fewer than k candidates
        candidates[0, 1] &= torch.rand(5, 4096, generator=g) < 0.01
    elif kind == "off_grid":  # the best keys all sit off the sample's grid
        scores[..., 1::16] += 10.0
    elif kind == "flat":
        scores[0, 2] = 1.0
    order = recent_first_order(scores)[1]
    for k in (1, 37, 300, 512):
        assert torch.equal(top_k_positions(scores, candidates, k),
                           top_k_positions_presorted(order, candidates, k)), k


def test_top_k_nan_and_infinite_scores_rank_as_documented():
    scores = torch.tensor([[[[float("nan"), float("-inf"), 1.0, float("inf"), 0.0]]]])
    candidates = torch.tensor([[[[True, True, True, True, False]]]])
    assert top_k_positions(scores, candidates, 2)[0, 0, 0].tolist() == [False, False, True, True, False]
    # NaN and -inf candidates rank as the lowest finite score, ties to the most recent key
    assert top_k_positions(scores, candidates, 3)[0, 0, 0].tolist() == [False, True, True, True, False]


@pytest.mark.parametrize("seed", range(16))
@pytest.mark.parametrize("ties", [False, True])
def test_bucketed_top_p_equals_the_sorting_reference(seed, ties):
    scores, candidates = random_scores(seed, ties=ties)
    if seed % 3 == 0:  # a dominant non-candidate and an underflowing tail
        scores[..., 7] = 400.0
        candidates[..., 7] = False
        scores[..., :5] -= 300.0
    for top_p in (0.0, 0.05, 0.3, 0.5, 0.9, 0.99, 0.999999, 1.0):
        assert torch.equal(top_p_positions_fast(scores, candidates, top_p),
                           top_p_positions(scores, candidates, top_p)), top_p


def test_bucketed_top_p_with_one_heavy_bucket():
    """All candidates of a row in one bucket (equal and nearly equal scores)."""
    scores = torch.zeros(1, 2, 3, 64)
    scores[0, 1] += torch.linspace(0, 1e-3, 64)
    candidates = torch.ones(1, 2, 3, 64, dtype=torch.bool)
    for top_p in (0.1, 0.5, 0.77):
        assert torch.equal(top_p_positions_fast(scores, candidates, top_p),
                           top_p_positions(scores, candidates, top_p))


# ---------------------------------------------------------------------- estimator paths
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("product", ["gather", "csr"])
@pytest.mark.parametrize("user_mask,layout", [(False, "contiguous"), (True, "contiguous"),
                                              (False, "cache_slice"), (True, "transposed")])
def test_gathered_estimator_paths_match_the_reference(monkeypatch, dtype, product, user_mask, layout):
    """Sampled dot products (float32) or gathered rows (half), gathered or CSR value
    products, with and without a user mask, with sampled (non-binary) weights, on keys and
    values as stored (a slice of a longer KV cache: read in place) or transposed views."""
    import sah.estimator as est
    monkeypatch.setattr(est, "SPARSE_PATH_MAX_DENSITY", 1.0)
    monkeypatch.setattr(est, "SPARSE_PATH_MAX_DENSITY_WITH_LOGITS", 1.0)
    if product == "csr":
        monkeypatch.setattr(est, "GATHER_MAX_ENTRIES", 0)
    q, k, v = random_qkv(b=2, h=6, hk=2, q=3, n=31, d=8, seed=7, dtype=dtype)
    pos = torch.tensor([12, 20, 30])
    g = torch.Generator().manual_seed(2)
    w = torch.where(torch.rand(2, 6, 3, 31, generator=g) < 0.3,
                    torch.rand(2, 6, 3, 31, generator=g).clamp_min(0.05), torch.zeros(()))
    w[1, 1, 1] = 0.0  # an empty row
    user = torch.rand(2, 1, 3, 31, generator=g) > 0.2 if user_mask else None
    if layout == "cache_slice":
        k = torch.cat([k, torch.full_like(k[:, :, :5], 9.0)], dim=2)[:, :, :31]
        v = torch.cat([v, torch.full_like(v[:, :, :5], 9.0)], dim=2)[:, :, :31]
    elif layout == "transposed":
        k, v = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in (k, v))
    ctx = AttentionContext(q, k, v, query_positions=pos, attention_mask=user)
    out = sparse_attention(ctx, Mask.from_dense(w))
    ref = estimate_ref(q.float(), k.float(), v.float(), pos, w, allowed_extra=user)
    assert torch.allclose(out.output.double(), ref, atol=TOL)
    assert out.empty_rows >= 1


CHAINS = {
    "sink_local": [SinkMaskerConfig(4), LocalMaskerConfig(6)],
    "top_k": [SinkMaskerConfig(4), LocalMaskerConfig(6), OracleTopKConfig(0.1)],
    "top_p": [SinkMaskerConfig(4), LocalMaskerConfig(6), OracleTopPMaskerConfig(0.8)],
    "random": [SinkMaskerConfig(4), LocalMaskerConfig(6), RandomSamplingMaskerConfig(0.2)],
    "adaptive": [SinkMaskerConfig(4), LocalMaskerConfig(6), OracleTopKConfig(0.05),
                 AdaptiveSamplingMaskerConfig(0.1, 0.3, 0.3, 4, 4)],
    "magic_pig": [SinkMaskerConfig(4), LocalMaskerConfig(6), MagicPigConfig(lsh_l=6, lsh_k=3)],
    "quest": [QuestTopKMaskerConfig(0.1, page_size=4)],
    "hash": [SinkMaskerConfig(4), HashAttentionTopKMaskerConfig(0.1, 8, 2, 8)],
    "strided": [StridedPatternConfig(window_size=4, stride=5)],
    "dense": [],
}


@pytest.mark.parametrize("name", sorted(CHAINS))
@pytest.mark.parametrize("num_queries", [1, 7])
def test_custom_attention_equals_the_evaluated_chain(name, num_queries):
    """custom_attention (fresh context: partial selections, sampled products) gives the
    mask and output that evaluation (shared context, dense path) gives."""
    attention = chain(*CHAINS[name])
    q, k, v = random_qkv(b=1, h=8, hk=2, q=num_queries, n=120, d=16, seed=31)
    out, weights = attention.custom_attention(None, q, k, v, None, None, 0.0, {}, layer_idx=3)
    assert weights is None
    shared = AttentionContext(q, k, v)
    shared.shared = True
    shared.dense_output
    evaluation, mask = attention.evaluate(shared, layer_idx=3)
    fresh_mask = attention.compute_mask(AttentionContext(q, k, v), layer_idx=3)
    assert torch.equal(fresh_mask.active(), mask.active())
    assert torch.allclose(fresh_mask.to_dense(), mask.to_dense(), rtol=1e-6, atol=0)
    expected = sparse_attention(shared, mask).output
    assert torch.allclose(out, expected, atol=TOL)
    pos = torch.arange(120 - num_queries, 120)
    assert torch.allclose(out.double(), estimate_ref(q, k, v, pos, mask.to_dense()), atol=TOL)
    fresh_eval, _ = attention.evaluate(AttentionContext(q, k, v), layer_idx=3)
    assert fresh_eval.output_error == pytest.approx(evaluation.output_error, abs=1e-6)
    assert fresh_eval.density == evaluation.density


def test_return_weights_gives_the_normalised_estimator_weights():
    attention = chain(SinkMaskerConfig(3), RandomSamplingMaskerConfig(0.3))
    q, k, v = random_qkv(b=1, h=4, hk=2, q=2, n=50, d=8, seed=4)
    out, weights = attention.custom_attention(None, q, k, v, None, None, return_weights=True)
    mask = attention.compute_mask(AttentionContext(q, k, v))
    assert torch.equal(weights > 0, mask.active())
    assert torch.allclose(weights.sum(-1), torch.ones(1, 4, 2))
    g = 2
    assert torch.allclose(out, weights @ v.repeat_interleave(g, 1), atol=TOL)


@pytest.mark.parametrize("base_shape", [(1, 1, 1, 23), (1, 1, 4, 23), (2, 1, 4, 23), (1, 3, 1, 23)])
def test_broadcast_binary_masks_give_the_same_csr(base_shape):
    """A binary mask that broadcasts over batch, heads or queries is converted to CSR from
    its distinct rows; the result equals the CSR of the materialised mask."""
    g = torch.Generator().manual_seed(sum(base_shape))
    base = torch.rand(base_shape, generator=g) < 0.3
    base[..., 0, :] = False  # an empty row
    shape = (2, 3, 4, 23)
    fast = Mask.from_bool(base, shape).to_sparse()
    plain = Mask.from_dense(base.expand(shape).float()).to_sparse()
    for a, b in zip(fast, plain):
        assert torch.equal(a, b)


def test_binary_merges_stay_broadcast():
    """Sink + local picks are the same for every head: their merge stays one row."""
    q, k, v = random_qkv(b=1, h=8, hk=2, q=1, n=64, d=8)
    mask = chain(SinkMaskerConfig(3), LocalMaskerConfig(5)).compute_mask(AttentionContext(q, k, v))
    assert mask.active().stride()[1] == 0
    assert mask.to_dense()[0, :, 0].sum(-1).tolist() == [8.0] * 8


# ---------------------------------------------------------------------- MagicPig kept codes
def magic_pig_call(attention, q, k, v, meta, **kwargs):
    return attention.custom_attention(None, q, k, v, None, None, 0.0, meta, layer_idx=2, **kwargs)


def test_magic_pig_kept_codes_give_exactly_the_cold_result():
    """(a) The same sparse_meta_data passed again (codes kept) gives exactly the cold call's
    mask and output; a new dict is cold again."""
    attention = chain(SinkMaskerConfig(2), MagicPigConfig(lsh_l=5, lsh_k=3, seed=9))
    q, k, v = random_qkv(b=2, h=4, hk=2, q=3, n=70, d=8, seed=5)
    meta = {}
    cold, _ = magic_pig_call(attention, q, k, v, meta)
    kept = meta[KEPT_CODES_KEY]
    assert len(kept) == 1 and next(iter(kept.values())).count == 70
    warm, _ = magic_pig_call(attention, q, k, v, meta)
    assert torch.equal(cold, warm)
    fresh, _ = magic_pig_call(attention, q, k, v, {})
    assert torch.equal(cold, fresh)
    ctx = AttentionContext(q, k, v)
    assert torch.equal(attention.compute_mask(ctx, meta, layer_idx=2).to_dense(),
                       attention.compute_mask(ctx, {}, layer_idx=2).to_dense())


def magic_pig_reference(q, k, pos, mean, big, planes, bits, tables, previous):
    """Plain MagicPig weights with given statistics: codes of every key, match in at
    least one table, weight = collision probability of the cosine."""
    g = q.shape[1] // k.shape[1]
    kc = k.double() - mean.double()
    qc = q.double() - mean.double().repeat_interleave(g, 1)
    norm = kc.norm(dim=-1, keepdim=True)
    extra = (big.double() ** 2 - norm ** 2).clamp_min(0).sqrt()
    k_hat = torch.cat([kc / big.double(), extra / big.double()], -1)
    q_hat = torch.cat([qc / qc.norm(dim=-1, keepdim=True), torch.zeros_like(qc[..., :1])], -1)
    planes = planes.double()
    k_bits = (k_hat @ planes > 0).view(*k_hat.shape[:-1], tables, bits)
    q_bits = (q_hat @ planes > 0).view(*q_hat.shape[:-1], tables, bits)
    k_bits = k_bits.repeat_interleave(g, 1)
    same = (q_bits.unsqueeze(3) == k_bits.unsqueeze(2)).all(-1).any(-1)  # (b, h, q, n)
    cosine = q_hat @ k_hat.repeat_interleave(g, 1).transpose(-1, -2)
    allowed = torch.arange(k.shape[2]).view(1, -1) <= pos.view(-1, 1)
    hit = same & allowed & ~previous
    prob = collision_probability(cosine.float(), bits, tables).clamp_min(torch.finfo(torch.float32).tiny)
    return torch.where(hit, prob, torch.zeros(())), hit


def test_magic_pig_grown_keys_use_the_stored_statistics():
    """(b) A decoding loop: the dict filled at 60 keys, then calls with 61..64 keys hash only
    the new keys with the stored mean, max norm and hyperplanes; each call equals the plain
    reference computed with those statistics (exact picks, weights to 1e-5)."""
    bits, tables, seed, layer = 3, 6, 4, 2
    cfg = MagicPigConfig(lsh_l=tables, lsh_k=bits, seed=seed)
    attention = chain(SinkMaskerConfig(2), cfg)
    q_all, k_all, v_all = random_qkv(b=1, h=4, hk=2, q=5, n=64, d=8, seed=8)
    k_all[0, 0, 62] *= 3.0  # a new key longer than the stored max norm
    meta = {}
    magic_pig_call(attention, q_all[:, :, :1], k_all[:, :, :60], v_all[:, :, :60], meta)
    kept = next(iter(meta[KEPT_CODES_KEY].values()))
    mean, big, planes = kept.mean.clone(), kept.big.clone(), kept.planes.clone()
    assert torch.equal(planes, torch.randn(9, bits * tables, generator=torch.Generator().manual_seed(seed + layer)))
    for n in range(61, 65):
        q = q_all[:, :, n - 60:n - 59]
        k, v = k_all[:, :, :n], v_all[:, :, :n]
        out, _ = magic_pig_call(attention, q, k, v, meta)
        assert kept.count == n and torch.equal(kept.mean, mean) and torch.equal(kept.big, big)
        ctx = AttentionContext(q, k, v)
        mask = attention.compute_mask(ctx, meta, layer_idx=layer)
        sink = torch.zeros(ctx.mask_shape, dtype=torch.bool)
        sink[..., :2] = True
        weights, hit = magic_pig_reference(q, k, ctx.query_positions, mean, big, planes, bits,
                                           tables, sink)
        assert torch.equal(mask.active(), hit | sink)
        assert torch.allclose(mask.to_dense(), torch.where(sink, 1.0, weights), rtol=1e-5, atol=0)
        assert torch.allclose(out.double(), estimate_ref(q, k, v, ctx.query_positions, mask.to_dense()),
                              atol=TOL)


def test_magic_pig_recomputes_for_another_sequence_and_keeps_nothing_with_a_generator():
    attention = chain(MagicPigConfig(lsh_l=4, lsh_k=2))
    q, k, v = random_qkv(b=1, h=2, hk=1, q=1, n=40, d=8, seed=1)
    meta = {}
    magic_pig_call(attention, q, k, v, meta)
    k2 = k.clone()
    k2[0, 0, 0] += 1.0  # another sequence in the same dict: recomputed, not reused
    out2, _ = magic_pig_call(attention, q, k2, v, meta)
    assert torch.equal(out2, magic_pig_call(attention, q, k2, v, {})[0])
    assert torch.equal(next(iter(meta[KEPT_CODES_KEY].values())).probe[0, 0, 0], k2[0, 0, 0])
    shorter, _ = magic_pig_call(attention, q, k[:, :, :30], v[:, :, :30], meta)
    assert torch.equal(shorter, magic_pig_call(attention, q, k[:, :, :30], v[:, :, :30], {})[0])
    meta = {}
    magic_pig_call(attention, q, k, v, meta, generator=torch.Generator().manual_seed(0))
    assert not meta.get(KEPT_CODES_KEY)


def test_active_shift_gap_matches_a_plain_shift():
    """Rows whose best active key lies far below the row maximum are shifted by the
    active max; the others keep the cached exp scores; both equal the reference."""
    q, k, v = random_qkv(b=1, h=2, hk=1, q=2, n=30, d=4, seed=3)
    k[0, 0, 29] = q[0, 0, 1] * 40  # a huge logit on the last key
    ctx = AttentionContext(q, k, v)
    ctx.dense_output
    w = torch.zeros(ctx.mask_shape)
    w[..., :5] = 0.5
    out = sparse_attention(ctx, Mask.from_dense(w), return_weights=True)
    ref = estimate_ref(q, k, v, ctx.query_positions, w)
    assert torch.allclose(out.output.double(), ref, atol=TOL)
    assert out.empty_rows == 0 and math.isfinite(float(out.weights.sum()))
    assert evaluate_mask(ctx, Mask.from_dense(w)).empty_rows == 0


def test_quest_kept_page_bounds_equal_fresh_bounds_while_keys_grow():
    """Quest keeps page bounds in sparse_meta_data; growing calls (partial last page
    redone, new pages added) give exactly the masks and outputs of fresh calls."""
    from sah.maskers.quest import KEPT_BOUNDS_KEY
    attention = chain(SinkMaskerConfig(2), QuestTopKMaskerConfig(0.1, page_size=4, label_bits=4))
    q_all, k_all, v_all = random_qkv(b=1, h=4, hk=2, q=6, n=70, d=8, seed=13)
    meta = {}
    for n in (50, 50, 51, 53, 57, 70):
        q, k, v = q_all[:, :, n % 6:n % 6 + 1], k_all[:, :, :n], v_all[:, :, :n]
        out, _ = attention.custom_attention(None, q, k, v, None, None, 0.0, meta, layer_idx=1)
        fresh, _ = attention.custom_attention(None, q, k, v, None, None, 0.0, {}, layer_idx=1)
        assert torch.equal(out, fresh)
        ctx = AttentionContext(q, k, v)
        assert torch.equal(attention.compute_mask(ctx, meta, layer_idx=1).to_dense(),
                           attention.compute_mask(ctx, {}, layer_idx=1).to_dense())
        assert next(iter(meta[KEPT_BOUNDS_KEY].values())).count == n


@pytest.mark.parametrize("name", ["sink_local", "top_k", "top_p", "quest", "strided", "random"])
def test_query_chunks_give_the_unchunked_result(monkeypatch, name):
    """A call with many queries is computed in query chunks when every masker works row by
    row; outputs and weights equal the one-piece call (user mask and positions sliced)."""
    import sah.attention as attention_module
    attention = chain(*CHAINS[name])
    q, k, v = random_qkv(b=2, h=4, hk=2, q=9, n=60, d=8, seed=41)
    pos = torch.tensor([[20, 25, 30, 35, 40, 45, 50, 55, 59], [12, 18, 24, 30, 36, 42, 48, 54, 59]])
    user = torch.rand(2, 1, 9, 60, generator=torch.Generator().manual_seed(1)) > 0.1

    def run():
        return attention.custom_attention(None, q, k, v, user, None, 0.0, {}, layer_idx=1,
                                          query_positions=pos, return_weights=True)

    whole = run()
    monkeypatch.setattr(attention_module, "CHUNK_ELEMENTS", 2 * 4 * 60 * 2)  # 2 queries a chunk
    chunked = run()
    assert attention.rows_independent() == (name != "random")
    assert torch.allclose(chunked[0], whole[0], atol=1e-6)
    assert torch.allclose(chunked[1], whole[1], atol=1e-7)


@pytest.mark.parametrize("rows", [1, 4, 16, 17, 40])
def test_quest_bound_score_both_forms_equal_the_definition(rows):
    """sum_c max(q_c lo_c, q_c hi_c): the sign-split products (few query rows) and the
    mid/half-span products (more rows) both equal the definition."""
    from sah.maskers.quest import bound_score
    g = torch.Generator().manual_seed(rows)
    q = torch.randn(2, 3, rows, 8, generator=g)
    a, b = torch.randn(2, 3, 11, 8, generator=g), torch.randn(2, 3, 11, 8, generator=g)
    lo, hi = torch.minimum(a, b), torch.maximum(a, b)
    want = torch.maximum(q.unsqueeze(-2) * lo.unsqueeze(-3), q.unsqueeze(-2) * hi.unsqueeze(-3)).sum(-1)
    got = bound_score(q, lo, hi)
    assert got.is_contiguous() and torch.allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("follow", [None, "adaptive", "top_k"])
def test_top_k_picks_merged_as_key_lists_give_the_boolean_merge_result(monkeypatch, follow):
    """On long rows after sink + local, top-k merges its picks as key lists in CSR form (no
    (b, h, q, n) picks); the call's output and mask equal the boolean merge's, also when a
    sampler follows and reads the merged mask, or a second top-k (whose previous mask is
    not a broadcast one: its key lists are merged as booleans)."""
    from sah.maskers.top_k import TopKMasker
    configs = [SinkMaskerConfig(sink_size=16), LocalMaskerConfig(window_size=32),
               OracleTopKConfig(heavy_size=0.05)]
    if follow == "adaptive":
        configs.append(AdaptiveSamplingMaskerConfig(base_rate_sampling=0.05, epsilon=0.25,
                                                    delta=0.25, init_offset=16, local_offset=32))
    elif follow == "top_k":
        configs.append(OracleTopKConfig(heavy_size=0.03))
    q, k, v = random_qkv(b=2, h=4, hk=2, q=3, n=4096, d=16, seed=8)
    pos = torch.tensor([2000, 4000, 4095])

    def run():
        out, _, mask = chain(*configs).custom_attention(None, q, k, v, None, None, 0.0, {},
                                                        layer_idx=0, query_positions=pos,
                                                        return_mask=True)
        return out, mask

    lists_out, lists_mask = run()
    if follow is None:
        assert lists_mask.is_binary() and not lists_mask.has_dense  # the CSR route ran
    monkeypatch.setattr(TopKMasker, "select_keys", lambda self, *args: None)
    bool_out, bool_mask = run()
    assert torch.equal(lists_mask.active(), bool_mask.active())
    assert torch.equal(lists_mask.to_dense(), bool_mask.to_dense())
    assert torch.allclose(lists_out, bool_out, atol=1e-4)  # (MKL may round by alignment)
