"""Budgets across layers and heads: one mean density, spent where it lowers the error most.

- :mod:`~sah.allocation.curves`: a chain's error and density at each size of its budget
  field, per layer and per head, measured on recordings (:func:`measure_curves`);
- :mod:`~sah.allocation.allocate`: the per-layer and per-head allocations (exact DP on a
  density grid, two levels for heads) and the allocated config (:func:`allocated_config`);
- :mod:`~sah.allocation.chain`: :func:`allocate_chain`, all of it for one chain, with the
  best uniform config beside it; :func:`refine_uniform` bisects the uniform baseline;
- :mod:`~sah.allocation.solver`: the multiple-choice knapsack solvers (numpy only).

No Ray and no CLI code here.
"""

from sah.allocation.allocate import Allocation, allocate_heads, allocate_layers, allocated_config
from sah.allocation.chain import (AllocationResult, ChainFigures, allocate_chain, evaluate_figures,
                                  refine_uniform)
from sah.allocation.curves import Curves, budget_field, default_sizes, measure_curves, with_size

__all__ = ["Allocation", "AllocationResult", "Curves", "ChainFigures", "allocate_chain",
           "allocate_heads", "allocate_layers", "allocated_config", "budget_field",
           "default_sizes", "evaluate_figures", "measure_curves", "refine_uniform", "with_size"]
