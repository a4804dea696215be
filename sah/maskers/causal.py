"""Dense causal attention as a masker: every allowed key (a baseline)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict

from sah.mask import Mask
from sah.maskers.base import FixedMasker, MaskerConfig, MaskerRegistry


@dataclass
class CausalMaskerConfig(MaskerConfig):
    search_space: Dict[str, Any] = field(default_factory=dict)


@MaskerRegistry.register(CausalMaskerConfig)
class CausalMasker(FixedMasker):
    """Returns the full mask: all allowed positions with weight 1."""

    rows_independent = True

    def add_mask(self, keys, queries, values, attention_mask, scaling, dropout,
                 sparse_meta_data, previous_mask: Mask, **kwargs: Any) -> Mask:
        return Mask.create_full(previous_mask.shape, previous_mask.device)
