"""Uniform draws without replacement (sah.maskers.draws) against a plain-loop reference of
the documented stream: the same keys per row whatever the layout, budgets, candidate
patterns and round sizes; each candidate drawn with probability B / N."""

import math

import pytest
import torch

from sah.maskers import draws
from sah.maskers.draws import GAMMA, MIX1, MIX2, uniform_subsets

MASK = (1 << 64) - 1


def mix(z):
    z = ((z ^ (z >> 30)) * MIX1) & MASK
    z = ((z ^ (z >> 27)) * MIX2) & MASK
    return z ^ (z >> 31)


def reference_draw(candidates, budget, key):
    """The module docstring's rule with Python integers and floats, one row at a time."""
    picks = []
    for r, row in enumerate(candidates.tolist()):
        keys = [j for j, c in enumerate(row) if c]
        n_cand, b = len(keys), min(int(budget[r]), len(keys))
        if b == 0:
            picks.append(set())
            continue
        leave_out = 2 * b > n_cand
        target = n_cand - b if leave_out else b
        lo, hi = keys[0], keys[-1] + 1
        seen, i = [], 0
        while len(seen) < target:
            u = (mix((key + ((r << 32) + i) * GAMMA) & MASK) >> 11) * 2.0 ** -53
            j = lo + min(math.floor(u * (hi - lo)), hi - lo - 1)
            if row[j] and j not in seen:
                seen.append(j)
            i += 1
        picks.append(set(keys) - set(seen) if leave_out else set(seen))
    return picks


def drawn_sets(chosen, keep):
    return [set(c[k].tolist()) for c, k in zip(chosen, keep)]


@pytest.mark.parametrize("seed", range(8))
def test_draws_match_the_plain_loop_reference(seed):
    g = torch.Generator().manual_seed(seed)
    n = 200
    density = [0.9, 0.5, 0.05][seed % 3]
    candidates = torch.rand(3, 4, n, generator=g) < density
    candidates[0, 0] = False                         # no candidate
    candidates[0, 1] = False
    candidates[0, 1, 150] = True                     # one candidate
    budget = torch.randint(0, n // 2, (3, 4, 1), generator=g)
    budget[1, 0] = n                                 # every candidate
    budget[1, 1] = 1
    key = int(torch.randint(0, 1 << 62, (1,), generator=g))
    chosen, keep = uniform_subsets(candidates, budget, key)
    flat = candidates.reshape(-1, n)
    got = drawn_sets(chosen, keep)
    assert got == reference_draw(flat, budget.reshape(-1), key)
    for r, picked in enumerate(got):
        assert len(picked) == min(int(budget.reshape(-1)[r]), int(flat[r].sum()))
        assert all(bool(flat[r, j]) for j in picked)


def test_draws_do_not_depend_on_the_round_size_or_the_layout(monkeypatch):
    g = torch.Generator().manual_seed(11)
    candidates = torch.rand(2, 3, 500, generator=g) < 0.3
    budget = torch.randint(1, 140, (2, 3, 1), generator=g)
    one_round = drawn_sets(*uniform_subsets(candidates, budget, 77))
    monkeypatch.setattr(draws, "ROUND_FACTOR", 0.05)  # many small rounds
    monkeypatch.setattr(draws, "ROUND_MARGIN", 1)
    assert drawn_sets(*uniform_subsets(candidates, budget, 77)) == one_round
    # a broadcast (stride 0) view over heads draws as its copy does
    shared = candidates[:, :1].expand(2, 3, 500)
    assert (drawn_sets(*uniform_subsets(shared, budget, 77))
            == drawn_sets(*uniform_subsets(shared.contiguous(), budget, 77)))


def test_every_candidate_is_drawn_with_probability_budget_over_count():
    candidates = torch.zeros(1, 300, dtype=torch.bool)
    candidates[0, 40:260:3] = True                   # 74 candidates in a wider span
    counts = torch.zeros(300)
    draws_made = 3000
    for key in range(draws_made):
        chosen, keep = uniform_subsets(candidates, torch.tensor([[20]]), key * 2654435761 + 1)
        counts[chosen[0][keep[0]]] += 1
    p = 20 / 74
    freq = counts[candidates[0]] / draws_made
    se = math.sqrt(p * (1 - p) / draws_made)
    assert float((freq - p).abs().max()) < 4.5 * se
    assert float(counts[~candidates[0]].sum()) == 0


@pytest.mark.parametrize("n", [64, 200, 1024, 500])
def test_candidate_span_is_the_first_and_last_candidate(n):
    g = torch.Generator().manual_seed(n)
    for share in (0.001, 0.02, 0.5):
        flags = torch.rand(40, n, generator=g) < share
        flags[0] = False
        flags[1] = False
        flags[1, n - 1] = True
        flags[2] = False
        flags[2, 0] = True
        lo, hi = draws.candidate_span(flags, flags.sum(-1))
        for r in range(40):
            where = flags[r].nonzero().view(-1).tolist()
            assert (int(lo[r]), int(hi[r])) == ((where[0], where[-1] + 1) if where else (0, 1))
