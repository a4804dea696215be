"""Allocate a finished run's chain across layers or heads (``sah allocate``, a study's
``allocate:`` section).

For a chain of the run and a mean density target ``T``:

1. **Baseline**: the run's best uniform config of the chain at density <= ``T`` (what
   ``tuned/<chain>.density_<T>.yaml`` holds; :func:`~sah.runs.outputs.picks.target_row`).
   Its other fields (sink, window, page size...) are kept; only the chain's budget field
   (:func:`sah.allocation.budget_field`: ``heavy_size``, ``top_p``, ``sampling_rate``,
   ``base_rate_sampling``, else the local ``window_size``) is allocated, and only when the
   run searched it (a chain whose size the run did not vary has no curve to start from).
2. **Curves** on the run's scored recordings (checked against the content hashes of
   ``run.yaml``). Per layer: every trial of the chain in ``per_layer.csv`` whose other
   fields equal the baseline's is a point (its per-layer error and density, as scored);
   the curve is too coarse where a default size
   (:func:`sah.allocation.default_sizes`, 16 sizes from 0 to all keys) has no run point
   within :data:`NEAR` of it (relative; absolute for shares such as ``top_p``), and each
   such size is evaluated (default sizes the masker refuses, such as a strided window of
   0, are left out). Per head: ``per_layer.csv`` has no heads, so every default size
   and every run size is evaluated with its per-head figures.
3. **Allocation**: the exact DP of :mod:`sah.allocation` (per layer, or two levels per
   head), at mean density <= ``T``; the allocated config is evaluated on the scored
   recordings (its figures), and both configs on a held-out recording.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from sah.allocation import (AllocationResult, Curves, ChainFigures, allocate_chain, budget_field,
                            default_sizes, measure_curves)
from sah.attention import ResearchAttentionConfig
from sah.runs.artefacts import RunArtefacts
from sah.runs.outputs.picks import best_row, completed, target_row
from sah.runs.outputs.trials import load_run, row_config
from sah.study.allocate import example_config, no_size_field
from sah.infra.checks import ConfigError
from sah.infra.csv_table import cell, read_table
from sah.runs.outputs.per_layer import COLUMNS as PER_LAYER_COLUMNS

#: A default size is covered by a run point within 10% of it (0.01 for shares).
NEAR = 0.10
NEAR_SHARE = 0.01
SHARE_FIELDS = ("top_p", "sampling_rate", "base_rate_sampling")
#: Text names tried, in order, for the default held-out recording: the first whose text the
#: run neither scored nor fitted on.
HELDOUT_TEXTS = ("manual", "prose", "code", "docs")


@dataclass
class RunContext:
    """What a run gives the allocation: its study, trials, recordings, per-layer table."""

    run_dir: Path
    study: Any
    rows: List[Dict[str, Any]]
    meta: Dict[str, Any]
    per_layer: Dict[Tuple[str, int], List[Tuple[str, int, float, float]]]
    labels: List[str] = field(default_factory=list)
    recordings: List[Any] = field(default_factory=list)
    layers: List[int] = field(default_factory=list)
    artefacts: Optional[RunArtefacts] = None
    cache: Any = None

    def use_recordings(self, scored: Sequence[Tuple[str, Any]]) -> None:
        """Score on these ``[(label, Recording)]`` (a run in progress already holds them)."""
        from sah.evaluate import ContextCache
        self.labels = [label for label, _ in scored]
        self.recordings = [rec for _, rec in scored]
        self.layers = list(self.study.layers or self.recordings[0].layer_ids)
        self.cache = ContextCache(max_recordings=len(self.recordings) + 1)

    def load_recordings(self) -> None:
        """The run's scored recordings, refused when their content changed since the run."""
        if self.recordings:
            return
        from sah.evaluate import ContextCache, recording_key
        from sah.recording.embedded import parse_embedded, resolve_recording
        from sah.recording.format import load_recording
        for i, item in enumerate(self.meta.get("recordings") or []):
            source = str(item.get("source") or item.get("path"))
            where = f"{self.run_dir}/run.yaml: recordings[{i}]"
            path = (resolve_recording(source, where) if parse_embedded(source) is not None
                    else Path(item.get("path") or source))
            if not path.is_file():
                raise FileNotFoundError(f"{where}: {path} does not exist; put the run's recording "
                                        f"back to allocate on it")
            rec = load_recording(path)
            if item.get("hash") and recording_key(rec) != item["hash"]:
                raise ConfigError(f"{where}: {item.get('name')} ({path}) has content hash "
                                  f"{recording_key(rec)} but the run scored {item['hash']}; put "
                                  f"the original recording back")
            self.labels.append(str(item.get("name")))
            self.recordings.append(rec)
        if not self.recordings:
            raise ConfigError(f"{self.run_dir}/run.yaml lists no scored recordings")
        self.layers = list(self.study.layers or self.recordings[0].layer_ids)
        self.cache = ContextCache(max_recordings=len(self.recordings) + 1)


