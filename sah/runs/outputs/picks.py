"""Picks from the trial rows: completed rows, the best row, the Pareto front, the
lowest-error row at a density target."""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional

from sah.objectives import best_at_density, pareto_front
from sah.runs.outputs.trials import COMPLETED

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
