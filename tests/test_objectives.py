import random

import pytest

from sah import ConfigError, get_objective, pareto_front
from sah.objectives import best_at_density, sparsity_objective
from helpers import brute_force_front


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


def test_pareto_front_matches_brute_force():
    rnd = random.Random(0)
    for _ in range(200):
        pts = [(rnd.choice([0.1, 0.2, 0.3, rnd.random()]), rnd.choice([0.5, rnd.random()]))
               for _ in range(rnd.randint(1, 25))]
        if rnd.random() < 0.2:
            pts.append((float("nan"), 0.1))
        front = pareto_front(pts)
        brute = brute_force_front(pts)
        # the same points (the order and the duplicates: the test below)
        assert {pts[i] for i in front} == {pts[i] for i in brute}


def test_best_at_density():
    pts = [(0.05, 0.4), (0.09, 0.2), (0.11, 0.1), (0.08, 0.2)]
    assert best_at_density(pts, 0.10) == 3
    assert best_at_density(pts, 0.2) == 2
    assert best_at_density(pts, 0.01) is None


def test_pareto_front_keeps_exact_duplicates_and_sparsity_takes_any_number():
    """``pareto_front`` keeps exact duplicates, as its own dominance rule does (the list
    equals the brute force's, in order); ``sparsity_<t>`` takes any number (``.5``,
    ``1e1``, ``5.``); negative and non-finite targets get a clear message."""
    assert pareto_front([(0.1, 0.5), (0.1, 0.5), (0.2, 0.1)]) == [0, 1, 2]
    rnd = random.Random(15)
    for _ in range(300):
        pts = [(rnd.choice([0.1, 0.2, 0.3, rnd.random()]), rnd.choice([0.5, 0.25, rnd.random()]))
               for _ in range(rnd.randint(1, 30))]
        pts += rnd.sample(pts, rnd.randint(0, len(pts)))  # exact duplicates
        if rnd.random() < 0.3:
            pts.append((float("nan"), 0.0))
        rnd.shuffle(pts)
        assert pareto_front(pts) == brute_force_front(pts), pts
    for name, target in (("sparsity_.5", 0.5), ("sparsity_1e1", 10.0), ("sparsity_5.", 5.0),
                         ("sparsity_2.5E0", 2.5), ("sparsity_0", 0.0)):
        for error, density in ((0.1, 0.001), (0.3, 0.2)):
            assert get_objective(name)(error, density) == sparsity_objective(target)(error, density)
    for name, why in (("sparsity_-5", "negative"), ("sparsity_nan", "not a finite"),
                      ("sparsity_inf", "not a finite"), ("sparsity_1e999", "not a finite"),
                      ("sparsity_ten", "not a finite"), ("sparsity_", "not a finite")):
        with pytest.raises(ConfigError, match=why) as info:
            get_objective(name)
        assert "objective: got" in str(info.value) and "sparsity_10" in str(info.value)
