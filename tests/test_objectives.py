import math
import random

import pytest

from sah import ConfigError, get_objective, pareto_front
from sah.objectives import best_at_density


def test_objective_formulas():
    s10 = get_objective("sparsity_10")
    assert s10(0.2, 0.05) == pytest.approx(0.99 * 0.2 + 0.01 * 0.05)
    assert s10(0.2, 0.15) == pytest.approx(0.99 * 0.2 + 0.01 * 0.15 + 10 * 0.05)
    assert get_objective("sparsity_2.5")(0.1, 0.03) == pytest.approx(0.099 + 0.0003 + 10 * 0.005)
    d = get_objective("default")
    assert d(0.3, 0.2) == pytest.approx(0.32)
    assert d(0.3, 0.6) == pytest.approx(0.3 + 0.06 + 5)
    assert d(0.3, 0.5) == pytest.approx(0.35)
    for bad in ("sparsity", "sparsity_x", "accuracy"):
        with pytest.raises(ConfigError, match="objective: got"):
            get_objective(bad)


def brute_front(points):
    out = []
    for i, (d, e) in enumerate(points):
        if not (math.isfinite(d) and math.isfinite(e)):
            continue
        dominated = any((d2 <= d and e2 <= e and (d2 < d or e2 < e))
                        for j, (d2, e2) in enumerate(points)
                        if j != i and math.isfinite(d2) and math.isfinite(e2))
        if not dominated:
            out.append(i)
    return out


def test_pareto_front_matches_brute_force():
    rnd = random.Random(0)
    for _ in range(200):
        pts = [(rnd.choice([0.1, 0.2, 0.3, rnd.random()]), rnd.choice([0.5, rnd.random()]))
               for _ in range(rnd.randint(1, 25))]
        if rnd.random() < 0.2:
            pts.append((float("nan"), 0.1))
        front = pareto_front(pts)
        brute = brute_front(pts)
        # identical duplicates: both are undominated; the front keeps one of them
        assert {pts[i] for i in front} == {pts[i] for i in brute}


def test_best_at_density():
    pts = [(0.05, 0.4), (0.09, 0.2), (0.11, 0.1), (0.08, 0.2)]
    assert best_at_density(pts, 0.10) == 3
    assert best_at_density(pts, 0.2) == 2
    assert best_at_density(pts, 0.01) is None
