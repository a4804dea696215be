"""Oracle top-p: among allowed, not-yet-active keys, the smallest set (by descending true
softmax weight) whose share of the remaining (not yet covered) softmax mass reaches
``top_p``; keys tied at the threshold are included and ``top_p = 1.0`` covers all.
Auxiliary memory 0 bits per token (research upper bound)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict

import torch

from sah.context import AttentionContext
from sah.maskers.base import MaskerRegistry
from sah.maskers.top_k import TopPMasker, TopPMaskerConfig


@dataclass
class OracleTopPMaskerConfig(TopPMaskerConfig):
    """``top_p``: share of the remaining softmax mass to cover, in [0, 1] (default 0.9)."""


@MaskerRegistry.register(OracleTopPMaskerConfig)
class OracleTopPMasker(TopPMasker):
    """Top-p by the true logits."""

    rows_independent = True

    def scores(self, ctx: AttentionContext, sparse_meta_data: Dict[Any, Any],
               **kwargs: Any) -> torch.Tensor:
        return ctx.logits
