"""The files of a run, one module per artefact (every file is written atomically):

- :mod:`~sah.runs.outputs.trials`: ``trials.csv`` (the source of truth) and reading a run back;
- :mod:`~sah.runs.outputs.per_layer`: ``per_layer.csv`` (every configuration, recording, layer);
- :mod:`~sah.runs.outputs.picks`: best rows, Pareto fronts, density-target picks;
- :mod:`~sah.runs.outputs.tuned`: ``tuned/<chain>.yaml``, ``.density_<t>.yaml``, ``.hub.json``;
- :mod:`~sah.runs.outputs.summary`: ``summary.md``;
- :mod:`~sah.runs.outputs.pareto`: ``pareto.png`` and ``pareto.json``;
- :mod:`~sah.runs.outputs.mask_resources`: ``resources/<chain>.json``;
- :mod:`~sah.runs.outputs.validation`: ``validation.csv``, ``offline_vs_online.png`` and
  the validation section of ``summary.md`` (studies with ``validate:``);
- :mod:`~sah.runs.outputs.retrieval`: ``retrieval.csv``, ``retrieval_<task>.png`` and the
  retrieval section of ``summary.md`` (``validate.tasks``);
- :mod:`~sah.infra.files`: atomic writes.

:func:`write_outputs` writes them all.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional

from sah.infra.files import atomic_write_bytes, atomic_write_text
from sah.runs.outputs.pareto import pareto_json, plot_pareto
from sah.runs.outputs.per_layer import per_layer_csv
from sah.runs.outputs.picks import best_row, completed, front_rows, target_row
from sah.runs.outputs.mask_resources import write_resources
from sah.runs.outputs.summary import summary_markdown
from sah.runs.outputs.trials import (COMPLETED, FAILED, FIGURES, STOPPED, UNFINISHED,
                                       collect_rows, load_run, read_trials, row_config,
                                       rows_to_csv)
from sah.runs.outputs.tuned import config_header, write_tuned
from sah.runs.outputs.retrieval import retrieval_markdown, write_retrieval_files
from sah.runs.outputs.validation import (plot_offline_vs_online, validation_csv,
                                           validation_markdown)
from sah.study.spec import Study

__all__ = ["atomic_write_bytes", "atomic_write_text", "best_row", "collect_rows", "completed",
           "config_header", "front_rows", "load_run", "read_trials", "row_config",
           "rows_to_csv", "summary_meta", "target_row", "write_outputs",
           "write_validation_outputs", "COMPLETED", "FAILED", "FIGURES",
           "STOPPED", "UNFINISHED"]


def write_outputs(run_dir: Path, study: Study, rows: List[Dict[str, Any]], sets: Any,
                  final: bool, wall_seconds: float, artefacts: Optional[Any] = None) -> None:
    """trials.csv and per_layer.csv always; the rest once every chain has finished
    (``final``). ``sets``: the study's :class:`~sah.study.recordings.RecordingSets`;
    ``artefacts``: the run's :class:`~sah.runs.artefacts.RunArtefacts` (weight files of
    its configs)."""
    run_dir = Path(run_dir)
    atomic_write_text(run_dir / "trials.csv", rows_to_csv(study, rows))
    atomic_write_text(run_dir / "per_layer.csv", per_layer_csv(rows))
    if not final:
        return
    meta = summary_meta(run_dir, study, sets, wall_seconds)
    write_tuned(run_dir, study, rows, artefacts)
    atomic_write_bytes(run_dir / "pareto.png", plot_pareto(study, rows))
    write_resources(run_dir, study, rows, sets.scored[0].recording, artefacts)
    atomic_write_text(run_dir / "summary.md", summary_markdown(study, rows, meta))
    atomic_write_text(run_dir / "pareto.json", pareto_json(study, rows))


def summary_meta(run_dir: Path, study: Study, sets: Any, wall_seconds: float) -> Dict[str, Any]:
    """What ``summary.md`` says besides the trial rows."""
    return {"recordings": sets.describe(fitting=bool(study.fit_hash_attention)),
            "fitted_on_scored": bool(study.fit_hash_attention) and sets.fit_is_scored,
            "hash_fit_report": _hash_fit_report(run_dir), "wall_seconds": wall_seconds}


def write_validation_outputs(run_dir: Path, study: Study, rows: List[Dict[str, Any]],
                             validation_rows: List[Dict[str, Any]], sets: Any,
                             wall_seconds: float, timing: Optional[Dict[str, float]] = None,
                             retrieval_rows: Optional[List[Dict[str, Any]]] = None) -> None:
    """``validation.csv``, ``offline_vs_online.png`` and ``summary.md`` again, with its
    validation section (:mod:`~sah.runs.outputs.validation`; when ``validate.texts`` is
    given), and with ``validate.tasks`` ``retrieval.csv``, ``retrieval_<task>.png`` and
    the retrieval section (:mod:`~sah.runs.outputs.retrieval`)."""
    run_dir = Path(run_dir)
    lines: List[str] = []
    if study.validate.texts:
        atomic_write_text(run_dir / "validation.csv", validation_csv(validation_rows))
        atomic_write_bytes(run_dir / "offline_vs_online.png",
                           plot_offline_vs_online(study, validation_rows))
        lines = validation_markdown(study, validation_rows, timing)
    if retrieval_rows:
        write_retrieval_files(run_dir, retrieval_rows, atomic_write_bytes, atomic_write_text)
        lines += retrieval_markdown(study, retrieval_rows, validation_rows)
    meta = summary_meta(run_dir, study, sets, wall_seconds)
    summary = run_dir / "summary.md"
    kept = _other_sections(summary.read_text() if summary.is_file() else "")
    meta["validation_lines"] = kept + lines
    atomic_write_text(summary, summary_markdown(study, rows, meta))


def _other_sections(text: str) -> List[str]:
    """The ``## `` sections of an existing ``summary.md`` that other steps appended (the
    allocation's), without an earlier validation section: kept when it is written again."""
    lines = text.rstrip("\n").split("\n")
    kept: List[str] = []
    keep = False
    for i, line in enumerate(lines):
        if line.startswith("## "):
            keep = line.strip() not in ("## In-model validation", "## Retrieval inside the model")
            if keep and kept == [] and i > 0 and lines[i - 1] == "":
                kept.append("")
        if keep:
            kept.append(line)
    return kept


def _hash_fit_report(run_dir: Path) -> Any:
    import json
    path = Path(run_dir) / "hash_attention" / "report.json"
    return json.loads(path.read_text()) if path.is_file() else None