def _per_layer_table(run_dir: Path) -> Dict[Tuple[str, int], List[Tuple[str, int, float, float]]]:
    path = run_dir / "per_layer.csv"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no per-layer table; the run was made before sah tune wrote per_layer.csv "
            f"(or did not finish): run the study again with sah tune (or --resume it) to "
            f"produce it")
    table: Dict[Tuple[str, int], List[Tuple[str, int, float, float]]] = {}
    for line, raw in read_table(path, PER_LAYER_COLUMNS):
        table.setdefault((raw["chain"], cell(path, line, "trial", raw["trial"], int)), []).append(
            (raw["recording"], cell(path, line, "layer", raw["layer"], int),
             cell(path, line, "output_error", raw["output_error"], float),
             cell(path, line, "density", raw["density"], float)))
    return table


def open_run(run_dir: Path) -> RunContext:
    """A finished run folder read back for ``sah allocate`` (refused without
    ``per_layer.csv``): its study from ``run.yaml``, its trials, its recordings on demand."""
    run_dir = Path(run_dir)
    study, rows, meta = load_run(run_dir)
    table = _per_layer_table(run_dir)
    return RunContext(run_dir, study, rows, meta, table,
                      artefacts=RunArtefacts.of_run(study, run_dir))


def run_in_progress(run_dir: Path, study: Any, rows: List[Dict[str, Any]],
                    scored: Sequence[Tuple[str, Any]]) -> RunContext:
    """The run a study step is finishing, from what the step already holds: the study,
    its trial rows and its scored recordings ``[(label, Recording)]`` (nothing re-read or
    re-parsed but the per-layer table the run just wrote)."""
    run_dir = Path(run_dir)
    ctx = RunContext(run_dir, study, rows, {}, _per_layer_table(run_dir),
                     artefacts=RunArtefacts.of_run(study, run_dir))
    ctx.use_recordings(scored)
    return ctx


def allocatable(study: Any, chain_name: str) -> Tuple[Any, int, str]:
    """``(chain spec, masker index, field)`` of a chain whose size the study searches;
    refused (one line, the chains that can be allocated) otherwise."""
    spec = study.chain(chain_name)  # unknown: lists the chains
    why = no_size_field(spec)
    if why:
        ok = [c.name for c in study.chains if not no_size_field(c)]
        raise ConfigError(f"chain {chain_name!r}: {why}; chains that can be allocated: "
                          f"{', '.join(ok) or 'none'}")
    index, name = budget_field(example_config(spec))
    return spec, index, name


def _near(a: Any, b: Any, share: bool) -> bool:
    if share:
        return abs(float(a) - float(b)) <= NEAR_SHARE
    if float(b) == 0:
        return float(a) == 0
    return abs(float(a) - float(b)) <= NEAR * abs(float(b))


