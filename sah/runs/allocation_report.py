"""What an allocation of a run's chain reports: the side-by-side table (``sah allocate``),
the ``summary.md`` section of a study's ``allocate:``, the allocated config file, a JSON
dict, the in-model check (``sah validate``'s protocol) and the per-layer plot."""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from sah.allocation import ChainFigures
from sah.runs.allocate import RunAllocation, RunContext
from sah.infra.files import atomic_write_bytes, atomic_write_text


def _num(x: Optional[float], digits: int = 4) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}g}"


def _pct(uniform: Optional[ChainFigures], allocated: Optional[ChainFigures]) -> str:
    if uniform is None or allocated is None or not uniform.output_error:
        return "-"
    return f"{100 * (allocated.output_error / uniform.output_error - 1):+.1f}%"


def uniform_label(result: RunAllocation) -> str:
    row = result.uniform_row
    if row is None:
        return f"uniform (measured; the run has none at density <= {result.density_target:g})"
    return f"run's best uniform (trial {row['trial']})"


def describe(result: RunAllocation) -> str:
    how = "per head" if result.per_head else "per layer"
    cfg = result.uniform_config.masker_configs
    chain = " + ".join(f"{type(c).__name__}({', '.join(f'{k}={v!r}' for k, v in c.params().items() if k in ('sink_size', 'window_size', 'stride', 'heavy_size', 'page_size', 'top_p', 'sampling_rate', 'base_rate_sampling'))})"
                       for c in cfg)
    return (f"run {result.run}, chain {result.chain} ({chain}): {result.field} allocated {how} "
            f"at mean density <= {result.density_target:g}; curve: {result.points['run']} "
            f"size(s) from per_layer.csv, {result.points['measured']} evaluated")


