"""A compact progress display: one bar per chain, updated as its configurations finish."""

from __future__ import annotations

import math
import sys
from typing import Any, Dict, List

from ray.tune import Callback


def _chain_and_count(trial: Any) -> tuple:
    """(chain name, configurations) of a Ray trial (a batch holds several configurations)."""
    config = getattr(trial, "config", None) or {}
    batch = config.get("batch")
    if isinstance(batch, dict):
        return batch.get("chain"), len(batch.get("params", []))
    return config.get("chain"), 1


class TrialProgress(Callback):
    """Counts finished, failed and early-stopped configurations of each chain of one
    experiment (``totals``: chain -> configurations); shows each chain's best score."""

    def __init__(self, totals: Dict[str, int], enabled: bool = True, file: Any = None) -> None:
        self.totals = dict(totals)
        self.enabled = enabled
        self.file = file  # default: sys.stderr at the time a bar is made
        self.best = {c: math.inf for c in self.totals}
        self.failed = {c: 0 for c in self.totals}
        self._bars: Dict[str, Any] = {}

    def __getstate__(self) -> Dict[str, Any]:  # Ray pickles callbacks with the run config
        state = dict(self.__dict__)
        state["_bars"] = {}
        state["file"] = None
        return state

    def _bar(self, chain: str) -> Any:
        if chain not in self._bars and self.enabled and chain in self.totals:
            from tqdm import tqdm
            self._bars[chain] = tqdm(total=self.totals[chain], desc=f"{chain:>28s}", unit="config",
                                     file=self.file or sys.stderr, dynamic_ncols=True, leave=True)
        return self._bars.get(chain)

    def setup(self, **info: Any) -> None:
        for chain in self.totals:
            self._bar(chain)

    def on_trial_complete(self, iteration: int, trials: List[Any], trial: Any, **info: Any) -> None:
        chain, count = _chain_and_count(trial)
        result = trial.last_result or {}
        score = result.get("score")
        if (chain in self.best and score is not None and result.get("complete")
                and score < self.best[chain]):
            self.best[chain] = float(score)
        self._advance(chain, count, int(result.get("failed", 0)))

    def on_trial_error(self, iteration: int, trials: List[Any], trial: Any, **info: Any) -> None:
        chain, count = _chain_and_count(trial)
        self._advance(chain, count, count)

    def _advance(self, chain: str, count: int, failed: int) -> None:
        if chain not in self.totals:
            return
        self.failed[chain] += failed
        bar = self._bar(chain)
        if bar is not None:  # the postfix first: the update's display shows the new best
            bar.set_postfix(best_score=f"{self.best[chain]:.4g}", failed=self.failed[chain],
                            refresh=False)
            bar.update(count)
            if bar.n >= bar.total:  # a finished chain's bar shows its final state at once
                bar.refresh()

    def close(self) -> None:
        for bar in self._bars.values():
            bar.close()
        self._bars = {}
