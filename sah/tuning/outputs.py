"""The files of a run: trials.csv, summary.md, tuned/, pareto.png, resources/ (all atomic).

``trials.csv`` is the source of truth: one row per scored configuration (chain, trial
index, the Ray trial id and, for batched chains, the configuration's slot in its Ray
trial's batch; status, every parameter, output_error, density, score, aux bits, layers
evaluated, seconds, seconds inside chain evaluation, error message). Best configs, Pareto fronts and the density-target picks are computed from its
rows, and a config is rebuilt from a row with the study's chain spec
(:func:`row_config`), so what is exported is exactly what was scored.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import yaml

from sah.attention import ResearchAttentionConfig
from sah.objectives import best_at_density, pareto_front
from sah.tuning.space import Domain, plain_value
from sah.tuning.study import ChainSpec, Study, parse_study

FIGURES = ("output_error", "density", "score", "aux_bits_per_token", "layers_done", "seconds",
           "eval_seconds")
COMPLETED, FAILED, STOPPED, UNFINISHED = "completed", "failed", "stopped", "unfinished"


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to a temp file next to ``path`` and rename it into place."""
    atomic_write_bytes(path, text.encode())


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give the usual mode
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# ---------------------------------------------------------------------- rows
def _error_message(error: Any) -> str:
    lines = [ln.strip() for ln in str(error).strip().splitlines() if ln.strip()]
    return lines[-1] if lines else type(error).__name__


def _trial_id(result: Any) -> str:
    name = Path(str(result.path)).name  # the runner names trial folders "trial_<id>"
    return name[len("trial_"):] if name.startswith("trial_") else name


_COUNTER_ID = re.compile(r"^[0-9a-f]+_(\d+)$")


def _creation_order(grid: Any) -> List[Any]:
    """The grid's results in trial creation order. A restored experiment lists them in
    another order; grid and random searchers number their trials (``<prefix>_<n>``), the
    Optuna searcher does not, so its trials are ordered by start time."""
    results = [grid[i] for i in range(len(grid))]
    ids = [_trial_id(r) for r in results]
    matches = [_COUNTER_ID.match(i) for i in ids]
    if all(matches):
        return [r for _, r in sorted(zip((int(m.group(1)) for m in matches), results),
                                     key=lambda x: x[0])]

    def start(item: Any) -> float:
        m = item[1].metrics or {}
        if "timestamp" in m and "time_total_s" in m:
            return float(m["timestamp"]) - float(m["time_total_s"])
        return math.inf
    return [r for _, r in sorted(enumerate(results), key=lambda x: (start(x), x[0]))]


def collect_rows(study: Study, grids: Dict[str, Any], interrupted: bool = False
                 ) -> List[Dict[str, Any]]:
    """One row per trial of every chain's ResultGrid, in trial creation order. A trial
    that reported some layer groups but not all was stopped by ASHA, unless the run was
    ``interrupted`` (then it is unfinished and runs again on resume)."""
    rows: List[Dict[str, Any]] = []
    for chain in study.chains:
        grid = grids.get(chain.name)
        if grid is None:
            continue
        if chain.batched:
            rows += _batch_rows(chain, grid)
            continue
        for index, result in enumerate(_creation_order(grid)):
            config = result.config or {}
            metrics = result.metrics or {}
            row: Dict[str, Any] = {"chain": chain.name, "trial": index,
                                   "trial_id": _trial_id(result)}
            if result.error is not None:
                status = FAILED
            elif metrics.get("complete"):
                status = COMPLETED
            elif metrics.get("layers_done") and not interrupted:
                status = STOPPED
            else:
                status = UNFINISHED
            row["status"] = status
            for name in chain.param_names:
                row[name] = plain_value(config.get(name))
            for name in FIGURES:
                row[name] = plain_value(metrics.get(name)) if status != FAILED else None
            row["error_message"] = _error_message(result.error) if result.error is not None else ""
            rows.append(row)
    return rows


def _batch_rows(chain: ChainSpec, grid: Any) -> List[Dict[str, Any]]:
    """One row per configuration of a batched chain, ordered by trial index. A batch that
    did not report (stopped or not finished) leaves its configurations unfinished; a whole
    batch that raised marks each of its configurations failed with the message."""
    rows: List[Dict[str, Any]] = []
    for result in (grid[i] for i in range(len(grid))):
        batch = (result.config or {}).get("batch") or {}
        if batch.get("chain") != chain.name:
            continue  # one experiment runs the batches of every batched chain
        metrics = result.metrics or {}
        figures = json.loads(metrics["batch_results"]) if "batch_results" in metrics else None
        for slot, params in enumerate(batch.get("params", [])):
            row: Dict[str, Any] = {"chain": chain.name, "trial": batch["first"] + slot,
                                   "trial_id": _trial_id(result), "batch_slot": slot}
            found = figures[slot] if figures is not None and slot < len(figures) else None
            if result.error is not None:
                status, message = FAILED, _error_message(result.error)
            elif found is None:
                status, message = UNFINISHED, ""
            elif found.get("error_message"):
                status, message = FAILED, found["error_message"]
            else:
                status, message = COMPLETED, ""
            row["status"] = status
            for name in chain.param_names:
                row[name] = plain_value(params.get(name))
            for name in FIGURES:
                row[name] = plain_value(found.get(name)) if status == COMPLETED else None
            row["error_message"] = message
            rows.append(row)
    return sorted(rows, key=lambda r: r["trial"])


def csv_columns(study: Study) -> List[str]:
    params: List[str] = []
    for chain in study.chains:
        params += [p for p in chain.param_names if p not in params]
    return ["chain", "trial", "trial_id", "batch_slot", "status", *params, *FIGURES,
            "error_message"]


