"""A study's ``allocate:`` section (:mod:`sah.study.allocate`), run after the other
outputs: ``tuned/<chain>.allocated.density_<t>.yaml`` for each chain and target, and the
allocation section of ``summary.md`` (uniform vs allocated, density and output error on
the scored recordings). Reads the run folder back (``trials.csv``, ``per_layer.csv``,
``run.yaml``), so a resumed run allocates exactly as an uninterrupted one. A chain or
target that cannot be allocated (for example a target below the chain's least density)
is listed in the section instead of failing the run."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Dict, List

from sah.infra.files import atomic_write_text
from sah.infra.checks import ConfigError


def allocated_name(chain: str, target: float) -> str:
    return f"{chain}.allocated.density_{target:g}.yaml"


def write_allocations(run_dir: Path, study: Any, progress: bool = False) -> List[Path]:
    """Allocate every chain of ``study.allocate`` at every target; returns the files written."""
    spec = study.allocate
    if spec is None:
        return []
    from sah.infra.threads import torch_threads
    with torch_threads(1):  # small tensor ops: one thread is fastest (sah allocate --threads)
        return _write(Path(run_dir), spec, progress)


def _write(run_dir: Path, spec: Any, progress: bool) -> List[Path]:
    from sah.runs import allocation_report as report
    from sah.runs.allocate import allocate_run_chain, open_run
    ctx = open_run(run_dir)
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
