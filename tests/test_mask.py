import re

import pytest
import torch

from sah.mask import Mask


def random_weights(shape, seed=0, density=0.3):
    g = torch.Generator().manual_seed(seed)
    w = torch.rand(shape, generator=g)
    keep = torch.rand(shape, generator=g) < density
    w = torch.where(keep, w.clamp_min(1e-3), torch.zeros_like(w))
    w[..., 0] = torch.where(torch.rand(shape[:-1], generator=g) < 0.5, 1.0, 0.0)  # some 1.0 picks
    return w


def test_dense_sparse_roundtrip_is_exact():
    w = random_weights((2, 3, 4, 17))
    m = Mask.from_dense(w)
    idx, ptr, val = m.to_sparse()
    # rows sorted and duplicate-free
    for r in range(ptr.numel() - 1):
        cols = idx[ptr[r]:ptr[r + 1]]
        assert torch.all(cols[1:] > cols[:-1])
    back = Mask.from_sparse(m.shape, idx, ptr, val)
    assert torch.equal(back.to_dense(), w)
    # brute-force CSR
    flat = w.reshape(-1, 17)
    for r in range(flat.shape[0]):
        nz = [j for j in range(17) if flat[r, j] > 0]
        assert idx[ptr[r]:ptr[r + 1]].tolist() == nz
        assert val[ptr[r]:ptr[r + 1]].tolist() == [float(flat[r, j]) for j in nz]


def test_from_sparse_drops_zero_values():
    shape = (1, 1, 2, 5)
    idx = torch.tensor([0, 3, 1, 4])
    ptr = torch.tensor([0, 2, 4])
    val = torch.tensor([0.5, 0.0, 1.0, 0.25])
    m = Mask.from_sparse(shape, idx, ptr, val)
    assert m.to_sparse()[1].tolist() == [0, 1, 3]
    assert m.to_dense()[0, 0].tolist() == [[0.5, 0, 0, 0, 0], [0, 1.0, 0, 0, 0.25]]


def test_merge_is_clamped_sum_and_does_not_mutate():
    a_w = random_weights((2, 2, 3, 11), seed=1)
    b_w = random_weights((2, 2, 3, 11), seed=2)
    a_copy, b_copy = a_w.clone(), b_w.clone()
    a, b = Mask.from_dense(a_w), Mask.from_dense(b_w)
    merged = a.merge(b).to_dense()
    assert torch.equal(merged, (a_copy + b_copy).clamp(0, 1))
    assert torch.equal(a_w, a_copy) and torch.equal(b_w, b_copy)
    assert torch.equal(a.to_dense(), a_copy)


def test_sparse_sparse_merge_matches_dense_merge():
    a_w = random_weights((1, 3, 4, 9), seed=3)
    b_w = random_weights((1, 3, 4, 9), seed=4)
    a = Mask.from_sparse(a_w.shape, *Mask.from_dense(a_w).to_sparse())
    b = Mask.from_sparse(b_w.shape, *Mask.from_dense(b_w).to_sparse())
    merged = a.merge(b)
    assert not merged.has_dense
    assert torch.equal(merged.to_dense(), (a_w + b_w).clamp(0, 1))


def test_deterministic_pick_wins_over_sample():
    shape = (1, 1, 1, 3)
    sample = Mask.from_dense(torch.tensor([[[[0.3, 0.6, 0.0]]]]))
    pick = Mask.from_dense(torch.tensor([[[[1.0, 0.0, 0.0]]]]))
    assert sample.merge(pick).to_dense().flatten().tolist() == pytest.approx([1.0, 0.6, 0.0])
    assert pick.merge(sample).shape == shape


def test_full_and_empty_flags():
    shape = (1, 2, 3, 4)
    w = Mask.from_dense(random_weights(shape, seed=5))
    full, empty = Mask.create_full(shape), Mask.create_empty(shape)
    assert full.is_full() and not full.is_empty()
    assert empty.is_empty() and not empty.is_full()
    assert w.merge(full).is_full() and full.merge(w).is_full()
    assert w.merge(empty) is w and empty.merge(w) is w
    assert full.density() == 1.0 and empty.density() == 0.0
    assert torch.equal(full.to_dense(), torch.ones(shape))
    assert torch.equal(empty.to_dense(), torch.zeros(shape))
    assert Mask.from_dense(torch.zeros(shape)).is_empty()
    with pytest.raises(ValueError, match="shapes differ"):
        w.merge(Mask.create_empty((1, 2, 3, 5)))