def rows_to_csv(study: Study, rows: List[Dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=csv_columns(study), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return out.getvalue()


def coerce(domain: Domain, text: str) -> Any:
    """A trials.csv cell back to the value the domain produced (ints stay ints)."""
    if domain.kind in ("randint", "qrandint"):
        return int(float(text))
    if domain.kind in ("uniform", "loguniform"):
        return float(text)
    for value in domain.values:
        if str(value) == text:
            return value
    return yaml.safe_load(text)


def read_trials(run_dir: Path, study: Study) -> List[Dict[str, Any]]:
    """Rows of ``trials.csv`` with parameters and figures typed again."""
    path = Path(run_dir) / "trials.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no trials table; is {run_dir} a finished sah run?")
    rows = []
    with path.open(newline="") as fh:
        for raw in csv.DictReader(fh):
            chain = study.chain(raw["chain"])
            row: Dict[str, Any] = {"chain": raw["chain"], "trial": int(raw["trial"]),
                                   "trial_id": raw["trial_id"], "status": raw["status"]}
            for name, domain in chain.domains.items():
                row[name] = coerce(domain, raw[name]) if raw.get(name, "") != "" else None
            for name in FIGURES:
                row[name] = float(raw[name]) if raw.get(name, "") != "" else None
            row["error_message"] = raw.get("error_message", "")
            rows.append(row)
    return rows


def load_run(run_dir: Path) -> Tuple[Study, List[Dict[str, Any]], Dict[str, Any]]:
    """The study (from run.yaml), typed trial rows and run.yaml's content."""
    run_dir = Path(run_dir)
    run_yaml = run_dir / "run.yaml"
    if not run_yaml.is_file():
        raise FileNotFoundError(f"{run_dir}: not a sah run folder (no run.yaml)")
    meta = yaml.safe_load(run_yaml.read_text())
    study = parse_study(meta["study"], str(run_yaml))
    return study, read_trials(run_dir, study), meta


def row_config(chain: ChainSpec, row: Dict[str, Any]) -> ResearchAttentionConfig:
    return chain.build({name: row[name] for name in chain.param_names})


# ---------------------------------------------------------------------- picks
def completed(rows: List[Dict[str, Any]], chain: str) -> List[Dict[str, Any]]:
    return [r for r in rows if r["chain"] == chain and r["status"] == COMPLETED
            and r["score"] is not None and math.isfinite(r["score"])]


def best_row(rows: List[Dict[str, Any]], chain: str) -> Optional[Dict[str, Any]]:
    done = completed(rows, chain)
    return min(done, key=lambda r: (r["score"], r["density"], r["trial"])) if done else None


def front_rows(rows: List[Dict[str, Any]], chain: str) -> List[Dict[str, Any]]:
    done = completed(rows, chain)
    return [done[i] for i in pareto_front([(r["density"], r["output_error"]) for r in done])]


def target_row(rows: List[Dict[str, Any]], chain: str, target: float) -> Optional[Dict[str, Any]]:
    done = completed(rows, chain)
    i = best_at_density([(r["density"], r["output_error"]) for r in done], target)
    return None if i is None else done[i]


# ---------------------------------------------------------------------- files
def _fmt(x: Optional[float], digits: int = 4) -> str:
    return "-" if x is None else f"{x:.{digits}g}"


def config_header(run: str, chain: str, row: Dict[str, Any], why: str) -> str:
    return (f"# sah tuned config: run {run}, chain {chain}, {why}\n"
            f"# trial {row['trial']}: output_error {row['output_error']!r}, density "
            f"{row['density']!r}, score {row['score']!r}\n")


def write_tuned(run_dir: Path, study: Study, rows: List[Dict[str, Any]]) -> None:
    for chain in study.chains:
        best = best_row(rows, chain.name)
        if best is None:
            continue
        cfg = row_config(chain, best)
        atomic_write_text(run_dir / "tuned" / f"{chain.name}.yaml",
                          config_header(study.name, chain.name, best, f"best {study.objective}")
                          + cfg.to_yaml())
        atomic_write_text(run_dir / "tuned" / f"{chain.name}.hub.json", cfg.to_json(hub=True) + "\n")
        for target in study.density_targets:
            row = target_row(rows, chain.name, target)
            if row is None:
                continue
            atomic_write_text(run_dir / "tuned" / f"{chain.name}.density_{target:g}.yaml",
                              config_header(study.name, chain.name, row,
                                            f"lowest error at density <= {target:g}")
                              + row_config(chain, row).to_yaml())


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


def write_outputs(run_dir: Path, study: Study, rows: List[Dict[str, Any]], recording: Any,
                  final: bool, wall_seconds: float) -> None:
    """trials.csv always; the rest once every chain has finished (``final``)."""
    run_dir = Path(run_dir)
    atomic_write_text(run_dir / "trials.csv", rows_to_csv(study, rows))
    if not final:
        return
    from sah.evaluate import recording_key
    meta = {"recording_hash": recording_key(recording), "wall_seconds": wall_seconds}
    write_tuned(run_dir, study, rows)
    atomic_write_bytes(run_dir / "pareto.png", plot_pareto(study, rows))
    from sah.tuning.resources_out import write_resources
    write_resources(run_dir, study, rows, recording)
    atomic_write_text(run_dir / "summary.md", summary_markdown(study, rows, meta))
    fronts = {c.name: [{"trial": r["trial"], "density": r["density"],
                        "output_error": r["output_error"]} for r in front_rows(rows, c.name)]
              for c in study.chains}
    atomic_write_text(run_dir / "pareto.json", json.dumps(fronts, indent=2) + "\n")
