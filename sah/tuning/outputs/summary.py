"""``summary.md``: per chain the best config and its figures, and the lowest error at each
density target."""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from sah.tuning.outputs.picks import best_row, front_rows, target_row
from sah.tuning.outputs.trials import COMPLETED, FAILED, STOPPED
from sah.tuning.study import Study


def _fmt(x: Optional[float], digits: int = 4) -> str:
    return "-" if x is None else f"{x:.{digits}g}"


def summary_markdown(study: Study, rows: List[Dict[str, Any]], meta: Dict[str, Any]) -> str:
    lines = [f"# Run `{study.name}`", "",
             f"Objective `{study.objective}`; recording `{meta.get('recording_hash', '?')}`; "
             f"searcher `{study.searcher}`; {len(rows)} trials; wall time "
             f"{meta.get('wall_seconds', 0):.0f} s.", "",
             "| chain | trials (ok/failed/stopped) | best score | density | output_error | "
             "aux bits/token | Pareto size | best parameters |",
             "|---|---|---|---|---|---|---|---|"]
    for chain in study.chains:
        mine = [r for r in rows if r["chain"] == chain.name]
        counts = "/".join(str(sum(r["status"] == s for r in mine)) for s in (COMPLETED, FAILED, STOPPED))
        best = best_row(rows, chain.name)
        params = "-" if best is None else ", ".join(
            f"{p.split('Config_', 1)[-1]}={_fmt(best[p])}"
            for p in chain.param_names) or "(fixed)"
        lines.append(
            f"| {chain.name} | {len(mine)} ({counts}) | {_fmt(best and best['score'])} | "
            f"{_fmt(best and best['density'])} | {_fmt(best and best['output_error'])} | "
            f"{_fmt(best and best['aux_bits_per_token'])} | {len(front_rows(rows, chain.name))} | "
            f"{params} |")
    if study.density_targets:
        lines += ["", "Lowest output error at each density target:", "",
                  "| chain | " + " | ".join(f"density <= {t:g}" for t in study.density_targets) + " |",
                  "|---|" + "---|" * len(study.density_targets)]
        for chain in study.chains:
            cells = []
            for t in study.density_targets:
                r = target_row(rows, chain.name, t)
                cells.append("-" if r is None else f"{_fmt(r['output_error'])} (d={_fmt(r['density'], 3)})")
            lines.append(f"| {chain.name} | " + " | ".join(cells) + " |")
    failed = [r for r in rows if r["status"] == FAILED]
    if failed:
        lines += ["", "Failed trials:", ""]
        lines += [f"- {r['chain']} trial {r['trial']}: {r['error_message']}" for r in failed]
    return "\n".join(lines) + "\n"
