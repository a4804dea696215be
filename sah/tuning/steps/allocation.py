"""A study's ``allocate:`` section (:mod:`sah.study.allocate`), run after the other
outputs: ``tuned/<chain>.allocated.density_<t>.yaml`` for each chain and target, and the
allocation section of ``summary.md`` (uniform vs allocated, density and output error on
the scored recordings). Takes the study and scored recordings the run holds and reads
back only the tables the run wrote (``trials.csv``, ``per_layer.csv``), so a resumed run allocates exactly
as an uninterrupted one. A chain or
target that cannot be allocated (for example a target below the chain's least density)
is listed in the section instead of failing the run."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

from sah.infra.checks import ConfigError
from sah.infra.files import atomic_write_text
from sah.infra.threads import torch_threads
from sah.runs import allocation_report as report
from sah.runs.allocate import allocate_run_chain, run_in_progress
from sah.runs.outputs.trials import read_trials


def allocated_name(chain: str, target: float) -> str:
    return f"{chain}.allocated.density_{target:g}.yaml"


def write_allocations(run_dir: Path, study: Any, scored: Sequence[Tuple[str, Any]],
                      progress: bool = False) -> List[Path]:
    """Allocate every chain of ``study.allocate`` at every target; returns the files written.
    ``scored``: the run's scored recordings ``[(label, Recording)]``. The trial rows are read
    from the ``trials.csv`` the run just wrote, as ``sah allocate`` reads them, so both
    allocate from the same figures."""
    spec = study.allocate
    if spec is None:
        return []
    with torch_threads(1):  # small tensor ops: one thread is fastest (sah allocate --threads)
        rows = read_trials(Path(run_dir), study)
        ctx = run_in_progress(Path(run_dir), study, rows, scored)
        return _write(ctx, spec, progress)


def _write(ctx: Any, spec: Any, progress: bool) -> List[Path]:
    run_dir = ctx.run_dir
    curves: Dict[str, Any] = {}
    results, errors, written = [], [], []
    for chain in spec.chains:
        for target in spec.density_targets:
            try:
                result = allocate_run_chain(ctx, chain, target, spec.per_head, curves)
            except (ConfigError, ValueError) as exc:
                errors.append(f"{chain} at density {target:g}: {exc}")
                continue
            except Exception as exc:  # noqa: BLE001  (the tuned outputs are kept either way)
                errors.append(f"{chain} at density {target:g}: {type(exc).__name__}: {exc}")
                continue
            results.append(result)
            written += report.write_config(ctx, result, run_dir / "tuned" / allocated_name(chain, target))
            if progress:
                print(f"sah: allocated {chain} at density <= {target:g}: output_error "
                      f"{result.uniform.output_error:.4g} -> {result.allocated.output_error:.4g} "
                      f"({result.seconds:.1f} s)", file=sys.stderr)
    summary = run_dir / "summary.md"
    text = summary.read_text() if summary.is_file() else ""
    atomic_write_text(summary, text + report.summary_section(results, errors))
    return written
