"""Choose a size per layer (or per head) under one mean density; build the config.

Objective: the mean over recordings of the mean over layers of the layer's output error
(the figure every sah evaluation reports), subject to the mean density over layers (and
recordings) being at most the target ``T``. Densities add up exactly: a layer's density
is the mean of its heads' densities weighted by their allowed positions, and head ``h``'s
rows of a per-head mask are exactly the rows the uniform chain at that head's size gives
(``sah.layer_config``), so the figures predicted from the curves are the figures the
allocated config gets on the recordings it was allocated on.

- **Per layer** (:func:`allocate_layers`): units are layers, each choosing a size of the
  curve; costs (layer errors) and weights (layer densities) add up, so this is a
  multiple-choice knapsack, solved exactly by DP on a grid of the density budget (weights
  rounded up, then the leftover spent greedily on the true densities;
  :mod:`sah.allocation.solver`). A Lagrangian on the lower convex hull only reaches hull
  points and leaves part of the budget unspent; the DP does not, and costs well under a
  second here.
- **Per head** (:func:`allocate_heads`): a layer's error is
  ``E_l = sqrt(sum_h w_h e_h**2)`` (``w_h``: the head's share of the layer's squared dense
  output norm), not a sum over heads, so head errors must not be averaged or added. The
  squared contributions ``w_h e_h**2`` DO add up within a layer, and for a fixed layer
  density minimising ``E_l`` is minimising ``sum_h w_h e_h**2``. Two levels, both exact DPs:
  (1) inside each layer, a DP over its heads with cost ``w_h e_h**2`` gives the best head
  sizes for EVERY layer density on a fine grid (one DP table, backtracked for all budgets at
  once), i.e. the layer's exact error-versus-density staircase; (2) across layers, a DP over
  those staircases with cost ``E_l`` (the true layer error of each staircase point) and
  weight the layer density, then the greedy fill. With several recordings, step (1) uses
  the pooled squared contribution (mean over recordings) and step (2) the exact mean over
  recordings of each point's per-recording layer error.
"""

from __future__ import annotations

import time
import dataclasses
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import numpy as np

from sah.allocation import solver
from sah.allocation.curves import Curves
from sah.attention import ResearchAttentionConfig

#: Grid steps per unit of layer density for the inside-a-layer DP of the per-head allocation.
HEAD_STEPS_PER_LAYER_DENSITY = 20_000


@dataclass
class Allocation:
    """The chosen size of every layer (``per_head``: of every head of every layer)."""

    per_head: bool
    density_target: float
    method: str
    size_index: np.ndarray          # (L,) or (L, H): indices into curves.sizes
    sizes: List[Any]                # per layer: a size, or a list with one size per head
    layers: List[int]
    error: float                    # predicted mean output error (recordings, layers)
    density: float                  # predicted mean density
    layer_error: np.ndarray         # (R, L) predicted
    layer_density: np.ndarray       # (R, L) predicted
    seconds: float = 0.0

    def per_layer_rows(self) -> List[Dict[str, Any]]:
        """One row per layer: layer, size (or sizes per head), predicted error, density."""
        return [{"layer": layer, "size": size, "output_error": float(self.layer_error[:, i].mean()),
                 "density": float(self.layer_density[:, i].mean())}
                for i, (layer, size) in enumerate(zip(self.layers, self.sizes))]


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def allocate_layers(curves: Curves, density: float, method: str = "dp",
                    steps: Optional[int] = None) -> Allocation:
    """One size per layer: least mean layer error with mean layer density <= ``density``."""
    start = time.perf_counter()
    cost = curves.error.mean(0)       # (S, L)
    weight = curves.density.mean(0)   # (S, L)
    L = cost.shape[1]
    choice = solver.solve([cost[:, l] for l in range(L)], [weight[:, l] for l in range(L)],
                          density * L, method, steps)
    rows = np.arange(L)
    layer_error = curves.error[:, choice, rows]     # (R, L)
    layer_density = curves.density[:, choice, rows]
    return Allocation(per_head=False, density_target=density, method=method, size_index=choice,
                      sizes=[_plain(curves.sizes[i]) for i in choice], layers=list(curves.layers),
                      error=float(layer_error.mean()), density=float(layer_density.mean()),
                      layer_error=layer_error, layer_density=layer_density,
                      seconds=time.perf_counter() - start)


