"""Budget allocation: solvers against brute force, the per-head objective, real recordings."""

import itertools
import json

import numpy as np
import pytest

from sah import (ConfigError, LocalMaskerConfig, OracleTopKConfig, ResearchAttentionConfig,
                 SinkMaskerConfig)
from sah.allocation import (allocate_chain, allocate_heads, allocate_layers,
                            budget_field, evaluate_figures, measure_curves, refine_uniform,
                            with_size)
from sah.allocation import solver
from sah.allocation.curves import Curves
from sah.evaluate import ContextCache, evaluate_config
from sah.recording import make_synthetic_recording


def brute_force(costs, weights, budget):
    best = np.inf
    for pick in itertools.product(*[range(len(c)) for c in costs]):
        if sum(w[o] for w, o in zip(weights, pick)) <= budget + 1e-12:
            best = min(best, sum(c[o] for c, o in zip(costs, pick)))
    return best


@pytest.mark.parametrize("seed", range(25))
def test_dp_finds_the_brute_force_optimum_with_integer_weights(seed):
    rng = np.random.default_rng(seed)
    units, options = rng.integers(2, 6), rng.integers(2, 6)
    costs = [rng.random(options) for _ in range(units)]
    weights = [rng.integers(0, 7, options).astype(float) for _ in range(units)]
    least = sum(w.min() for w in weights)
    budget = float(least + rng.integers(0, 12))
    opt = brute_force(costs, weights, budget)
    choice = solver.solve(costs, weights, budget, "dp", steps=int(budget) or 1)
    assert sum(w[o] for w, o in zip(weights, choice)) <= budget
    assert solver.total(costs, choice) == pytest.approx(opt, abs=1e-12)
    lagrange = solver.solve(costs, weights, budget, "lagrangian")
    assert sum(w[o] for w, o in zip(weights, lagrange)) <= budget + 1e-12
    assert solver.total(costs, lagrange) >= opt - 1e-12


@pytest.mark.parametrize("seed", range(15))
def test_dp_with_real_weights_is_feasible_and_optimal_up_to_its_grid(seed):
    rng = np.random.default_rng(100 + seed)
    units, options = 5, 5
    costs = [np.sort(rng.random(options))[::-1] for _ in range(units)]   # error falls with size
    weights = [np.sort(rng.random(options)) for _ in range(units)]
    budget = float(sum(w.min() for w in weights) + rng.random() * 1.5)
    steps = 1000
    choice = solver.solve(costs, weights, budget, "dp", steps=steps)
    assert sum(w[o] for w, o in zip(weights, choice)) <= budget + 1e-12
    got = solver.total(costs, choice)
    assert got >= brute_force(costs, weights, budget) - 1e-12
    # rounding weights up costs at most units grid steps of the budget
    assert got <= brute_force(costs, weights, budget * (1 - units / steps)) + 1e-12


def test_budget_below_every_assignment_is_refused():
    with pytest.raises(ValueError, match="below the least total weight"):
        solver.solve([np.array([1.0, 0.5])], [np.array([0.3, 0.6])], 0.2)


def synthetic_curves(seed, recordings=1, layers=2, heads=3, sizes=4):
    """Curves with densities on a 0.01 grid of layer density (so a DP can be exact)."""
    rng = np.random.default_rng(seed)
    share = np.array([0.5, 0.25, 0.25])[:heads]
    steps = np.cumsum(rng.integers(0, 4, (recordings, sizes, layers, heads)), axis=1)
    head_density = np.minimum(steps * 0.04, 1.0)
    head_error = np.sort(rng.random((recordings, sizes, layers, heads)), axis=1)[:, ::-1]
    weight = rng.random((recordings, layers, heads)) + 0.1
    weight /= weight.sum(-1, keepdims=True)
    shares = np.broadcast_to(share, (recordings, layers, heads)).copy()
    error = np.sqrt((weight[:, None] * head_error ** 2).sum(-1))
    density = (shares[:, None] * head_density).sum(-1)
    base = ResearchAttentionConfig([SinkMaskerConfig(1), OracleTopKConfig(heavy_size=4)])
    return Curves(base, 1, "heavy_size", [0, 4, 8, 16][:sizes], list(range(layers)),
                  [f"r{i}" for i in range(recordings)], error, density, head_error,
                  head_density, weight, shares)


