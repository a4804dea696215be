"""A study's search domains (:class:`sah.study.space.Domain`) as Ray Tune domains."""

from __future__ import annotations

from typing import Any

from sah.study.space import Domain


def ray_domain(domain: Domain, as_grid: bool) -> Any:
    """The Ray Tune domain; ``as_grid`` turns ``grid`` and ``choice`` into a grid search."""
    from ray import tune
    if domain.kind == "grid" or (as_grid and domain.kind == "choice"):
        return tune.grid_search(list(domain.values))
    if domain.kind == "choice":
        return tune.choice(list(domain.values))
    if domain.kind == "uniform":
        return tune.uniform(domain.low, domain.high)
    if domain.kind == "loguniform":
        return tune.loguniform(domain.low, domain.high)
    if domain.kind == "randint":
        return tune.randint(domain.low, domain.high)
    (_, first), (_, top) = domain.extremes()
    if domain.q == 1:  # Ray's qrandint excludes high for q = 1
        return tune.randint(first, top + 1)
    return tune.qrandint(first, top, domain.q)