def table(result: RunAllocation) -> str:
    """Markdown table: uniform and allocated side by side."""
    scored = "+".join(result.result.curves.recordings)
    held = result.heldout
    head = ["config", "density", f"output_error ({scored})"]
    if held:
        head += [f"{held}: density", f"{held}: output_error", f"{held}: vs uniform"]
    if result.kl:
        head += [f"in-model KL ({result.validation.get('text')})"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for which, label, fig in (("uniform", uniform_label(result), result.uniform),
                              ("allocated", f"allocated {'per head' if result.per_head else 'per layer'}",
                               result.allocated)):
        cells = [label, _num(fig.density), _num(fig.output_error)
                 + ("" if which == "uniform" else f" ({_pct(result.uniform, fig)})")]
        if held:
            hf = result.heldout_figures.get(which)
            cells += [_num(hf and hf.density), _num(hf and hf.output_error),
                      "" if which == "uniform" else _pct(result.heldout_figures.get("uniform"), hf)]
        if result.kl:
            cells.append(_num(result.kl.get(which)))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def to_dict(result: RunAllocation) -> Dict[str, Any]:
    return {"run": result.run, "chain": result.chain, "density_target": result.density_target,
            "per_head": result.per_head, "field": result.field, "points": result.points,
            "uniform_trial": result.uniform_row["trial"] if result.uniform_row else None,
            "uniform": result.uniform.to_dict(), "allocated": result.allocated.to_dict(),
            "heldout": result.heldout,
            "heldout_figures": {k: v.to_dict() for k, v in result.heldout_figures.items()},
            "kl": dict(result.kl), "validation": dict(result.validation),
            "sizes": [row["size"] for row in result.result.allocation.per_layer_rows()],
            "layers": list(result.result.curves.layers),
            "curve_seconds": result.curve_seconds, "seconds": result.seconds,
            "config": result.config.to_dict()}


def config_text(result: RunAllocation) -> str:
    how = "per head" if result.per_head else "per layer"
    row = result.uniform_row
    base = f"trial {row['trial']}" if row else "the chain's best trial"
    return (f"# sah allocated config: run {result.run}, chain {result.chain}, {result.field} "
            f"{how} at mean density <= {result.density_target:g} (other fields of {base})\n"
            f"# on {', '.join(result.result.curves.recordings)}: output_error "
            f"{result.allocated.output_error!r}, density {result.allocated.density!r}\n"
            + result.config.to_yaml())


def write_config(ctx: RunContext, result: RunAllocation, out: Path) -> List[Path]:
    """The allocated config at ``out`` and its weight files next to it; every path written."""
    out = Path(out)
    prefix = f"{out.stem}."
    weights = ctx.artefacts.write_beside(result.config, out.parent, prefix)
    portable = ctx.artefacts.portable(result.config, prefix)
    result_config, result.config = result.config, portable
    try:
        atomic_write_text(out, config_text(result))
    finally:
        result.config = result_config
    return [out, *weights]


def validate(ctx: RunContext, results: Sequence[RunAllocation], text: str, tokens: int,
             positions: int, model: Any = None, progress: Any = None) -> None:
    """In-model KL of each result's uniform and allocated configs (one model load, one
    dense pass for all), stored in ``result.kl``."""
    from sah.inmodel import validate_configs
    configs, names = {}, []
    for r in results:  # a chain's uniform config is checked once, whatever its allocations
        key = f"{r.chain} uniform (trial {r.uniform_row['trial'] if r.uniform_row else '-'})"
        mine = f"{r.chain} allocated {'per head' if r.per_head else 'per layer'} " \
               f"at {r.density_target:g}"
        configs.setdefault(key, r.uniform_config)
        configs[mine] = ctx.artefacts.resolved(r.config)
        names.append({"uniform": key, "allocated": mine})
    out = validate_configs(configs, [text], tokens, positions, model=model, progress=progress)
    kl = {p.config: float(p.figures.kl) for p in out.pairs}
    for r, name in zip(results, names):
        r.kl.update({which: kl[config] for which, config in name.items()})
        r.validation = {"text": text, "tokens": tokens, "positions": positions,
                        "model": out.model}


def summary_section(results: Sequence[RunAllocation], errors: Sequence[str]) -> str:
    """``summary.md``'s allocation section."""
    lines = ["", "## Allocation across layers and heads", "",
             "Each chain's budget field allocated per layer or per head (exact DP) at the mean "
             "density target, against the run's best uniform config at density <= the target "
             "(figures on the scored recordings; `tuned/<chain>.allocated.density_<t>.yaml`):", "",
             "| chain | target | field | uniform: density | output_error | allocated: density | "
             "output_error | vs uniform |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        how = "per head" if r.per_head else "per layer"
        lines.append(f"| {r.chain} | {r.density_target:g} | {r.field} ({how}) | "
                     f"{_num(r.uniform.density)} | {_num(r.uniform.output_error)} | "
                     f"{_num(r.allocated.density)} | {_num(r.allocated.output_error)} | "
                     f"{_pct(r.uniform, r.allocated)} |")
    if errors:
        lines += ["", "Not allocated:", ""] + [f"- {e}" for e in errors]
    return "\n".join(lines) + "\n"


def plot(result: RunAllocation) -> bytes:
    """PNG: size (mean over heads, with the range) and error per layer, uniform vs allocated."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    curves = result.result.curves
    layers = np.array(curves.layers)
    uniform_size = float(getattr(result.uniform_config.masker_configs[result.masker_index],
                                 result.field))
    rows = result.result.allocation.per_layer_rows()
    sizes = [np.asarray(r["size"], dtype=float).reshape(-1) for r in rows]
    mean = np.array([s.mean() for s in sizes])
    low = np.array([s.min() for s in sizes])
    high = np.array([s.max() for s in sizes])
    fig = Figure(figsize=(9, 6.5))
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, sharex=True)
    how = "per head" if result.per_head else "per layer"
    top.axhline(uniform_size, color="tab:blue", label=f"uniform {result.field} = {uniform_size:.4g}")
    top.errorbar(layers, mean, yerr=[mean - low, high - mean], fmt="o", color="tab:red",
                 capsize=2, label=f"allocated {how}" + (" (mean over heads, range)"
                                                       if result.per_head else ""))
    top.set_yscale("symlog", linthresh=max(1e-3, uniform_size / 10))
    top.set_ylabel(result.field)
    top.legend(fontsize=8)
    top.set_title(f"{result.run}: {result.chain} at mean density <= {result.density_target:g}",
                  fontsize=10)
    bottom.plot(layers, np.nanmean(result.uniform_layers, 0), "o-", color="tab:blue",
                label=f"uniform: mean {result.uniform.output_error:.4g}")
    bottom.plot(layers, result.result.allocation.layer_error.mean(0), "o-", color="tab:red",
                label=f"allocated: mean {result.allocated.output_error:.4g}")
    bottom.set_xlabel("layer")
    bottom.set_ylabel("output error (" + "+".join(curves.recordings) + ")")
    bottom.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def write_plot(result: RunAllocation, path: Path) -> Path:
    atomic_write_bytes(Path(path), plot(result))
    return Path(path)
