"""One call for one chain: measure its curves, allocate, build and check the config.

:func:`allocate_chain` is what a command or a study section wraps: it returns an
:class:`AllocationResult` with the curves, the chosen sizes, the allocated config and the
figures of the best uniform config beside those of the allocated one. :func:`refine_uniform`
finds the best uniform size between two measured sizes by bisection (a fair baseline: the
largest size whose mean density stays within the target).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from numbers import Integral
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import torch

from sah.allocation.allocate import Allocation, allocate_heads, allocate_layers, allocated_config
from sah.allocation.curves import Curves, measure_curves, with_size
from sah.attention import ResearchAttentionConfig
from sah.evaluate import ContextCache, evaluate_config
from sah.recording.format import Recording


@dataclass
class ChainFigures:
    """Mean output error and density of a config (means over recordings of the means over
    layers), and each recording's pair."""

    output_error: float
    density: float
    per_recording: Dict[str, Tuple[float, float]] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        return {"output_error": self.output_error, "density": self.density,
                "per_recording": {k: {"output_error": e, "density": d}
                                  for k, (e, d) in self.per_recording.items()}}


def evaluate_figures(config: ResearchAttentionConfig, recordings: Sequence[Recording],
                     names: Sequence[str], layers: Optional[Sequence[int]] = None,
                     cache: Optional[ContextCache] = None,
                     device: Union[str, torch.device, None] = None) -> ChainFigures:
    """Score ``config`` on every recording (``evaluate_config``) and average."""
    per: Dict[str, Tuple[float, float]] = {}
    for name, rec in zip(names, recordings):
        ev = evaluate_config(config, rec, layers=layers, cache=cache, device=device)
        per[name] = (ev.output_error, ev.density)
    return ChainFigures(output_error=sum(e for e, _ in per.values()) / len(per),
                   density=sum(d for _, d in per.values()) / len(per), per_recording=per)


@dataclass
class AllocationResult:
    """A chain's allocation at one density target and the uniform baseline beside it."""

    curves: Curves
    allocation: Allocation
    config: ResearchAttentionConfig            # the allocated config (layer_overrides)
    allocated: ChainFigures                         # evaluated on the allocation's recordings
    uniform_size: Any                          # best measured uniform size at the target
    uniform_config: Optional[ResearchAttentionConfig]
    uniform: Optional[ChainFigures]
    seconds: float                             # allocation alone (curves excluded)

    @property
    def error_reduction(self) -> Optional[float]:
        """``1 - allocated error / uniform error`` (None without a uniform baseline)."""
        if self.uniform is None or self.uniform.output_error <= 0:
            return None
        return 1.0 - self.allocated.output_error / self.uniform.output_error

    def to_dict(self) -> Dict[str, Any]:
        return {"per_head": self.allocation.per_head, "density_target": self.allocation.density_target,
                "method": self.allocation.method, "field": self.curves.field,
                "masker_index": self.curves.masker_index, "sizes": list(self.curves.sizes),
                "recordings": list(self.curves.recordings),
                "allocated": self.allocated.to_dict(),
                "uniform_size": self.uniform_size,
                "uniform": self.uniform.to_dict() if self.uniform else None,
                "error_reduction": self.error_reduction,
                "layers": self.allocation.per_layer_rows(),
                "curve_seconds": self.curves.seconds, "allocation_seconds": self.seconds}


