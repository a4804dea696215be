"""``summary.md``: the recordings scored and fitted on, per chain the best config and its
figures (means over the scored recordings), each chain's best on each recording, the
lowest error at each density target, HashAttention's fit recall and, when the study
validates its picks, the in-model validation section."""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from sah.runs.outputs.picks import best_row, front_rows, target_row
from sah.runs.outputs.trials import COMPLETED, FAILED, STOPPED
from sah.study.recordings import recording_labels
from sah.study.spec import Study


def _fmt(x: Optional[float], digits: int = 4) -> str:
    return "-" if x is None else f"{x:.{digits}g}"


def _span(item: Dict[str, Any]) -> str:
    start, end = item.get("token_start"), item.get("token_end")
    return "-" if start is None or end is None else f"[{start}, {end})"


def _short_hash(value: Any) -> str:
    text = str(value or "?")
    kind, _, digest = text.rpartition(":")
    return f"{kind + ':' if kind else ''}{digest[:12]}"


def recordings_markdown(described: Dict[str, List[Dict[str, Any]]], fitted_on_scored: bool,
                        report: Optional[Dict[str, Any]]) -> List[str]:
    """The recordings table (role, name, text, token span, keys, queries, hash) and, when
    HashAttention was fitted, its top-k recall on each fit and scored recording."""
    lines = ["Recordings (figures below are means over the scored recordings, each a mean "
             "over its layers):", "",
             "| role | name | text | tokens | keys | queries | content hash |",
             "|---|---|---|---|---|---|---|"]
    for role, key in (("scored", "recordings"), ("fit", "fit_recordings")):
        for item in described.get(key) or []:
            text = item.get("text") or item.get("text_source") or "-"
            lines.append(f"| {role} | {item['name']} | {text} | {_span(item)} | "
                         f"{item['num_keys']} | {item['num_queries']} | "
                         f"`{_short_hash(item['hash'])}` |")
    if fitted_on_scored:
        lines += ["", "**HashAttention was fitted on the scored recordings** (the study names "
                  "no `fit_recordings`): its figures are optimistic."]
    if report:
        lines += ["", "HashAttention top-k recall (share of the true top-k keys the hashes "
                  "pick), mean over layers, after fitting (before):", ""]
        for role, key in (("fit", "fit_recordings"), ("scored", "scored_recordings")):
            for label, fig in (report.get(key) or {}).items():
                lines.append(f"- {role} {label} (k = {fig['k']}): {fig['recall_after']:.3f} "
                             f"({fig['recall_before']:.3f})")
    return lines


def summary_markdown(study: Study, rows: List[Dict[str, Any]], meta: Dict[str, Any]) -> str:
    described = meta.get("recordings") or {}
    lines = [f"# Run `{study.name}`", "",
             f"Objective `{study.objective}`; searcher `{study.searcher}`; {len(rows)} trials; "
             f"wall time {meta.get('wall_seconds', 0):.0f} s.", ""]
    if described:
        lines += recordings_markdown(described, bool(meta.get("fitted_on_scored")),
                                     meta.get("hash_fit_report")) + [""]
    lines += ["| chain | trials (ok/failed/stopped) | best score | density | output_error | "
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
    labels = recording_labels(study.recordings)
    if len(labels) > 1:
        lines += ["", "Best config of each chain on each scored recording "
                  "(output_error, density):", "",
                  "| chain | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
        for chain in study.chains:
            best = best_row(rows, chain.name)
            cells = ["-" if best is None or best.get(f"output_error[{label}]") is None else
                     f"{_fmt(best[f'output_error[{label}]'])} (d={_fmt(best[f'density[{label}]'], 3)})"
                     for label in labels]
            lines.append(f"| {chain.name} | " + " | ".join(cells) + " |")
    failed = [r for r in rows if r["status"] == FAILED]
    if failed:
        lines += ["", "Failed trials:", ""]
        lines += [f"- {r['chain']} trial {r['trial']}: {r['error_message']}" for r in failed]
    lines += meta.get("validation_lines") or []  # :mod:`sah.runs.outputs.validation`
    return "\n".join(lines) + "\n"
