"""``trials.csv``: the source of truth of a run.

One row per scored configuration (chain, trial index, the Ray trial id and, for batched
chains, the configuration's slot in its Ray trial's batch; ``node_id``, the Ray node the
trial ran on (a batch's node for each of its rows; empty for a trial that failed before it
reported); status, every parameter, output_error, density (means over the scored
recordings), score, aux bits, layers evaluated, seconds, seconds inside chain evaluation,
each scored recording's own figures ``output_error[<recording>]`` and
``density[<recording>]`` (means over its layers), error message). Rows held in memory also
carry ``per_layer`` (written to ``per_layer.csv``). Best configs, Pareto fronts and the
density-target picks are
computed from its rows (:mod:`sah.runs.outputs.picks`), and a config is rebuilt from a
row with the study's chain spec (:func:`row_config`), so what is exported is exactly what
was scored.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from pathlib import Path
from typing import Any, Dict, List, Tuple

import yaml

from sah.attention import ResearchAttentionConfig
from sah.infra.checks import ConfigError, short_repr
from sah.infra.csv_table import FIX, cell, read_table
from sah.runs.folder import read_run_yaml
from sah.study.space import Domain, plain_value
from sah.study.spec import ChainSpec, Study
from sah.study.parse import parse_study
from sah.study.recordings import recording_labels

FIGURES = ("output_error", "density", "score", "aux_bits_per_token", "layers_done", "seconds",
           "eval_seconds")
COMPLETED, FAILED, STOPPED, UNFINISHED = "completed", "failed", "stopped", "unfinished"
PER_RECORDING = ("output_error", "density")  # figures trials.csv keeps for each recording


def recording_columns(study: Study) -> List[str]:
    """``output_error[<label>]``, ``density[<label>]`` for each scored recording."""
    return [f"{figure}[{label}]" for label in recording_labels(study.recordings)
            for figure in PER_RECORDING]


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def _add_recording_figures(row: Dict[str, Any], metrics: Dict[str, Any]) -> None:
    """The per-recording figures and the per-layer table of a completed configuration."""
    for label, figures in (_json(metrics.get("per_recording")) or {}).items():
        for figure in PER_RECORDING:
            row[f"{figure}[{label}]"] = figures.get(figure)
    row["per_layer"] = _json(metrics.get("per_layer")) or []


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
                                   "trial_id": _trial_id(result),
                                   "node_id": metrics.get("node_id", "")}
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
            if status == COMPLETED:
                _add_recording_figures(row, metrics)
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
                                   "trial_id": _trial_id(result), "batch_slot": slot,
                                   "node_id": metrics.get("node_id", "")}
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
            if status == COMPLETED:
                _add_recording_figures(row, found)
            row["error_message"] = message
            rows.append(row)
    return sorted(rows, key=lambda r: r["trial"])


def csv_columns(study: Study) -> List[str]:
    params: List[str] = []
    for chain in study.chains:
        params += [p for p in chain.param_names if p not in params]
    return ["chain", "trial", "trial_id", "batch_slot", "node_id", "status", *params, *FIGURES,
            *recording_columns(study), "error_message"]


def rows_to_csv(study: Study, rows: List[Dict[str, Any]]) -> str:
    out = io.StringIO()
    columns = csv_columns(study)
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in columns if k in row})
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
    for line, raw in read_table(path, ("chain", "trial", "trial_id", "status")):
        try:
            chain = study.chain(raw["chain"])
        except (ConfigError, KeyError, ValueError):
            raise ConfigError(f"{path}: line {line}: column chain holds "
                              f"{short_repr(raw['chain'])}, not a chain of the run's study "
                              f"({', '.join(c.name for c in study.chains)}); {FIX}") from None
        row: Dict[str, Any] = {"chain": raw["chain"],
                               "trial": cell(path, line, "trial", raw["trial"], int),
                               "trial_id": raw["trial_id"], "node_id": raw.get("node_id", ""),
                               "status": raw["status"]}
        for name, domain in chain.domains.items():
            text = raw.get(name, "")
            row[name] = (cell(path, line, name, text, lambda t, d=domain: coerce(d, t))
                         if text != "" else None)
        for name in (*FIGURES, *recording_columns(study)):
            text = raw.get(name, "")
            row[name] = cell(path, line, name, text, float) if text != "" else None
        row["error_message"] = raw.get("error_message", "")
        rows.append(row)
    return rows


def load_run(run_dir: Path) -> Tuple[Study, List[Dict[str, Any]], Dict[str, Any]]:
    """The study (from run.yaml), typed trial rows and run.yaml's content."""
    run_dir = Path(run_dir)
    run_yaml = run_dir / "run.yaml"
    if not run_yaml.is_file():
        raise FileNotFoundError(f"{run_dir}: not a sah run folder (no run.yaml); pass a folder "
                                f"made by sah tune (results/<run>)")
    meta = read_run_yaml(run_dir, "pass a run folder made by sah tune (results/<run>)")
    study = parse_study(meta["study"], str(run_yaml))
    return study, read_trials(run_dir, study), meta


def row_config(chain: ChainSpec, row: Dict[str, Any]) -> ResearchAttentionConfig:
    return chain.build({name: row[name] for name in chain.param_names})
