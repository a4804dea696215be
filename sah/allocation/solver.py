"""Multiple-choice knapsack: one option per unit, least total cost under a total weight.

Every unit ``u`` (a layer, or a head inside a layer) offers options ``o`` with a cost
``c[u][o]`` (an error) and a weight ``w[u][o]`` (a density); :func:`solve` picks one
option per unit minimising ``sum_u c[u][o_u]`` subject to ``sum_u w[u][o_u] <= budget``.

Two methods (numpy only, no torch):

- ``"dp"`` (default): exact dynamic programming on a grid of the budget. Weights are
  rounded UP to the grid (``budget / steps``), so every answer is feasible with the true
  weights; the rounding can leave at most ``units * budget / steps`` of the budget unused,
  which :func:`fill` then spends greedily on the true weights. Work: ``options * steps``
  vector operations of length ``steps`` per unit (30 layers x 16 sizes x 12000 steps:
  about 0.1 s). Exact up to that rounding, whatever the shape of the curves.
- ``"lagrangian"``: minimise ``c + lambda * w`` per unit with ``lambda`` bisected to the
  budget, which only reaches the points on each unit's lower convex hull and can leave
  budget unspent; :func:`fill` then spends it greedily. Kept as the classic baseline.

:func:`dp_tables` exposes the DP's table for every budget on the grid (the per-head
allocation uses it to get each layer's whole error-versus-density staircase at once).
"""

from __future__ import annotations

from typing import List, Sequence, Tuple

import numpy as np

METHODS = ("dp", "lagrangian")


def _padded(costs: Sequence[np.ndarray], weights: Sequence[np.ndarray]) -> Tuple[np.ndarray, np.ndarray]:
    """``(U, O)`` arrays, missing options as cost inf and weight inf."""
    if len(costs) != len(weights):
        raise ValueError(f"{len(costs)} cost arrays but {len(weights)} weight arrays")
    width = max(len(c) for c in costs)
    c = np.full((len(costs), width), np.inf)
    w = np.full((len(costs), width), np.inf)
    for u, (cu, wu) in enumerate(zip(costs, weights)):
        cu, wu = np.asarray(cu, float), np.asarray(wu, float)
        if cu.shape != wu.shape or cu.ndim != 1 or not len(cu):
            raise ValueError(f"unit {u}: costs {cu.shape} and weights {wu.shape} must be the "
                             f"same non-empty 1-d shape")
        if not (np.isfinite(cu).all() and np.isfinite(wu).all()) or (wu < 0).any():
            raise ValueError(f"unit {u}: costs and weights must be finite and weights >= 0")
        c[u, :len(cu)], w[u, :len(wu)] = cu, wu
    return c, w


def _check_budget(w: np.ndarray, budget: float) -> None:
    least = float(np.nanmin(np.where(np.isfinite(w), w, np.nan), axis=1).sum())
    if least > budget * (1 + 1e-12):
        raise ValueError(f"the budget {budget:.6g} is below the least total weight {least:.6g} "
                         f"(every unit at its smallest option); raise the target or offer "
                         f"smaller sizes")


def solve(costs: Sequence[np.ndarray], weights: Sequence[np.ndarray], budget: float,
          method: str = "dp", steps: int | None = None) -> np.ndarray:
    """The chosen option index of every unit (``int`` array of length ``U``)."""
    if method not in METHODS:
        raise ValueError(f"method: got {method!r}; use one of {', '.join(METHODS)}")
    c, w = _padded(costs, weights)
    _check_budget(w, budget)
    if method == "dp":
        choice = _solve_dp(c, w, budget, steps or default_steps(len(c)))
    else:
        choice = _solve_lagrangian(c, w, budget)
    return fill(c, w, choice, budget)


def default_steps(units: int) -> int:
    """Grid steps of the budget: rounding costs at most ``units / steps`` of the budget
    (before :func:`fill` spends it)."""
    return int(min(200_000, max(4000, 400 * units)))


def pareto_options(q: np.ndarray, c: np.ndarray) -> List[int]:
    """Indices of the options no other option beats (lower or equal weight and lower cost),
    ascending in weight: the only ones a DP needs."""
    order = np.lexsort((c, q))
    keep, best = [], np.inf
    for o in order:
        if np.isfinite(c[o]) and c[o] < best:
            keep.append(int(o))
            best = c[o]
    return keep