@pytest.mark.parametrize("seed", range(12))
def test_per_head_allocation_finds_the_brute_force_optimum(seed):
    curves = synthetic_curves(seed)
    S, L, H = 4, 2, 3
    target = 0.01 * np.random.default_rng(seed).integers(5, 60)   # mean layer density
    best = np.inf
    for pick in itertools.product(range(S), repeat=L * H):
        a = np.array(pick).reshape(L, H)
        dens = np.mean([(curves.head_share[0, l] * curves.head_density[0, a[l], l, range(H)]).sum()
                        for l in range(L)])
        if dens <= target + 1e-12:
            err = np.mean([np.sqrt((curves.head_weight[0, l]
                                    * curves.head_error[0, a[l], l, range(H)] ** 2).sum())
                           for l in range(L)])
            best = min(best, err)
    steps = int(round(target * L / 0.01))  # one grid step = 0.01 of layer density: exact
    if not np.isfinite(best):
        with pytest.raises(ValueError, match="below the least total weight"):
            allocate_heads(curves, target, steps=steps)
        return
    got = allocate_heads(curves, target, steps=steps)
    assert got.density <= target + 1e-12
    assert got.error == pytest.approx(best, abs=1e-12)
    assert got.size_index.shape == (L, H)


@pytest.mark.parametrize("seed", range(8))
def test_per_layer_allocation_finds_the_brute_force_optimum_and_respects_the_budget(seed):
    curves = synthetic_curves(seed, recordings=2, layers=4, heads=2)
    L = 4
    target = float(curves.density.mean(0).min(0).mean() + 0.05)
    cost, weight = curves.error.mean(0), curves.density.mean(0)
    best = brute_force([cost[:, l] for l in range(L)], [weight[:, l] for l in range(L)], target * L) / L
    # densities lie on a 0.005 grid: a DP on that grid is exact
    got = allocate_layers(curves, target, steps=int(round(target * L / 0.005)))
    assert got.density <= target + 1e-12
    assert got.error == pytest.approx(best, abs=1e-12)
    # on the default grid: feasible, and at least as good as the optimum of the budget less
    # the grid's rounding (units grid steps)
    got = allocate_layers(curves, target)
    steps = solver.default_steps(L)
    assert got.density <= target + 1e-12 and got.error >= best - 1e-12
    slack = brute_force([cost[:, l] for l in range(L)], [weight[:, l] for l in range(L)],
                        target * L * (1 - L / steps)) / L
    assert got.error <= slack + 1e-12
    # a per-head allocation is never worse than the per-layer one (it can choose the same)
    heads = allocate_heads(curves, target)
    assert heads.density <= target + 1e-12 and heads.error <= got.error + 1e-9


def small_chain(k=16):
    return ResearchAttentionConfig([SinkMaskerConfig(2), LocalMaskerConfig(8),
                                    OracleTopKConfig(heavy_size=k)])