def layer_staircase(sq: np.ndarray, share: np.ndarray, cap: float,
                    steps_per_density: int = HEAD_STEPS_PER_LAYER_DENSITY) -> Dict[str, np.ndarray]:
    """Every Pareto-best head assignment of one layer.

    ``sq`` ``(R, S, H)``: squared error contributions ``w_h e_h**2``; ``share`` ``(R, S, H)``:
    density contributions ``a_h d_h``. Returns ``assign`` ``(P, H)`` size indices,
    ``error`` ``(P,)`` (mean over recordings of ``sqrt(sum_h sq)``), ``density`` ``(P,)``,
    ``rec_error``/``rec_density`` ``(R, P)``, ascending in density, error strictly falling.
    """
    cost = sq.mean(0).T          # (H, S)
    weight = share.mean(0).T     # (H, S)
    top = float(weight.max(1).sum())
    steps = max(1, int(np.ceil(min(cap, top) * steps_per_density)))
    q = solver.quantize(weight, 1.0 / steps_per_density)
    best, choice = solver.dp_tables(cost, q, steps)
    budgets = np.nonzero(np.isfinite(best))[0]
    budgets = budgets[np.r_[True, best[budgets][1:] < best[budgets][:-1]]]  # staircase steps
    assign = np.unique(solver.backtrack(choice, q, budgets).T, axis=0)      # (P, H)
    heads = np.arange(assign.shape[1])
    rec_sq = sq[:, assign, heads].sum(-1)                                    # (R, P)
    rec_density = share[:, assign, heads].sum(-1)
    rec_error = np.sqrt(np.maximum(rec_sq, 0.0))
    err, dens = rec_error.mean(0), rec_density.mean(0)
    keep = solver.pareto_options(dens, err)
    return {"assign": assign[keep], "error": err[keep], "density": dens[keep],
            "rec_error": rec_error[:, keep], "rec_density": rec_density[:, keep]}


def allocate_heads(curves: Curves, density: float, method: str = "dp",
                   steps: Optional[int] = None) -> Allocation:
    """One size per head: least mean layer error with mean layer density <= ``density``
    (two-level DP, see the module docstring)."""
    start = time.perf_counter()
    L = len(curves.layers)
    sq = curves.head_weight[:, None] * curves.head_error ** 2        # (R, S, L, H)
    share = curves.head_share[:, None] * curves.head_density         # (R, S, L, H)
    stairs = [layer_staircase(sq[:, :, l], share[:, :, l], min(1.0, density * L)) for l in range(L)]
    choice = solver.solve([s["error"] for s in stairs], [s["density"] for s in stairs],
                          density * L, method, steps)
    size_index = np.stack([s["assign"][c] for s, c in zip(stairs, choice)])   # (L, H)
    layer_error = np.stack([s["rec_error"][:, c] for s, c in zip(stairs, choice)], 1)
    layer_density = np.stack([s["rec_density"][:, c] for s, c in zip(stairs, choice)], 1)
    sizes = [[_plain(curves.sizes[i]) for i in row] for row in size_index]
    return Allocation(per_head=True, density_target=density, method=method, size_index=size_index,
                      sizes=sizes, layers=list(curves.layers), error=float(layer_error.mean()),
                      density=float(layer_density.mean()), layer_error=layer_error,
                      layer_density=layer_density, seconds=time.perf_counter() - start)


def allocated_config(curves: Curves, allocation: Allocation,
                     base_size: Any = None) -> ResearchAttentionConfig:
    """The chain with each layer's (or head's) size in ``layer_overrides``.

    Layers outside the allocation run ``base_size`` (default: the chain's best uniform size
    among the measured ones at the density target, else the chain's own value)."""
    if base_size is None:
        best = curves.best_uniform(allocation.density_target)
        base_size = curves.sizes[best] if best is not None else getattr(
            curves.config.masker_configs[curves.masker_index], curves.field)
    configs = list(curves.config.masker_configs)
    configs[curves.masker_index] = dataclasses.replace(configs[curves.masker_index],
                                                       **{curves.field: _plain(base_size)})
    overrides: Dict[int, Dict[int, Dict[str, Any]]] = {}
    for layer, size in zip(allocation.layers, allocation.sizes):
        if isinstance(size, list) and len(set((type(v), v) for v in size)) == 1:
            size = size[0]  # every head the same: one value
        overrides[int(layer)] = {curves.masker_index: {curves.field: size}}
    return ResearchAttentionConfig(masker_configs=configs, layer_overrides=overrides)