def dp_tables(c: np.ndarray, q: np.ndarray, steps: int) -> Tuple[np.ndarray, np.ndarray]:
    """DP over units with integer weights ``q`` (``(U, O)``, cost ``c``).

    Returns ``best`` (``steps + 1``): the least cost with total weight ``<= b`` for every
    ``b``, and ``choice`` (``(U, steps + 1)``, -1 where infeasible): unit ``u``'s option in
    that solution, read backwards (see :func:`backtrack`).
    """
    units = c.shape[0]
    best = np.zeros(steps + 1)
    choice = np.full((units, steps + 1), -1, dtype=np.int32)
    for u in range(units):
        nxt = np.full(steps + 1, np.inf)
        arg = choice[u]
        for o in pareto_options(q[u], c[u]):
            qo = int(q[u, o])
            if qo > steps:
                break
            cand = best[:steps + 1 - qo] + c[u, o]
            seg = nxt[qo:]
            better = cand < seg
            seg[better] = cand[better]
            arg[qo:][better] = o
        best = nxt
    return best, choice


def backtrack(choice: np.ndarray, q: np.ndarray, budgets: np.ndarray) -> np.ndarray:
    """Options ``(U, len(budgets))`` of the DP solutions at each budget (vectorised)."""
    b = np.asarray(budgets, dtype=np.int64).copy()
    out = np.empty((choice.shape[0], len(b)), dtype=np.int64)
    for u in range(choice.shape[0] - 1, -1, -1):
        o = choice[u, b]
        out[u] = o
        b = b - q[u, np.maximum(o, 0)]
    return out


def quantize(w: np.ndarray, unit: float) -> np.ndarray:
    """Weights in grid units, rounded up (a tiny tolerance keeps exact multiples exact)."""
    with np.errstate(invalid="ignore"):
        q = np.ceil(w / unit - 1e-9)
    return np.where(np.isfinite(q), q, np.iinfo(np.int64).max // 4).astype(np.int64).clip(0)


def _solve_dp(c: np.ndarray, w: np.ndarray, budget: float, steps: int) -> np.ndarray:
    if budget <= 0:  # only weightless options fit: the least weight per unit, then fill
        return np.nanargmin(np.where(np.isfinite(w), w, np.nan), axis=1)
    q = quantize(w, budget / steps)
    best, choice = dp_tables(c, q, steps)
    if not np.isfinite(best[steps]):
        # the grid's rounding made it infeasible: the least option per unit, then fill
        return np.nanargmin(np.where(np.isfinite(w), w, np.nan), axis=1)
    return backtrack(choice, q, np.array([steps]))[:, 0]


def _solve_lagrangian(c: np.ndarray, w: np.ndarray, budget: float) -> np.ndarray:
    def pick(lam: float) -> np.ndarray:
        total = np.where(np.isfinite(c), c + lam * np.where(np.isfinite(w), w, 0), np.inf)
        # ties: the lighter option
        total = total + 1e-15 * np.where(np.isfinite(w), w, 0)
        return np.argmin(total, axis=1)

    def weight(choice: np.ndarray) -> float:
        return float(w[np.arange(len(w)), choice].sum())

    lo, hi = 0.0, 1.0
    if weight(pick(lo)) <= budget:
        return pick(lo)
    while weight(pick(hi)) > budget and hi < 1e12:
        hi *= 4.0
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if weight(pick(mid)) <= budget:
            hi = mid
        else:
            lo = mid
    return pick(hi)


def fill(c: np.ndarray, w: np.ndarray, choice: np.ndarray, budget: float,
         max_moves: int = 100_000) -> np.ndarray:
    """Spend what the budget has left: repeatedly move one unit to the option with the most
    cost saved per extra weight that still fits (free improvements first)."""
    choice = np.asarray(choice, dtype=np.int64).copy()
    rows = np.arange(len(c))
    for _ in range(max_moves):
        used = float(w[rows, choice].sum())
        left = budget - used
        with np.errstate(invalid="ignore"):
            dc = c - c[rows, choice][:, None]
            dw = w - w[rows, choice][:, None]
        ok = (np.isfinite(c) & (dc < -1e-15 * np.maximum(1.0, np.abs(c)))
              & (dw <= left + 1e-12 * max(1.0, budget)))
        if not ok.any():
            return choice
        safe_dc, safe_dw = np.where(ok, dc, 0.0), np.where(ok, np.maximum(dw, 1e-300), 1.0)
        gain = np.where(ok, -safe_dc / safe_dw, -np.inf)
        gain = np.where(ok & (dw <= 0), np.inf, gain)
        u, o = np.unravel_index(int(np.argmax(gain)), gain.shape)
        choice[u] = o
    return choice


def total(c: Sequence[np.ndarray], choice: np.ndarray) -> float:
    return float(sum(np.asarray(cu, float)[o] for cu, o in zip(c, choice)))
