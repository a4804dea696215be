"""Mask resource analysis: the RESOURCES.md reference table and a brute-force greedy reference."""

import json

import numpy as np
import pytest
import torch

from sah.patterns import PATTERN_NAMES, square_mask
from sah.resources import (MaskPoints, analyse_mask, analyse_pattern, pattern_points,
                           points_from_coords, points_from_dense)
from sah.infra.checks import ConfigError

# RESOURCES.md reference: size 1024, N = 64, window 32, stride 32, R = 1000, no zigzag.
# mask: steps, max case time, rows, cols, rows+cols, (max new rows, time), (cols), (total)
REFERENCE = {
    "normal": (8200, 32, 2, 64, 66, (5, 1), (64, 128), (65, 129)),
    "strided": (753, 333, 3, 63, 66, (5, 1), (32, 333), (34, 333)),
    "fixed": (512, 511, 2, 63, 65, (10, 17), (9, 8), (19, 17)),
}


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_reference_table(name):
    a = analyse_pattern(name, 1024, num_multiplications=64, read_limit=1000, window_size=32, stride=32)
    got = (a.steps, a.max_case.time, a.max_case.rows, a.max_case.cols, a.max_case.total,
           (a.max_row_changes.count, a.max_row_changes.time),
           (a.max_col_changes.count, a.max_col_changes.time),
           (a.max_total_changes.count, a.max_total_changes.time))
    assert got == REFERENCE[name]
    lines = a.seed_lines()
    steps, time, rows, cols, total, (nr, tr), (nc, tc), (nt, tt) = REFERENCE[name]
    assert lines == [f"--- {name.capitalize()} Mask ---", f"Total Calculation Points: {steps}",
                     f"Max Case Time: {time}", f"Unique Rows: {rows}", f"Unique Columns: {cols}",
                     f"Total Unique Indices (Rows + Columns): {total}",
                     f"Max Row Changes at time {tr}: {nr} new rows",
                     f"Max Column Changes at time {tc}: {nc} new columns",
                     f"Max Total Changes at time {tt}: {nt} total changes"]


# ----------------------------------------------------------------------------- brute force
def brute_force(dense, n_mult, read_limit, order, zigzag):
    """Per-point greedy walk exactly as RESOURCES.md states it, then every figure directly."""
    mat = dense if order == "row_first" else dense.T
    walk = []
    for r in range(mat.shape[0]):
        cs = [c for c in range(mat.shape[1]) if mat[r, c]]
        if zigzag and r % 2 == 1:
            cs = cs[::-1]
        walk += [(r, c) if order == "row_first" else (c, r) for c in cs]
    steps, cur = [], []
    for (r, c) in walk:
        rows = {p[0] for p in cur} | {r}
        cols = {p[1] for p in cur} | {c}
        if len(rows) + len(cols) > read_limit and cur:
            steps.append(cur)
            cur = []
        cur.append((r, c))
        if len(cur) == n_mult:
            steps.append(cur)
            cur = []
    if cur:
        steps.append(cur)
    rows = [sorted({p[0] for p in s}) for s in steps]
    cols = [sorted({p[1] for p in s}) for s in steps]
    out = {"steps": len(steps), "active": len(walk)}
    if not steps:
        return out, steps
    reads = [len(r) + len(c) for r, c in zip(rows, cols)]
    t = reads.index(max(reads))
    out["max_case"] = (t, len(rows[t]), len(cols[t]), reads[t], rows[t], cols[t])
    new_r = [len(rows[0])] + [len(set(rows[t]) - set(rows[t - 1])) for t in range(1, len(steps))]
    new_c = [len(cols[0])] + [len(set(cols[t]) - set(cols[t - 1])) for t in range(1, len(steps))]
    out["total_reloads"] = sum(new_r) + sum(new_c)
    out["mean_reads"] = sum(reads) / len(steps)
    out["utilisation"] = len(walk) / (len(steps) * n_mult)
    for key, counts in (("rows", new_r), ("cols", new_c), ("total", [a + b for a, b in zip(new_r, new_c)])):
        if len(steps) > 1:
            t = 1 + counts[1:].index(max(counts[1:]))
            out["change_" + key] = (t, counts[t], sorted(set(rows[t]) - set(rows[t - 1])),
                                    sorted(set(cols[t]) - set(cols[t - 1])))
    return out, steps


def check_against_brute_force(dense, n_mult, read_limit, order, zigzag):
    a = analyse_mask(dense, n_mult, read_limit, order=order, zigzag=zigzag)
    ref, ref_steps = brute_force(dense, n_mult, read_limit, order, zigzag)
    ctx = f"shape={dense.shape} N={n_mult} R={read_limit} order={order} zigzag={zigzag}"
    assert (a.steps, a.active) == (ref["steps"], ref["active"]), ctx
    for t, step in enumerate(ref_steps):  # every step's points, in walk order
        rows, cols = a.step_points(t)
        assert list(zip(rows.tolist(), cols.tolist())) == step, ctx
    if not ref_steps:
        return
    mc = a.max_case
    assert (mc.time, mc.rows, mc.cols, mc.total, mc.row_list, mc.col_list) == ref["max_case"], ctx
    assert a.total_reloads == ref["total_reloads"], ctx
    assert a.mean_reads_per_step == pytest.approx(ref["mean_reads"]), ctx
    assert a.utilisation == pytest.approx(ref["utilisation"]), ctx
    for key, fig in (("rows", a.max_row_changes), ("cols", a.max_col_changes),
                     ("total", a.max_total_changes)):
        if "change_" + key in ref:
            assert (fig.time, fig.count, fig.new_rows, fig.new_cols) == ref["change_" + key], ctx
        else:
            assert fig.time is None and fig.count == 0


