"""A compact progress display: one bar per chain, updated as trials finish."""

from __future__ import annotations

import math
import sys
from typing import Any, Dict, List, Optional

from ray.tune import Callback


class TrialProgress(Callback):
    """Counts finished, failed and early-stopped trials of one chain; shows the best score."""

    def __init__(self, chain: str, total: int, enabled: bool = True) -> None:
        self.chain = chain
        self.total = total
        self.enabled = enabled
        self.best = math.inf
        self.failed = 0
        self._bar: Optional[Any] = None

    def __getstate__(self) -> Dict[str, Any]:  # Ray pickles callbacks with the run config
        state = dict(self.__dict__)
        state["_bar"] = None
        return state

    def _ensure_bar(self) -> Any:
        if self._bar is None and self.enabled:
            from tqdm import tqdm
            self._bar = tqdm(total=self.total, desc=f"{self.chain:>28s}", unit="trial",
                             file=sys.stderr, dynamic_ncols=True, leave=True)
        return self._bar

    def setup(self, **info: Any) -> None:
        self._ensure_bar()

    def on_trial_complete(self, iteration: int, trials: List[Any], trial: Any, **info: Any) -> None:
        result = trial.last_result or {}
        score = result.get("score")
        if score is not None and result.get("complete") and score < self.best:
            self.best = float(score)
        self.failed += int(result.get("failed", 0))
        self._advance(_configs(trial))

    def on_trial_error(self, iteration: int, trials: List[Any], trial: Any, **info: Any) -> None:
        self.failed += _configs(trial)
        self._advance(_configs(trial))

    def _advance(self, count: int) -> None:
        bar = self._ensure_bar()
        if bar is not None:
            bar.update(count)
            bar.set_postfix(best_score=f"{self.best:.4g}", failed=self.failed, refresh=False)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _configs(trial: Any) -> int:
    """Configurations a Ray trial scores (a batch holds several)."""
    batch = (getattr(trial, "config", None) or {}).get("batch")
    return len(batch["params"]) if isinstance(batch, dict) else 1