def test_density_counts_only_allowed_positions():
    shape = (2, 3, 4, 10)
    w = random_weights(shape, seed=6, density=0.5)
    positions = torch.tensor([3, 5, 7, 9])
    allowed = torch.arange(10).view(1, 1, 1, -1) <= positions.view(1, 1, -1, 1)
    m = Mask.from_dense(w * allowed)
    active_allowed = total_allowed = active = 0
    for bi in range(2):
        for hi in range(3):
            for qi in range(4):
                for j in range(10):
                    is_allowed = j <= int(positions[qi])
                    total_allowed += is_allowed
                    on = float(w[bi, hi, qi, j]) > 0 and is_allowed
                    active_allowed += on
                    active += on
    assert m.density(allowed) == pytest.approx(active_allowed / total_allowed)
    assert m.density_rect(allowed) == pytest.approx(active / (2 * 3 * 4 * 10))
    per_head = m.per_head_density(allowed)
    for hi in range(3):
        num = sum(int(float(w[bi, hi, qi, j]) > 0 and j <= int(positions[qi]))
                  for bi in range(2) for qi in range(4) for j in range(10))
        den = sum(int(j <= int(positions[qi])) for bi in range(2) for qi in range(4) for j in range(10))
        assert float(per_head[hi]) == pytest.approx(num / den)
    # full mask: density 1 over allowed, rectangle = allowed share
    full = Mask.create_full(shape)
    assert full.density(allowed) == 1.0
    assert full.density_rect(allowed) == pytest.approx(total_allowed / (2 * 3 * 4 * 10))


def test_from_indices_and_from_bool():
    shape = (1, 2, 2, 6)
    idx = torch.tensor([[[[0, 5], [1, 2]], [[3, 3], [4, 0]]]])
    valid = torch.tensor([[[[True, True], [True, False]], [[True, True], [True, True]]]])
    m = Mask.from_indices(shape, idx, valid=valid).to_dense()
    expect = torch.zeros(shape)
    expect[0, 0, 0, [0, 5]] = 1
    expect[0, 0, 1, 1] = 1
    expect[0, 1, 0, 3] = 1
    expect[0, 1, 1, [4, 0]] = 1
    assert torch.equal(m, expect)
    b = Mask.from_bool(torch.tensor([True, False, True, False, False, True]).view(1, 1, 1, 6), shape)
    assert b.to_dense()[0, 1, 1].tolist() == [1, 0, 1, 0, 0, 1]
    assert b.num_active() == 12


def test_binary_form_matches_the_float_form():
    g = torch.Generator().manual_seed(11)
    shape = (2, 3, 4, 13)
    a_bool = torch.rand(shape, generator=g) < 0.3
    b_bool = torch.rand(shape, generator=g) < 0.3
    sampled = random_weights(shape, seed=12)
    a, b = Mask.from_bool(a_bool), Mask.from_bool(b_bool)
    assert a.is_binary() and not Mask.from_dense(a_bool.float()).is_binary()
    assert torch.equal(a.to_dense(), a_bool.float())
    both = a.merge(b)
    assert both.is_binary()
    assert torch.equal(both.to_dense(), (a_bool.float() + b_bool.float()).clamp(0, 1))
    mixed = Mask.from_dense(sampled).merge(a)
    assert torch.equal(mixed.to_dense(), (sampled + a_bool.float()).clamp(0, 1))
    idx, ptr, val = a.to_sparse()
    assert torch.equal(Mask.from_sparse(shape, idx, ptr, val).to_dense(), a_bool.float())
    assert a.num_active() == int(a_bool.sum())
    assert a.density() == pytest.approx(float(a_bool.float().mean()))
    # broadcast booleans expand without copying and still merge exactly
    row = torch.zeros(1, 1, 1, 13, dtype=torch.bool)
    row[..., :3] = True
    sink = Mask.from_bool(row, shape)
    assert torch.equal(sink.merge(a).to_dense(), (a_bool | row).float())


@pytest.mark.parametrize("bad,what", [(1.5, "1.5"), (-0.25, "-0.25"), (float("nan"), "NaN")])
def test_from_dense_refuses_weights_outside_0_1(bad, what):
    """Mask.from_dense refuses a weight above 1, below 0 or NaN, naming the value, its
    index and the range; weights in range are accepted."""
    w = torch.zeros(1, 2, 3, 5)
    w[0, 1, 2, 4] = bad
    with pytest.raises(ValueError, match=re.escape(what) + r".*\(0, 1, 2, 4\).*\[0, 1\]"):
        Mask.from_dense(w)
    Mask.from_dense(w.nan_to_num(0.0).clamp(0, 1))  # in range: accepted


@pytest.mark.parametrize("column", [5, 7, -1])
def test_from_sparse_refuses_columns_outside_the_keys_bad_weights_and_unsorted_rows(column):
    """Mask.from_sparse refuses a column index outside the keys (at once, not later), a
    weight above 1, and rows that are not sorted and duplicate-free."""
    shape = (1, 1, 2, 5)
    ptr = torch.tensor([0, 1, 2])
    with pytest.raises(ValueError, match=f"column index {column} is outside the 5 keys"):
        Mask.from_sparse(shape, torch.tensor([0, column]), ptr, torch.tensor([1.0, 0.5]))
    with pytest.raises(ValueError, match=r"weight 2\.0"):
        Mask.from_sparse(shape, torch.tensor([0, 3]), ptr, torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match="sorted and duplicate-free"):
        Mask.from_sparse(shape, torch.tensor([3, 1]), torch.tensor([0, 2, 2]), torch.tensor([1.0, 1.0]))
