"""sah: sparse attention hyperparameter search.

The core library (this package) imports no Ray and no CLI code; ``sah.tuning`` is the
only place that imports Ray.
"""

__version__ = "0.1.0"

from sah.attention import ResearchAttention, ResearchAttentionConfig
from sah.context import AttentionContext, AttentionTensorDimensions
from sah.estimator import Evaluation, evaluate_mask, output_error, sparse_attention
from sah.mask import Mask
from sah.maskers import *  # noqa: F401,F403  (registers every masker)
from sah.maskers import __all__ as _masker_names
from sah.objectives import get_objective, pareto_front
from sah.validation import ConfigError

__all__ = [
    "ResearchAttention", "ResearchAttentionConfig", "AttentionContext",
    "AttentionTensorDimensions", "Evaluation", "evaluate_mask", "output_error",
    "sparse_attention", "Mask", "get_objective", "pareto_front", "ConfigError",
    *_masker_names,
]
