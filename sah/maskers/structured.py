"""The Sparse Transformer patterns (see :mod:`sah.patterns`) as chain maskers.

In a chain, ``i`` is the query's absolute position and ``j`` the key index; the pattern is
intersected with the allowed (causal) keys, so the future half of symmetric windows
drops out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict

from sah.mask import Mask
from sah.maskers.base import FixedMasker, MaskerConfig, MaskerRegistry
from sah.patterns import MaskMod, pattern_mask_mod
from sah.infra.checks import check_int


class PatternMaskerConfig(MaskerConfig):
    """Base of the pattern configs: subclasses name their pattern and its mask_mod."""

    pattern: str = ""

    def mask_mod(self) -> MaskMod:
        raise NotImplementedError


@dataclass
class NormalPatternConfig(PatternMaskerConfig):
    """Causal attention ``j <= i`` (the pattern family's baseline)."""

    search_space: Dict[str, Any] = field(default_factory=dict)
    pattern = "normal"

    def mask_mod(self) -> MaskMod:
        return pattern_mask_mod("normal")


@dataclass
class StridedPatternConfig(PatternMaskerConfig):
    """Sparse Transformer strided: diagonal, band of ``window_size`` and every ``stride``-th
    earlier key (counts of keys)."""

    window_size: int = 32
    stride: int = 32
    search_space: Dict[str, Any] = field(default_factory=dict)
    pattern = "strided"

    def validate(self) -> None:
        check_int(type(self).__name__, "window_size", self.window_size, low=1)
        check_int(type(self).__name__, "stride", self.stride, low=1)

    def mask_mod(self) -> MaskMod:
        return pattern_mask_mod("strided", self.window_size, self.stride)


@dataclass
class FixedPatternConfig(PatternMaskerConfig):
    """Sparse Transformer fixed: blocks of ``window_size`` keys plus each earlier block's
    last key."""

    window_size: int = 32
    search_space: Dict[str, Any] = field(default_factory=dict)
    pattern = "fixed"

    def validate(self) -> None:
        check_int(type(self).__name__, "window_size", self.window_size, low=1)

    def mask_mod(self) -> MaskMod:
        return pattern_mask_mod("fixed", self.window_size)


@dataclass
class SlidingWindowPatternConfig(PatternMaskerConfig):
    """``|i - j| <= window_size // 2`` (a count of keys)."""

    window_size: int = 32
    search_space: Dict[str, Any] = field(default_factory=dict)
    pattern = "sliding_window"

    def validate(self) -> None:
        check_int(type(self).__name__, "window_size", self.window_size, low=1)

    def mask_mod(self) -> MaskMod:
        return pattern_mask_mod("sliding_window", self.window_size)


@dataclass
class DilatedSlidingWindowPatternConfig(PatternMaskerConfig):
    """``j = i + k * dilation`` for ``|k| <= window_size // 2``."""

    window_size: int = 32
    dilation: int = 2
    search_space: Dict[str, Any] = field(default_factory=dict)
    pattern = "dilated_sliding_window"

    def validate(self) -> None:
        check_int(type(self).__name__, "window_size", self.window_size, low=1)
        check_int(type(self).__name__, "dilation", self.dilation, low=1)

    def mask_mod(self) -> MaskMod:
        return pattern_mask_mod("dilated_sliding_window", self.window_size, dilation=self.dilation)


class PatternMasker(FixedMasker):
    """Adds the positions where the config's mask_mod holds (and the key is allowed)."""

    rows_independent = True

    def add_mask(self, keys, queries, values, attention_mask, scaling, dropout,
                 sparse_meta_data, previous_mask: Mask, **kwargs: Any) -> Mask:
        if previous_mask.is_full():
            return previous_mask
        ctx = self.context(keys, queries, values, attention_mask, scaling, kwargs)
        picks = self.config.mask_mod()(ctx.positions_4d, ctx.key_index.view(1, 1, 1, -1))
        return previous_mask.merge(Mask.from_bool(picks & ctx.allowed, ctx.mask_shape))


for _config in (NormalPatternConfig, StridedPatternConfig, FixedPatternConfig,
                SlidingWindowPatternConfig, DilatedSlidingWindowPatternConfig):
    MaskerRegistry.register(_config)(type(_config.__name__.replace("Config", "Masker"),
                                          (PatternMasker,), {}))