def run_points(ctx: RunContext, spec: Any, base: Dict[str, Any], index: int,
               name: str) -> Dict[Any, Tuple[np.ndarray, np.ndarray]]:
    """``{size: (error (R, L), density (R, L))}`` of the chain's trials that differ from
    ``base`` only in the budget field, from ``per_layer.csv``."""
    key = spec.maskers[index].keys[name]
    others = [p for p in spec.param_names if p != key]
    where = {lab: r for r, lab in enumerate(ctx.labels)}
    col = {layer: i for i, layer in enumerate(ctx.layers)}
    points: Dict[Any, Tuple[np.ndarray, np.ndarray]] = {}
    for row in completed(ctx.rows, spec.name):
        if any(row[p] != base[p] for p in others) or row[key] in points:
            continue
        items = ctx.per_layer.get((spec.name, row["trial"])) or []
        err = np.full((len(ctx.labels), len(ctx.layers)), np.nan)
        dens = err.copy()
        for label, layer, e, d in items:
            if label in where and layer in col:
                err[where[label], col[layer]], dens[where[label], col[layer]] = e, d
        if np.isfinite(err).all() and np.isfinite(dens).all():
            points[row[key]] = (err, dens)
    return points


def sizes_to_measure(defaults: Sequence[Any], run_sizes: Sequence[Any], name: str) -> List[Any]:
    """Default sizes with no run point near them (the curve is too coarse there)."""
    share = name in SHARE_FIELDS
    return [s for s in defaults if not any(_near(r, s, share) for r in run_sizes)]


def curves_for(ctx: RunContext, config: ResearchAttentionConfig, spec: Any, base: Dict[str, Any],
               index: int, name: str, per_head: bool) -> Tuple[Curves, Dict[str, int]]:
    """The chain's curves (see the module docstring) and how many points came from where."""
    ctx.load_recordings()
    points = run_points(ctx, spec, base, index, name)
    defaults = default_sizes(config, index, name)
    if isinstance(getattr(config.masker_configs[index], name), float):
        defaults = [float(s) for s in defaults]
    defaults = [s for s in defaults if _accepts(config, index, name, s)]  # e.g. no 0 for strided
    if per_head:
        sizes = sorted(set(defaults) | set(points), key=float)
        curves = measure_curves(config, ctx.recordings, index, name, sizes, ctx.layers,
                                ctx.labels, ctx.cache)
        return curves, {"run": 0, "measured": len(sizes)}
    extra = sizes_to_measure(defaults, list(points), name)
    measured = measure_curves(config, ctx.recordings, index, name, extra, ctx.layers,
                              ctx.labels, ctx.cache) if extra else None
    sizes = sorted(set(points) | set(extra), key=float)
    R, L = len(ctx.labels), len(ctx.layers)
    H = ctx.recordings[0].num_heads
    error, density = np.zeros((R, len(sizes), L)), np.zeros((R, len(sizes), L))
    for s, size in enumerate(sizes):
        if size in points:
            error[:, s], density[:, s] = points[size]
        else:
            m = extra.index(size)
            error[:, s], density[:, s] = measured.error[:, m], measured.density[:, m]
    nan = np.full((R, len(sizes), L, H), np.nan)
    curves = Curves(config=config, masker_index=index, field=name, sizes=sizes,
                    layers=list(ctx.layers), recordings=list(ctx.labels), error=error,
                    density=density, head_error=nan, head_density=nan.copy(),
                    head_weight=np.full((R, L, H), np.nan), head_share=np.full((R, L, H), np.nan),
                    seconds=measured.seconds if measured else 0.0)
    return curves, {"run": len(points), "measured": len(extra)}


def _accepts(config: ResearchAttentionConfig, index: int, name: str, size: Any) -> bool:
    from sah.allocation import with_size
    try:
        with_size(config, index, name, size)
    except (ConfigError, ValueError, TypeError):
        return False
    return True


