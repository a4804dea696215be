"""Attention sinks: every query keeps the first ``sink_size`` keys."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Union

from sah.mask import Mask
from sah.maskers.base import FixedMasker, MaskerConfig, MaskerRegistry
from sah.infra.checks import check_size, resolve_size


@dataclass
class SinkMaskerConfig(MaskerConfig):
    """``sink_size``: int count of keys, or float fraction of the keys."""

    sink_size: Union[int, float] = 128
    search_space: Dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        check_size(type(self).__name__, "sink_size", self.sink_size)


@MaskerRegistry.register(SinkMaskerConfig)
class SinkMasker(FixedMasker):
    """Keys ``[0, sink_size)`` (intersected with the allowed keys) get weight 1."""

    rows_independent = True

    def add_mask(self, keys, queries, values, attention_mask, scaling, dropout,
                 sparse_meta_data, previous_mask: Mask, **kwargs: Any) -> Mask:
        if previous_mask.is_full():
            return previous_mask
        ctx = self.context(keys, queries, values, attention_mask, scaling, kwargs)
        size = resolve_size(self.config.sink_size, ctx.size_keys)
        if size == 0:
            return previous_mask
        picks = (ctx.key_index.view(1, 1, 1, -1) < size) & ctx.allowed
        return previous_mask.merge(Mask.from_bool(picks, ctx.mask_shape))
