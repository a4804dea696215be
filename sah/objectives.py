"""Objectives (lower is better), Pareto fronts and density targets.

- ``sparsity_T`` (T in percent, any number): ``0.99*error + 0.01*density +
  10*max(0, density - T/100)``.
- ``default``: ``error + 0.1*density + 5*[density > 0.5]``.

A failed trial has no score: it is excluded and listed, never given a finite penalty.
"""

from __future__ import annotations

import math
import re
from typing import Callable, List, Optional, Sequence, Tuple

from sah.infra.checks import ConfigError, short_repr

Objective = Callable[[float, float], float]

_SPARSITY = re.compile(r"^sparsity_(.*)$")
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")  # 10, 2.5, .5, 5., 1e1


def sparsity_objective(target_percent: float) -> Objective:
    target = target_percent / 100.0

    def objective(error: float, density: float) -> float:
        return 0.99 * error + 0.01 * density + 10.0 * max(0.0, density - target)
    return objective


def default_objective(error: float, density: float) -> float:
    return error + 0.1 * density + (5.0 if density > 0.5 else 0.0)


def get_objective(name: str) -> Objective:
    """``"default"`` or ``"sparsity_T"`` with T a percentage, any non-negative finite number
    (``sparsity_10``, ``sparsity_2.5``, ``sparsity_.5``, ``sparsity_1e1``)."""
    if name == "default":
        return default_objective
    match = _SPARSITY.match(name) if isinstance(name, str) else None
    if match:
        text = match.group(1)
        target = float(text) if _NUMBER.match(text) else math.nan
        if math.isfinite(target) and target >= 0:
            return sparsity_objective(target)
        why = "a negative" if target < 0 else "not a finite"
        raise ConfigError(f"objective: got {name!r}: {text!r} is {why} number; T is the density "
                          f"target in percent, a number >= 0 (for example 'sparsity_10')")
    raise ConfigError(f"objective: got {short_repr(name)}; use 'default' or 'sparsity_T' with T a "
                      f"percentage (for example 'sparsity_10')")


def pareto_front(points: Sequence[Tuple[float, float]]) -> List[int]:
    """Indices of the points ``(density, error)`` no other point dominates (both lower is
    better; a point is dominated by one at most as dense and at most as wrong, strictly
    better in one). Exact duplicates do not dominate each other, so all of them are on the
    front. Sorted by (density, error, index). Non-finite points are ignored."""
    order = sorted((i for i, (d, e) in enumerate(points) if math.isfinite(d) and math.isfinite(e)),
                   key=lambda i: (points[i][0], points[i][1], i))
    front: List[int] = []
    best_error = math.inf
    for i in order:
        d, e = points[i]
        if e < best_error or (front and (d, e) == tuple(points[front[-1]])):
            front.append(i)
            best_error = e
    return front


def best_at_density(points: Sequence[Tuple[float, float]], target: float) -> Optional[int]:
    """Index of the lowest-error point with density <= ``target`` (ties: lower density)."""
    best: Optional[int] = None
    for i, (d, e) in enumerate(points):
        if not (math.isfinite(d) and math.isfinite(e)) or d > target:
            continue
        if best is None or (e, d) < (points[best][1], points[best][0]):
            best = i
    return best