def test_curves_add_heads_up_exactly_and_the_allocated_config_scores_as_predicted():
    recs = [make_synthetic_recording(num_layers=3, num_heads=4, num_kv_heads=2, head_dim=16,
                                     num_keys=256, num_queries=8, seed=seed, dtype="float32",
                                     num_heavy_hitters=12) for seed in (4, 5)]
    rec = recs[0]
    assert budget_field(small_chain()) == (2, "heavy_size")
    cache = ContextCache(max_recordings=2)
    curves = measure_curves(small_chain(), recs, sizes=[0, 4, 8, 12, 16, 20, 24, 32, 48, 64, 128],
                            cache=cache)
    assert curves.recordings == ["recording0", "recording1"]
    # a layer's error is the Frobenius error over its heads, its density the allowed-weighted mean
    assert np.allclose(np.sqrt((curves.head_weight[:, None] * curves.head_error ** 2).sum(-1)),
                       curves.error, rtol=1e-5)
    assert np.allclose((curves.head_share[:, None] * curves.head_density).sum(-1), curves.density)
    target = curves.uniform(4)[1]  # the uniform config at heavy_size 16
    for per_head in (False, True):
        result = allocate_chain(small_chain(), recs, target, per_head, curves=curves, cache=cache)
        assert result.allocated.density <= target + 1e-12
        assert result.allocated.output_error == pytest.approx(result.allocation.error, rel=1e-5)
        assert result.allocated.density == pytest.approx(result.allocation.density, abs=1e-12)
        for r, name in enumerate(curves.recordings):  # each recording's figures as predicted
            err, dens = result.allocated.per_recording[name]
            assert err == pytest.approx(result.allocation.layer_error[r].mean(), rel=1e-5)
            assert dens == pytest.approx(result.allocation.layer_density[r].mean(), abs=1e-12)
        assert result.uniform_size == 16
        assert result.allocated.output_error <= result.uniform.output_error + 1e-12
        if per_head:  # here the layers' curves are alike, but heads differ
            assert result.allocated.output_error < result.uniform.output_error
        overrides = result.config.layer_overrides
        assert sorted(overrides) == rec.layer_ids
        again = evaluate_config(result.config, rec)
        for lf, err in zip(again.layers, result.allocation.layer_error[0]):
            assert lf.output_error == pytest.approx(err, rel=1e-5)
    back = Curves.from_dict(json.loads(json.dumps(curves.to_dict())))
    assert back.sizes == curves.sizes and back.recordings == curves.recordings
    assert np.array_equal(back.head_error, curves.head_error) and back.config == curves.config
    with pytest.raises(ConfigError, match=r"c\.head_share: shape"):
        Curves.from_dict({**curves.to_dict(), "head_share": [[1.0]]}, "c")
    per_head_sizes = [v[2]["heavy_size"] for v in overrides.values()]
    assert any(isinstance(v, list) for v in per_head_sizes)
    back = ResearchAttentionConfig.from_yaml(result.config.to_yaml())
    assert back == result.config


def test_measuring_refuses_a_config_with_overrides_or_without_a_budget_field():
    rec = make_synthetic_recording(num_layers=1, num_heads=2, num_kv_heads=1, head_dim=16,
                                   num_keys=64, num_queries=4)
    with pytest.raises(ConfigError, match="has layer_overrides"):
        measure_curves(ResearchAttentionConfig(small_chain().masker_configs,
                                               layer_overrides={0: {2: {"heavy_size": 4}}}), [rec])
    with pytest.raises(ConfigError, match="no budget field"):
        budget_field(ResearchAttentionConfig([SinkMaskerConfig(2)]))
    with pytest.raises(ConfigError, match="heavy_size: got -1"):
        measure_curves(small_chain(), [rec], sizes=[4, -1])


@pytest.mark.slow
def test_allocation_on_the_default_recording_beats_the_best_uniform_config():
    from sah.recording.embedded import resolve_recording
    from sah.recording.format import load_recording

    rec = load_recording(resolve_recording("default"))
    layers = [0, 6, 12, 18, 24, 29]
    cache = ContextCache()
    chain = ResearchAttentionConfig([SinkMaskerConfig(4), LocalMaskerConfig(32),
                                     OracleTopKConfig(heavy_size=128)])
    curves = measure_curves(chain, [rec], sizes=[0, 16, 32, 64, 96, 128, 192, 256, 512],
                            layers=layers, cache=cache)
    size, uniform_config, uniform = refine_uniform(curves, [rec], 0.10, cache=cache)
    assert 128 < size < 192 and uniform.density <= 0.10
    bigger = with_size(chain, 2, "heavy_size", size + 1)   # the bisection's size is the largest
    assert evaluate_figures(bigger, [rec], ["docs"], layers, cache).density > 0.10
    reductions = {}
    for per_head in (False, True):
        result = allocate_chain(chain, [rec], uniform.density, per_head, curves=curves, cache=cache)
        assert result.allocated.density <= uniform.density + 1e-12
        assert result.allocated.output_error < uniform.output_error
        reductions[per_head] = 1 - result.allocated.output_error / uniform.output_error
    assert reductions[True] > max(0.15, reductions[False])
    assert evaluate_figures(uniform_config, [rec], ["docs"], layers, cache).output_error == \
        pytest.approx(uniform.output_error)
