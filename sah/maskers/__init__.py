"""Every masker; importing this package registers them all."""

from sah.maskers.base import (FixedMasker, MaskerConfig, MaskerRegistry, ResearchMasker,
                              SamplingMasker)
from sah.maskers.causal import CausalMasker, CausalMaskerConfig
from sah.maskers.local import LocalMasker, LocalMaskerConfig
from sah.maskers.sink import SinkMasker, SinkMaskerConfig
from sah.maskers.structured import (DilatedSlidingWindowPatternConfig, FixedPatternConfig,
                                    NormalPatternConfig, PatternMasker, PatternMaskerConfig,
                                    SlidingWindowPatternConfig, StridedPatternConfig)
from sah.maskers.top_k import (TopKMasker, TopKMaskerConfig, TopPMasker, TopPMaskerConfig)
from sah.maskers.oracle_top_k import OracleTopK, OracleTopKConfig
from sah.maskers.oracle_top_p import OracleTopPMasker, OracleTopPMaskerConfig
from sah.maskers.hash_attention import (HashAttentionTopKMasker, HashAttentionTopKMaskerConfig,
                                        load_hat_weights, save_hat_weights)
from sah.maskers.hash_attention_fit import fit_hash_attention
from sah.maskers.quest import QuestTopKMasker, QuestTopKMaskerConfig
from sah.maskers.random_sampling import RandomSamplingMasker, RandomSamplingMaskerConfig
from sah.maskers.magic_pig import MagicPig, MagicPigConfig
from sah.maskers.adaptive_sampling import AdaptiveSamplingMasker, AdaptiveSamplingMaskerConfig

__all__ = [
    "MaskerConfig", "MaskerRegistry", "ResearchMasker", "FixedMasker", "SamplingMasker",
    "SinkMasker", "SinkMaskerConfig", "LocalMasker", "LocalMaskerConfig", "CausalMasker",
    "CausalMaskerConfig", "PatternMasker", "PatternMaskerConfig", "NormalPatternConfig",
    "StridedPatternConfig", "FixedPatternConfig", "SlidingWindowPatternConfig",
    "DilatedSlidingWindowPatternConfig",
    "TopKMasker", "TopKMaskerConfig", "TopPMasker", "TopPMaskerConfig", "OracleTopK",
    "OracleTopKConfig", "OracleTopPMasker", "OracleTopPMaskerConfig", "HashAttentionTopKMasker",
    "HashAttentionTopKMaskerConfig", "load_hat_weights", "save_hat_weights", "fit_hash_attention",
    "QuestTopKMasker", "QuestTopKMaskerConfig", "RandomSamplingMasker",
    "RandomSamplingMaskerConfig", "MagicPig", "MagicPigConfig", "AdaptiveSamplingMasker",
    "AdaptiveSamplingMaskerConfig",
]
