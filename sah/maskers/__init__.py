"""Every masker; importing this package registers them all."""

from sah.maskers.base import (FixedMasker, MaskerConfig, MaskerRegistry, ResearchMasker,
                              SamplingMasker)
from sah.maskers.causal import CausalMasker, CausalMaskerConfig
from sah.maskers.local import LocalMasker, LocalMaskerConfig
from sah.maskers.sink import SinkMasker, SinkMaskerConfig
from sah.maskers.structured import (DilatedSlidingWindowPatternConfig, FixedPatternConfig,
                                    NormalPatternConfig, PatternMasker, PatternMaskerConfig,
                                    SlidingWindowPatternConfig, StridedPatternConfig)

__all__ = [
    "MaskerConfig", "MaskerRegistry", "ResearchMasker", "FixedMasker", "SamplingMasker",
    "SinkMasker", "SinkMaskerConfig", "LocalMasker", "LocalMaskerConfig", "CausalMasker",
    "CausalMaskerConfig", "PatternMasker", "PatternMaskerConfig", "NormalPatternConfig",
    "StridedPatternConfig", "FixedPatternConfig", "SlidingWindowPatternConfig",
    "DilatedSlidingWindowPatternConfig",
]