def allocate_chain(config: ResearchAttentionConfig, recordings: Sequence[Recording],
                   density: float, per_head: bool = False, *, masker_index: Optional[int] = None,
                   field: Optional[str] = None, sizes: Optional[Sequence[Any]] = None,
                   layers: Optional[Sequence[int]] = None, names: Optional[Sequence[str]] = None,
                   method: str = "dp", curves: Optional[Curves] = None,
                   cache: Optional[ContextCache] = None,
                   device: Union[str, torch.device, None] = None,
                   verify: bool = True) -> AllocationResult:
    """Allocate ``config``'s budget field across layers (``per_head``: heads) at mean
    density ``density`` on ``recordings``.

    ``curves`` reuses a measurement (:func:`~sah.allocation.curves.measure_curves`; then
    ``masker_index``, ``field``, ``sizes`` and ``layers`` come from it). ``verify``
    evaluates the allocated config on the recordings (else its figures are the predicted
    ones, which equal the evaluated ones up to float rounding).
    """
    if not 0.0 < density <= 1.0:
        raise ValueError(f"density: got {density}; expected a mean density in (0, 1]")
    cache = cache if cache is not None else ContextCache(max_recordings=len(recordings))
    if curves is None:
        curves = measure_curves(config, recordings, masker_index, field, sizes, layers, names,
                                cache, device)
    start = time.perf_counter()
    allocation = (allocate_heads if per_head else allocate_layers)(curves, density, method)
    allocated = allocated_config(curves, allocation)
    seconds = time.perf_counter() - start
    rec_names = list(curves.recordings)
    if verify:
        figures = evaluate_figures(allocated, recordings, rec_names, curves.layers, cache, device)
    else:
        figures = ChainFigures(allocation.error, allocation.density, {
            n: (float(allocation.layer_error[r].mean()), float(allocation.layer_density[r].mean()))
            for r, n in enumerate(rec_names)})
    best = curves.best_uniform(density)
    uniform_config = uniform = None
    uniform_size = None
    if best is not None:
        uniform_size = curves.sizes[best]
        uniform_config = with_size(curves.config, curves.masker_index, curves.field, uniform_size)
        uniform = ChainFigures(*curves.uniform(best), {
            n: (float(curves.error[r, best].mean()), float(curves.density[r, best].mean()))
            for r, n in enumerate(rec_names)})
    return AllocationResult(curves=curves, allocation=allocation, config=allocated,
                            allocated=figures, uniform_size=uniform_size,
                            uniform_config=uniform_config, uniform=uniform, seconds=seconds)


def refine_uniform(curves: Curves, recordings: Sequence[Recording], density: float,
                   cache: Optional[ContextCache] = None,
                   device: Union[str, torch.device, None] = None,
                   tolerance: float = 1e-4) -> Tuple[Any, ResearchAttentionConfig, ChainFigures]:
    """The largest uniform size with mean density <= ``density``, by bisection between the
    measured sizes around the target (int sizes to the key, float sizes to ``tolerance``).

    Assumes density grows with the size (true of every budget field). Returns the size,
    its config and its figures on ``recordings``."""
    best = curves.best_uniform(density)
    if best is None:
        raise ValueError(f"no measured size has mean density <= {density}; measure smaller sizes")
    dens = [curves.uniform(s)[1] for s in range(len(curves.sizes))]
    lo = max((s for s in range(len(dens)) if dens[s] <= density + 1e-12),
             key=lambda s: curves.sizes[s])
    above = [s for s in range(len(dens)) if dens[s] > density and curves.sizes[s] > curves.sizes[lo]]
    names = list(curves.recordings)

    def figures(size: Any) -> Tuple[ResearchAttentionConfig, ChainFigures]:
        cfg = with_size(curves.config, curves.masker_index, curves.field, size)
        return cfg, evaluate_figures(cfg, recordings, names, curves.layers, cache, device)

    low = curves.sizes[lo]
    low_cfg, low_fig = figures(low)
    if above:
        high = min((curves.sizes[s] for s in above))
        integral = isinstance(low, Integral) and isinstance(high, Integral)
        while (high - low > 1) if integral else (high - low > tolerance):
            mid = (low + high) // 2 if integral else 0.5 * (low + high)
            cfg, fig = figures(mid)
            if fig.density <= density:
                low, low_cfg, low_fig = mid, cfg, fig
            else:
                high = mid
    return low, low_cfg, low_fig
