"""``pareto.png`` (error vs density, all trials and each chain's front) and
``pareto.json`` (the fronts)."""

from __future__ import annotations

import io
import json
from typing import Any, Dict, List

from sah.runs.outputs.picks import completed, front_rows
from sah.study.spec import Study


def plot_pareto(study: Study, rows: List[Dict[str, Any]]) -> bytes:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 5), dpi=80)
    colours = plt.get_cmap("tab10")
    for i, chain in enumerate(study.chains):
        done = completed(rows, chain.name)
        if not done:
            continue
        c = colours(i % 10)
        ax.scatter([r["density"] for r in done], [r["output_error"] for r in done], s=10,
                   alpha=0.35, color=c)
        front = front_rows(rows, chain.name)
        ax.step([r["density"] for r in front], [r["output_error"] for r in front], where="post",
                color=c, marker="o", markersize=3, label=f"{chain.name} ({len(front)})")
    for t in study.density_targets:
        ax.axvline(t, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("density (share of causal positions attended)")
    ax.set_ylabel("output error (relative, mean over layers)")
    ax.set_yscale("log")
    right = min(1.0, 2.5 * max(study.density_targets)) if study.density_targets else None
    ax.set_xlim(left=0, right=right)  # the fronts near the targets, not the dense tail
    shown = [r["output_error"] for c in study.chains for r in completed(rows, c.name)
             if (right is None or r["density"] <= right) and r["output_error"] > 0]
    if shown:
        ax.set_ylim(bottom=0.7 * min(shown), top=1.4 * max(shown))
    ax.set_title(f"{study.name}: trials and Pareto fronts"
                 + (f" (density <= {right:g} shown)" if right and right < 1 else ""))
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def pareto_json(study: Study, rows: List[Dict[str, Any]]) -> str:
    """Each chain's front: ``{chain: [{trial, density, output_error}, ...]}``."""
    fronts = {c.name: [{"trial": r["trial"], "density": r["density"],
                        "output_error": r["output_error"]} for r in front_rows(rows, c.name)]
              for c in study.chains}
    return json.dumps(fronts, indent=2) + "\n"
