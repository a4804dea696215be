"""Compare the best configs of several runs: chains as rows, runs as columns.

Markdown: one table per quantity of each chain's best config (score, with ``*`` on the
lowest of the row; output error with its density; trials ok/total and aux bits; the best
parameters). CSV: one row per chain, a column per (run, quantity). :func:`plot_fronts`
draws every run's Pareto fronts on one figure (colour = chain, line style = run).
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from sah.runs.outputs.picks import best_row, completed, front_rows
from sah.runs.outputs.trials import COMPLETED, load_run
from sah.study.spec import Study

QUANTITIES = ("score", "output_error", "density", "aux_bits_per_token", "trials", "parameters")
LINE_STYLES = ("-", "--", ":", "-.", (0, (5, 1, 1, 1, 1, 1)), (0, (1, 3)))
MARKERS = ("o", "s", "^", "D", "v", "P")


def _num(value: Optional[float]) -> str:
    return "" if value is None else f"{value:.4g}"


@dataclass
class RunData:
    label: str
    study: Study
    rows: List[Dict[str, Any]]


def load_runs(run_dirs: Sequence[Path]) -> List[RunData]:
    runs = []
    for run_dir in run_dirs:
        study, rows, _ = load_run(Path(run_dir))
        runs.append(RunData(Path(run_dir).name, study, rows))
    if len({r.label for r in runs}) < len(runs):  # same folder name under different parents
        for r, d in zip(runs, run_dirs):
            r.label = str(Path(d))
    return runs


def chain_names(runs: Sequence[RunData]) -> List[str]:
    names: List[str] = []
    for run in runs:
        names += [c.name for c in run.study.chains if c.name not in names]
    return names


def best_entry(run: RunData, chain: str) -> Optional[Dict[str, Any]]:
    """The chain's best config in the run (its figures and parameters), or None."""
    if not any(c.name == chain for c in run.study.chains):
        return None
    mine = [r for r in run.rows if r["chain"] == chain]
    best = best_row(run.rows, chain)
    entry: Dict[str, Any] = {"trials": f"{sum(r['status'] == COMPLETED for r in mine)}/{len(mine)}"}
    if best is None:
        return {**entry, "score": None, "output_error": None, "density": None,
                "aux_bits_per_token": None, "parameters": "-"}
    spec = run.study.chain(chain)
    params = ", ".join(f"{p.split('Config_', 1)[-1]}={_num(best[p]) if isinstance(best[p], float) else best[p]}"
                       for p in spec.param_names) or "(fixed)"
    return {**entry, **{q: best[q] for q in ("score", "output_error", "density",
                                              "aux_bits_per_token")}, "parameters": params}


def compare_table(runs: Sequence[RunData]) -> Dict[str, Dict[str, Optional[Dict[str, Any]]]]:
    """``{chain: {run label: best entry or None}}`` in chain order."""
    return {chain: {run.label: best_entry(run, chain) for run in runs} for chain in chain_names(runs)}


def _markdown(runs: Sequence[RunData]) -> str:
    table = compare_table(runs)
    labels = [r.label for r in runs]
    head = ["| chain | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]

    def section(title: str, cell) -> List[str]:
        lines = ["", title, "", *head]
        for chain, entries in table.items():
            lines.append(f"| {chain} | " + " | ".join(
                "-" if e is None else cell(e, entries) for e in entries.values()) + " |")
        return lines

    def score(e: Dict[str, Any], entries: Dict[str, Any]) -> str:
        scores = [x["score"] for x in entries.values() if x and x["score"] is not None]
        if e["score"] is None:
            return "no completed trial"
        best = len(scores) > 1 and e["score"] == min(scores)
        return _num(e["score"]) + ("*" if best else "")

    out = [f"# Compare {len(runs)} runs: " + ", ".join(f"`{r.label}`" for r in runs)]
    out += section("Best score of each chain (lower is better; * the lowest of the row):", score)
    out += section("Output error (density) of that config:", lambda e, _: "-" if e["output_error"]
                   is None else f"{_num(e['output_error'])} (d={_num(e['density'])})")
    out += section("Trials (completed/all) and aux bits per token:",
                   lambda e, _: f"{e['trials']}, {_num(e['aux_bits_per_token']) or '-'} bits")
    out += section("Best parameters:", lambda e, _: e["parameters"])
    out.append("")
    out.append("`-`: the run has no such chain.")
    return "\n".join(out) + "\n"


def _csv(runs: Sequence[RunData]) -> str:
    table = compare_table(runs)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["chain", *(f"{r.label}.{q}" for r in runs for q in QUANTITIES)])
    for chain, entries in table.items():
        row = [chain]
        for e in entries.values():
            row += ["" if e is None or e[q] is None else
                    (_num(e[q]) if isinstance(e[q], float) else str(e[q])) for q in QUANTITIES]
        writer.writerow(row)
    return out.getvalue()


def compare_text(run_dirs: Sequence[Path], fmt: str = "markdown") -> str:
    runs = load_runs(run_dirs)
    return _csv(runs) if fmt == "csv" else _markdown(runs)


def plot_fronts(run_dirs: Sequence[Path]) -> bytes:
    """PNG: the Pareto front (output error vs density) of every chain of every run; colour
    = chain, line style and marker = run."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    runs = load_runs(run_dirs)
    chains = chain_names(runs)
    colours = plt.get_cmap("tab10")
    fig, ax = plt.subplots(figsize=(11, 5.5), dpi=90)
    shown: List[float] = []
    targets = [t for r in runs for t in r.study.density_targets]
    right = min(1.0, 2.5 * max(targets)) if targets else 1.0
    for k, run in enumerate(runs):
        for chain in (c.name for c in run.study.chains):
            front = front_rows(run.rows, chain)
            if not front:
                continue
            colour = colours(chains.index(chain) % 10)
            ax.step([r["density"] for r in front], [r["output_error"] for r in front],
                    where="post", color=colour, linestyle=LINE_STYLES[k % len(LINE_STYLES)],
                    marker=MARKERS[k % len(MARKERS)], markersize=4, linewidth=1.3)
            shown += [r["output_error"] for r in completed(run.rows, chain)
                      if r["density"] <= right and r["output_error"] > 0]
    for t in sorted(set(targets)):
        ax.axvline(t, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("density (share of causal positions attended)")
    ax.set_ylabel("output error (relative, mean over layers)")
    ax.set_yscale("log")
    ax.set_xlim(left=0, right=right)
    if shown and all(math.isfinite(x) for x in shown):
        ax.set_ylim(bottom=0.7 * min(shown), top=1.4 * max(shown))
    ax.grid(alpha=0.3)
    chain_handles = [Line2D([], [], color=colours(i % 10), linewidth=2, label=c)
                     for i, c in enumerate(chains)]
    run_handles = [Line2D([], [], color="black", linestyle=LINE_STYLES[k % len(LINE_STYLES)],
                          marker=MARKERS[k % len(MARKERS)], markersize=4, label=r.label)
                   for k, r in enumerate(runs)]
    first = ax.legend(handles=chain_handles, title="chain", fontsize=7, title_fontsize=8,
                      loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.add_artist(first)
    second = ax.legend(handles=run_handles, title="run", fontsize=7, title_fontsize=8,
              loc="lower left", bbox_to_anchor=(1.01, 0.0))
    ax.set_title(f"Pareto fronts of {len(runs)} runs (colour: chain, line: run)"
                 + (f", density <= {right:g} shown" if right < 1 else ""))
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight",  # the legends sit outside the axes
                bbox_extra_artists=[first, second])
    plt.close(fig)
    return buf.getvalue()
