"""Every optimised path against the plain reference implementation, on random cases."""

import pytest
import torch

from helpers import random_qkv
from sah import AttentionContext
from sah.maskers.top_k import (top_k_positions, top_k_positions_presorted, top_p_positions,
                               top_p_positions_presorted)


def random_case(seed, ties=False):
    g = torch.Generator().manual_seed(seed)
    shape = (2, 3, 4, 37)
    scores = torch.randn(shape, generator=g)
    if ties:  # few distinct values: many exact ties
        scores = (scores * 2).round() / 2
    candidates = torch.rand(shape, generator=g) < torch.rand(1, generator=g).item()
    candidates[0, 0, 0] = False  # a row without candidates
    return scores, candidates


def presort(scores):
    values, order = torch.sort(scores, dim=-1, descending=True, stable=True)
    return values, order


@pytest.mark.parametrize("seed", range(40))
def test_top_k_presorted_matches_topk(seed):
    scores, candidates = random_case(seed, ties=False)
    for k in (0, 1, 3, 10, 37, 50):
        fast = top_k_positions_presorted(presort(scores)[1], candidates, k)
        ref = top_k_positions(scores, candidates, k)
        assert torch.equal(fast, ref), k


@pytest.mark.parametrize("seed", range(20))
def test_top_k_presorted_with_ties_picks_equally_good_sets(seed):
    scores, candidates = random_case(seed, ties=True)
    for k in (1, 4, 9):
        fast = top_k_positions_presorted(presort(scores)[1], candidates, k)
        ref = top_k_positions(scores, candidates, k)
        assert torch.equal(fast.sum(-1), ref.sum(-1))
        assert not (fast & ~candidates).any()
        # same multiset of picked scores per row (ties broken differently at most)
        picked_fast = torch.where(fast, scores, torch.full_like(scores, -99)).sort(-1).values
        picked_ref = torch.where(ref, scores, torch.full_like(scores, -99)).sort(-1).values
        assert torch.equal(picked_fast, picked_ref)


@pytest.mark.parametrize("seed", range(40))
@pytest.mark.parametrize("ties", [False, True])
def test_top_p_presorted_matches_reference(seed, ties):
    scores, candidates = random_case(seed, ties=ties)
    values, order = presort(scores)
    for top_p in (0.0, 0.1, 0.5, 0.9, 0.999, 1.0):
        fast = top_p_positions_presorted(values, order, candidates, top_p)
        ref = top_p_positions(scores, candidates, top_p)
        assert torch.equal(fast, ref), top_p


def test_top_p_presorted_survives_a_dominant_non_candidate():
    """The best key is already active (not a candidate) and 200 logits above the rest:
    weights are taken relative to the best candidate, so nothing underflows."""
    scores = torch.tensor([[[[200.0, 1.0, 0.5, 0.0, -1.0]]]])
    candidates = torch.tensor([[[[False, True, True, True, True]]]])
    values, order = presort(scores)
    fast = top_p_positions_presorted(values, order, candidates, 0.5)
    assert torch.equal(fast, top_p_positions(scores, candidates, 0.5))
    assert fast[0, 0, 0].tolist() == [False, True, True, False, False]


def test_context_sorted_logits_are_the_rows_in_descending_order():
    queries, keys, values = random_qkv(b=1, h=4, hk=2, q=3, n=29, d=8, seed=2)
    ctx = AttentionContext(queries, keys, values, query_positions=torch.tensor([10, 20, 28]))
    sorted_values, order = ctx.logits_sorted
    assert torch.equal(ctx.logits.gather(-1, order), sorted_values)
    assert torch.all(sorted_values[..., 1:] <= sorted_values[..., :-1])


