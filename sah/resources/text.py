"""The seed calculator's text outputs, read by existing hardware simulators.

For an analysis of mask ``{mask}`` with ``N`` multiplications and read limit ``R``:

- ``{mask}_mask_{N}_read_limit_{R}[_zigzag].txt``: ``# Key: value`` header lines, then one
  line per step, ``at time T: (r, c), (r, c), ...`` (mask coordinates, walk order).
- ``{mask}_mask_{N}_read_limit_{R}[_zigzag]_analysis.txt``: the same header, the seed's
  analysis lines, the row/column lists behind them and sah's extra figures.

Column-first analyses get a ``_column_first`` suffix (the seed only walked row-first).
Numpy and the standard library only, like :mod:`sah.resources`.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Tuple, Union

import numpy as np

from sah.resources.calculator import ResourceAnalysis


def text_stem(analysis: ResourceAnalysis) -> str:
    stem = f"{analysis.name}_mask_{analysis.num_multiplications}_read_limit_{analysis.read_limit}"
    if analysis.order == "column_first":
        stem += "_column_first"
    return stem + ("_zigzag" if analysis.zigzag else "")


def header_lines(analysis: ResourceAnalysis) -> List[str]:
    rows, cols = analysis.shape
    size = str(rows) if rows == cols else f"{rows}x{cols}"
    lines = [f"# Type: {analysis.name}", f"# Mask Size: {size}",
             f"# Num Multiplications: {analysis.num_multiplications}",
             f"# Read Limit: {analysis.read_limit}", f"# Zigzag: {analysis.zigzag}",
             f"# Order: {analysis.order}"]
    for key, value in analysis.parameters.items():
        if key not in ("pattern", "mask_size"):
            lines.append(f"# {key.replace('_', ' ').title()}: {value}")
    return lines


def schedule_lines(analysis: ResourceAnalysis, chunk_steps: int = 4096):
    """Yield the ``at time T: ...`` lines (with newline), a chunk of steps at a time."""
    sched = analysis.schedule
    assert sched is not None, "analysis made without a schedule"
    numbers = [str(i) for i in range(max(analysis.shape) + 1)]
    for first in range(0, sched.steps, chunk_steps):
        last = min(first + chunk_steps, sched.steps)
        lo, hi = int(sched.start[first]), int(sched.end[last - 1])
        major, minor = sched.walk_points(lo, hi)
        rows, cols = (major, minor) if analysis.order == "row_first" else (minor, major)
        pairs = [f"({numbers[r]}, {numbers[c]})" for r, c in zip(rows.tolist(), cols.tolist())]
        bounds = (np.append(sched.start[first:last], hi) - lo).tolist()
        for k in range(last - first):
            yield f"at time {first + k}: " + ", ".join(pairs[bounds[k]:bounds[k + 1]]) + "\n"


def analysis_lines(analysis: ResourceAnalysis) -> List[str]:
    mc, rc, cc, tc = (analysis.max_case, analysis.max_row_changes, analysis.max_col_changes,
                      analysis.max_total_changes)
    return analysis.seed_lines() + [
        f"Max Case Rows: {mc.row_list}", f"Max Case Columns: {mc.col_list}",
        f"Max Row Changes New Rows: {rc.new_rows}", f"Max Column Changes New Columns: {cc.new_cols}",
        f"Max Total Changes New Rows: {tc.new_rows}", f"Max Total Changes New Columns: {tc.new_cols}",
        f"Total Multiplications: {analysis.active}",
        f"Array Utilisation: {analysis.utilisation:.6f}",
        f"Mean Distinct Reads Per Step: {analysis.mean_reads_per_step:.4f}",
        f"Total Reloads (Rows + Columns): {analysis.total_reloads}"]


def write_text_outputs(analysis: ResourceAnalysis, directory: Union[str, Path]) -> Tuple[Path, Path]:
    """Write the schedule and analysis text files; return their paths. Files are written to a
    temporary name and renamed, so a failure leaves nothing half-written."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    stem = text_stem(analysis)
    points_path = directory / f"{stem}.txt"
    analysis_path = directory / f"{stem}_analysis.txt"
    head = "\n".join(header_lines(analysis)) + "\n"
    for path, writer in ((points_path, lambda f: f.writelines(schedule_lines(analysis))),
                         (analysis_path, lambda f: f.write("\n".join(analysis_lines(analysis)) + "\n"))):
        tmp = path.with_name(path.name + ".partial")
        try:
            with open(tmp, "w") as f:
                f.write(head)
                writer(f)
            tmp.replace(path)
        finally:
            tmp.unlink(missing_ok=True)
    return points_path, analysis_path
