"""Compare the best configs of several runs side by side (markdown or CSV).

One row per (chain, quantity): the figures (score, density, output_error, aux bits,
trials) and every parameter of the chain's best config; one column per run; the last
column marks rows whose values differ between the runs that hold the chain.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Dict, List, Sequence

from sah.tuning.outputs.picks import best_row
from sah.tuning.outputs.trials import load_run

QUANTITIES = ("score", "density", "output_error", "aux_bits_per_token")


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def compare_rows(run_dirs: Sequence[Path]) -> List[List[str]]:
    """Header plus one row per (chain, quantity)."""
    runs = []
    for run_dir in run_dirs:
        study, rows, _ = load_run(Path(run_dir))
        runs.append((Path(run_dir).name, study, rows))
    names = [r[0] for r in runs]
    if len(set(names)) < len(names):  # same folder name under different parents
        names = [str(Path(d)) for d in run_dirs]
    chains: List[str] = []
    for _, study, _ in runs:
        chains += [c.name for c in study.chains if c.name not in chains]
    table = [["chain", "quantity", *names, "differs"]]
    for chain in chains:
        entries: List[Dict[str, Any]] = []
        params: List[str] = []
        for _, study, rows in runs:
            have = any(c.name == chain for c in study.chains)
            best = best_row(rows, chain) if have else None
            entry: Dict[str, Any] = {"present": best is not None}
            if best is not None:
                spec = study.chain(chain)
                entry.update({q: best[q] for q in QUANTITIES})
                entry["trials"] = sum(r["chain"] == chain for r in rows)
                entry.update({p: best[p] for p in spec.param_names})
                params += [p for p in spec.param_names if p not in params]
            entries.append(entry)
        for quantity in (*QUANTITIES, "trials", *params):
            cells = [_cell(e.get(quantity)) if e["present"] else "-" for e in entries]
            present = [c for c, e in zip(cells, entries) if e["present"]]
            differs = "*" if len(set(present)) > 1 or len(present) < len(entries) else ""
            table.append([chain, quantity, *cells, differs])
    return table


def compare_text(run_dirs: Sequence[Path], fmt: str = "markdown") -> str:
    table = compare_rows(run_dirs)
    if fmt == "csv":
        out = io.StringIO()
        csv.writer(out, lineterminator="\n").writerows(table)
        return out.getvalue()
    lines = ["| " + " | ".join(table[0]) + " |", "|" + "---|" * len(table[0])]
    lines += ["| " + " | ".join(row) + " |" for row in table[1:]]
    return "\n".join(lines) + "\n"