def least_density(curves: Curves) -> Tuple[float, Any]:
    """The least mean density any allocation reaches (every layer at its lightest size)."""
    dens = curves.density.mean(0)              # (S, L)
    return float(dens.min(0).mean()), curves.sizes[int(np.argmin(dens.mean(1)))]


@dataclass
class RunAllocation:
    """One chain of a run allocated at one density target."""

    run: str
    chain: str
    density_target: float
    per_head: bool
    field: str
    masker_index: int
    points: Dict[str, int]
    uniform_row: Optional[Dict[str, Any]]
    uniform_config: ResearchAttentionConfig      # resolved (weights in memory)
    uniform: ChainFigures                             # on the scored recordings
    uniform_layers: np.ndarray                   # (R, L) error, (from per_layer.csv)
    result: AllocationResult
    config: ResearchAttentionConfig              # allocated, as written (names weight files)
    curve_seconds: float
    seconds: float
    heldout: Optional[str] = None
    heldout_figures: Dict[str, ChainFigures] = field(default_factory=dict)   # uniform, allocated
    kl: Dict[str, float] = field(default_factory=dict)                  # uniform, allocated
    validation: Dict[str, Any] = field(default_factory=dict)

    @property
    def allocated(self) -> ChainFigures:
        return self.result.allocated

    def reduction(self, uniform: ChainFigures, allocated: ChainFigures) -> Optional[float]:
        return None if uniform.output_error <= 0 else 1 - allocated.output_error / uniform.output_error


def _uniform_figures(ctx: RunContext, spec: Any, row: Dict[str, Any]) -> Tuple[ChainFigures, np.ndarray]:
    per = {lab: (row[f"output_error[{lab}]"], row[f"density[{lab}]"]) for lab in ctx.labels
           if row.get(f"output_error[{lab}]") is not None}
    if len(per) != len(ctx.labels):  # a run of one recording keeps only the means
        per = {ctx.labels[0]: (row["output_error"], row["density"])}
    layers = np.full((len(ctx.labels), len(ctx.layers)), np.nan)
    where = {lab: r for r, lab in enumerate(ctx.labels)}
    col = {layer: i for i, layer in enumerate(ctx.layers)}
    for label, layer, e, _ in ctx.per_layer.get((spec.name, row["trial"])) or []:
        if label in where and layer in col:
            layers[where[label], col[layer]] = e
    return ChainFigures(row["output_error"], row["density"], per), layers