@pytest.mark.parametrize("chain", [
    [{"type": "SinkMaskerConfig", "sink_size": 3}, {"type": "OracleTopKConfig", "heavy_size": 0.2}],
    [{"type": "LocalMaskerConfig", "window_size": 4}, {"type": "OracleTopPMaskerConfig", "top_p": 0.7}],
])
def test_shared_context_fast_paths_give_the_same_masks(chain):
    """A context shared by many trials (sorted logits cached) gives the same masks and
    figures as a fresh single-use context."""
    from sah import ResearchAttention, ResearchAttentionConfig
    queries, keys, values = random_qkv(b=1, h=6, hk=2, q=4, n=50, d=8, seed=21)
    pos = torch.tensor([20, 30, 40, 49])
    attn = ResearchAttention.create_from_config(ResearchAttentionConfig.from_dict(chain))
    fresh = AttentionContext(queries, keys, values, query_positions=pos)
    shared = AttentionContext(queries, keys, values, query_positions=pos)
    shared.shared = True
    ev_fresh, mask_fresh = attn.evaluate(fresh)
    ev_shared, mask_shared = attn.evaluate(shared)
    assert "logits_sorted" in shared.__dict__
    assert torch.equal(mask_fresh.to_dense(), mask_shared.to_dense())
    assert ev_fresh.output_error == pytest.approx(ev_shared.output_error, abs=1e-7)


def long_rows_case(seed, ties=False, n=4096):
    """Rows long enough for the sampled-cut prefilter, with sink + local keys taken."""
    from sah import Mask
    g = torch.Generator().manual_seed(seed)
    b, h, q = 2, 4, 3
    scores = torch.randn(b, h, q, n, generator=g)
    if ties:
        scores = (scores * 2).round() / 2
    key = torch.arange(n)
    pos = torch.tensor([n - 40, n - 7, n - 1]).view(1, 1, q, 1)
    previous = (key < 16) | ((key <= pos) & (key > pos - 32))  # sink 16 + local 32, (1, 1, q, n)
    allowed = key <= pos
    candidates = (allowed & ~previous).expand(b, h, q, n)
    return scores, candidates, Mask.from_bool(previous, (b, h, q, n))


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("ties", [False, True])
def test_top_k_keys_are_the_boolean_picks_in_key_order(seed, ties):
    from sah.maskers.top_k import top_k_keys
    scores, candidates, _ = long_rows_case(seed, ties)
    for k in (1, 50, 200, 500):
        keys = top_k_keys(scores, candidates, k)
        picks = top_k_positions(scores, candidates, k)
        if keys is None:  # at 500 of 4096 keys the cut may keep too many in some row
            assert k == 500
            continue
        assert keys.shape == candidates.shape[:3] + (k,)
        want = picks.reshape(-1, picks.shape[-1]).nonzero()[:, 1].view(keys.shape)
        assert torch.equal(keys, want), k


def test_top_k_keys_leave_rows_they_cannot_settle_to_the_boolean_form():
    from sah.maskers.top_k import top_k_keys
    scores, candidates, _ = long_rows_case(0)
    assert top_k_keys(scores, candidates, 600) is None  # k above an eighth of the keys
    assert top_k_keys(scores[..., :1000], candidates[..., :1000], 50) is None  # short rows
    few = candidates.clone()
    few[0, 1, 2, 100:] = False  # one row with fewer than k candidates
    assert top_k_keys(scores, few, 200) is None
    assert top_k_positions(scores, few, 200)[0, 1, 2].sum() == few[0, 1, 2].sum()


@pytest.mark.parametrize("seed", range(4))
def test_picks_merged_in_csr_form_equal_the_boolean_merge(seed):
    from sah import Mask
    from sah.maskers.top_k import top_k_keys
    scores, candidates, previous = long_rows_case(seed)
    keys = top_k_keys(scores, candidates, 200)
    merged = previous.with_row_picks(keys)
    want = Mask.from_bool(top_k_positions(scores, candidates, 200) | previous.active())
    assert merged is not None and merged.is_binary() and not merged.has_dense
    for got, ref in zip(merged.to_sparse(), want.to_sparse()):
        assert torch.equal(got, ref)
    assert merged.num_active() == want.num_active()
    assert torch.equal(merged.active(), want.active())
    assert torch.equal(merged.to_dense(), want.to_dense())


def test_picks_merge_in_csr_form_only_into_a_broadcast_binary_mask():
    from sah import Mask
    scores, candidates, previous = long_rows_case(1)
    keys = torch.zeros(candidates.shape[:3] + (1,), dtype=torch.long)
    full_rows = Mask.from_bool(previous.active().clone())  # one row per (b, h, q): no gain
    assert full_rows.with_row_picks(keys) is None
    assert Mask.from_dense(previous.to_dense() * 0.5).with_row_picks(keys) is None