def test_property_random_masks_against_brute_force():
    rng = np.random.default_rng(1234)
    for trial in range(250):
        rows, cols = rng.integers(1, 24, size=2)
        density = rng.choice([0.05, 0.2, 0.5, 0.9, 1.0])
        dense = rng.random((rows, cols)) < density
        n_mult = int(rng.choice([1, 2, 3, 5, 8, 16, 64]))
        read_limit = int(rng.choice([2, 3, 4, 6, 9, 17, 40, 1000]))
        order = ["row_first", "column_first"][trial % 2]
        zigzag = bool((trial // 2) % 2)
        check_against_brute_force(dense, n_mult, read_limit, order, zigzag)


@pytest.mark.parametrize("name", PATTERN_NAMES)
def test_patterns_against_brute_force(name):
    dense = (square_mask(name, 40, window_size=6, stride=5, dilation=3) != 0).numpy()
    for n_mult, read_limit in ((8, 1000), (16, 9), (7, 5), (64, 40)):
        for order in ("row_first", "column_first"):
            for zigzag in (False, True):
                check_against_brute_force(dense, n_mult, read_limit, order, zigzag)


# ----------------------------------------------------------------------------- inputs
@pytest.mark.parametrize("name", PATTERN_NAMES)
@pytest.mark.parametrize("size,window,stride,dilation", [(1, 1, 1, 1), (37, 5, 3, 2), (64, 16, 16, 2),
                                                         (50, 80, 70, 4), (33, 1, 1, 1)])
def test_pattern_points_match_square_mask(name, size, window, stride, dilation):
    dense = square_mask(name, size, window_size=window, stride=stride, dilation=dilation) != 0
    rows, cols = torch.nonzero(dense, as_tuple=True)
    pts = pattern_points(name, size, window, stride, dilation)
    assert pts.shape == (size, size)
    got_rows = np.repeat(np.arange(size), np.diff(pts.indptr))
    np.testing.assert_array_equal(got_rows, rows.numpy())
    np.testing.assert_array_equal(pts.cols, cols.numpy())


def test_inputs_dense_torch_numpy_and_coordinates_agree():
    rng = np.random.default_rng(7)
    dense = rng.random((30, 20)) < 0.3
    r, c = np.nonzero(dense)
    perm = rng.permutation(r.size)
    dup = np.concatenate([perm, perm[:5]])  # shuffled, with duplicates
    inputs = [dense, torch.from_numpy(dense), dense.astype(np.float32),
              points_from_coords(r[dup], c[dup], dense.shape), points_from_dense(dense)]
    results = [analyse_mask(m, 7, 9).to_dict() for m in inputs]
    assert all(res == results[0] for res in results)
    t = points_from_dense(dense).transpose()
    assert isinstance(t, MaskPoints) and t.shape == (20, 30)
    np.testing.assert_array_equal(np.repeat(np.arange(20), np.diff(t.indptr)), np.nonzero(dense.T)[0])
    np.testing.assert_array_equal(t.cols, np.nonzero(dense.T)[1])


def test_empty_mask_and_json():
    a = analyse_mask(np.zeros((5, 6), dtype=bool), 4, 10)
    assert a.steps == 0 and a.active == 0 and a.max_case.time is None
    b = analyse_pattern("strided", 64, 16, 20, window_size=8, stride=4, zigzag=True)
    doc = json.loads(b.to_json())
    assert doc["steps"] == b.steps and doc["zigzag"] is True and doc["shape"] == [64, 64]
    assert doc["max_case"]["col_list"] == b.max_case.col_list
    assert doc["parameters"] == {"pattern": "strided", "mask_size": 64, "window_size": 8, "stride": 4}
    assert "schedule" not in doc


@pytest.mark.parametrize("kwargs,flag", [
    (dict(num_multiplications=64, read_limit=1), "--read_limit"),
    (dict(num_multiplications=0, read_limit=100), "--num_multiplications"),
    (dict(num_multiplications=64, read_limit=100, window_size=0), "--window_size"),
    (dict(num_multiplications=64, read_limit=100, stride=0), "--stride"),
])
def test_bad_parameters_name_the_flag(kwargs, flag):
    with pytest.raises(ConfigError, match=flag):
        analyse_pattern("strided", 64, **kwargs)


def test_bad_size_order_and_mask_shape():
    with pytest.raises(ConfigError, match="--mask_size"):
        analyse_pattern("normal", 0, 64, 100)
    with pytest.raises(ConfigError, match="--order"):
        analyse_mask(np.ones((3, 3), bool), 4, 10, order="diagonal")
    with pytest.raises(ConfigError, match="2-D"):
        analyse_mask(np.ones((2, 3, 3), bool), 4, 10)
    with pytest.raises(ConfigError, match="outside"):
        points_from_coords([0, 5], [0, 1], (3, 3))