def allocate_run_chain(ctx: RunContext, chain: str, density: float, per_head: bool,
                       curves_cache: Optional[Dict[str, Any]] = None) -> RunAllocation:
    """Allocate ``chain`` of the run at mean density <= ``density`` on its scored recordings."""
    started = time.perf_counter()
    if not (isinstance(density, (int, float)) and 0 < density <= 1):
        raise ConfigError(f"--density: got {density}; expected a mean density in (0, 1]")
    spec, index, name = allocatable(ctx.study, chain)
    row = target_row(ctx.rows, chain, density)
    base = row or best_row(ctx.rows, chain)
    if base is None:
        raise ConfigError(f"{ctx.run_dir}: chain {chain!r} has no completed trial")
    written = row_config(spec, base)
    config = ctx.artefacts.resolved(written)
    key = f"{per_head}:{written.to_json()}"
    if curves_cache is not None and key in curves_cache:
        curves, points = curves_cache[key]
    else:
        curves, points = curves_for(ctx, config, spec, base, index, name, per_head)
        if curves_cache is not None:
            curves_cache[key] = (curves, points)
    least, smallest = least_density(curves)
    if density < least - 1e-12:
        raise ConfigError(f"--density: {density:g} is below the least mean density chain "
                          f"{chain!r} reaches ({least:.4g}: every layer at {name} = "
                          f"{smallest!r}, with its other fields as in trial {base['trial']}); "
                          f"use --density {math.ceil(least * 1e4) / 1e4:g} or more")
    result = allocate_chain(config, ctx.recordings, density, per_head, curves=curves,
                            names=ctx.labels, layers=ctx.layers, cache=ctx.cache, verify=True)
    if row is not None:
        uniform, uniform_layers = _uniform_figures(ctx, spec, row)
    else:  # the run has no config at density <= T: the best measured uniform size
        best = curves.best_uniform(density)
        uniform = result.uniform if result.uniform is not None else ChainFigures(math.nan, math.nan)
        uniform_layers = (curves.error[:, best] if best is not None
                          else np.full((len(ctx.labels), len(ctx.layers)), np.nan))
    masker = dataclasses.replace(written.masker_configs[index],
                                 **{name: getattr(result.config.masker_configs[index], name)})
    out = ResearchAttentionConfig([masker if i == index else m for i, m in
                                   enumerate(written.masker_configs)],
                                  layer_overrides=result.config.layer_overrides)
    return RunAllocation(run=ctx.study.name, chain=chain, density_target=float(density),
                         per_head=per_head, field=name, masker_index=index, points=points,
                         uniform_row=row, uniform_config=ctx.artefacts.resolved(row_config(spec, row))
                         if row is not None else config, uniform=uniform,
                         uniform_layers=uniform_layers, result=result, config=out,
                         curve_seconds=curves.seconds, seconds=time.perf_counter() - started)


# ---------------------------------------------------------------------- held out
def default_heldout(meta: Dict[str, Any]) -> str:
    """The first named text (:data:`HELDOUT_TEXTS`) the run neither scored nor fitted on."""
    from sah.recording.texts import load_text
    seen = {item.get("text_sha256") for key in ("recordings", "fit_recordings")
            for item in meta.get(key) or []}
    for name in HELDOUT_TEXTS:
        if load_text(name).sha256 not in seen:
            return name
    raise ConfigError("the run saw every named text; give --heldout (a recording of another "
                      "text, e.g. a file made with sah record)")


def load_heldout(ctx: RunContext, name: str, where: str = "--heldout") -> Any:
    """The held-out recording: an embedded name or a file; refused when it overlaps a
    recording the allocation used, or lacks the run's layers or shape."""
    from sah.evaluate import recording_key
    from sah.recording.embedded import resolve_recording
    from sah.recording.format import load_recording
    from sah.recording.texts import spans_overlap, text_of
    ctx.load_recordings()
    rec = load_recording(resolve_recording(name, where))
    mine = text_of(rec.metadata or {})
    for label, scored in zip(ctx.labels, ctx.recordings):
        theirs = text_of(scored.metadata or {})
        if recording_key(rec) == recording_key(scored) or (
                mine and theirs and spans_overlap(mine, theirs)):
            raise ConfigError(f"{where} {name}: overlaps the run's scored recording {label}, "
                              f"which the allocation used; name a recording of another text "
                              f"or span (default: {default_heldout(ctx.meta)})")
    first = ctx.recordings[0]
    if (rec.num_heads, rec.num_kv_heads, rec.head_dim) != (first.num_heads, first.num_kv_heads,
                                                            first.head_dim):
        raise ConfigError(f"{where} {name}: another model shape than the run's recordings")
    missing = [x for x in ctx.layers if x not in rec.layer_ids]
    if missing:
        raise ConfigError(f"{where} {name}: lacks layer {missing[0]} of the run's layers")
    return rec


def score_heldout(ctx: RunContext, result: RunAllocation, name: str, rec: Any) -> None:
    from sah.allocation import evaluate_figures
    for which, cfg in (("uniform", result.uniform_config),
                       ("allocated", ctx.artefacts.resolved(result.config))):
        result.heldout_figures[which] = evaluate_figures(cfg, [rec], [name], ctx.layers, ctx.cache)
    result.heldout = name
