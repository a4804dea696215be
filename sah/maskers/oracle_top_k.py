"""Oracle top-k: per row, the ``heavy_size`` allowed, not-yet-active keys with the largest
true score ``q.k`` (ranking by the logits ``L``). Needs the true scores, so it is a
research upper bound, not a deployable method; auxiliary memory 0 bits per token."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict

import torch

from sah.context import AttentionContext
from sah.maskers.base import MaskerRegistry
from sah.maskers.top_k import TopKMasker, TopKMaskerConfig


@dataclass
class OracleTopKConfig(TopKMaskerConfig):
    """``heavy_size``: int count of keys or float fraction of the keys (default 0.05)."""


@MaskerRegistry.register(OracleTopKConfig)
class OracleTopK(TopKMasker):
    """Top-k by the true logits; never re-picks an active key."""

    rows_independent = True

    def scores(self, ctx: AttentionContext, sparse_meta_data: Dict[Any, Any],
               **kwargs: Any) -> torch.Tensor:
        return ctx.logits
