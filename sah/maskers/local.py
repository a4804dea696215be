"""Sliding local window: each query keeps its ``window_size`` most recent keys."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Union

from sah.mask import Mask
from sah.maskers.base import FixedMasker, MaskerConfig, MaskerRegistry
from sah.infra.checks import check_size, resolve_size


@dataclass
class LocalMaskerConfig(MaskerConfig):
    """``window_size``: int count of keys, or float fraction of the keys."""

    window_size: Union[int, float] = 128
    search_space: Dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        check_size(type(self).__name__, "window_size", self.window_size)


@MaskerRegistry.register(LocalMaskerConfig)
class LocalMasker(FixedMasker):
    """For a query at position ``t``: keys ``[t - w + 1, t]``. Earlier picks are kept."""

    rows_independent = True

    def add_mask(self, keys, queries, values, attention_mask, scaling, dropout,
                 sparse_meta_data, previous_mask: Mask, **kwargs: Any) -> Mask:
        if previous_mask.is_full():
            return previous_mask
        ctx = self.context(keys, queries, values, attention_mask, scaling, kwargs)
        size = resolve_size(self.config.window_size, ctx.size_keys)
        if size == 0:
            return previous_mask
        picks = (ctx.key_index.view(1, 1, 1, -1) > ctx.positions_4d - size) & ctx.allowed
        return previous_mask.merge(Mask.from_bool(picks, ctx.mask_shape))
