"""sah: sparse attention hyperparameter search.

The core library (this package) imports no Ray and no CLI code; ``sah.tuning`` is the
only place that imports Ray. Names are loaded on first use (PEP 562), so light modules
such as ``sah.resources`` (numpy only) import without torch.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any, List

from sah.infra.version import __version__  # noqa: F401

_EXPORTS = {
    "ResearchAttention": "sah.attention",
    "ResearchAttentionConfig": "sah.attention",
    "AttentionContext": "sah.context",
    "AttentionTensorDimensions": "sah.context",
    "Evaluation": "sah.estimator",
    "evaluate_mask": "sah.estimator",
    "output_error": "sah.estimator",
    "sparse_attention": "sah.estimator",
    "Mask": "sah.mask",
    "get_objective": "sah.objectives",
    "pareto_front": "sah.objectives",
    "ConfigError": "sah.infra.checks",
    "allow_pickle": "sah.infra.pickle_opt_in",
}


def _masker_names() -> List[str]:
    return list(importlib.import_module("sah.maskers").__all__)


def __getattr__(name: str) -> Any:
    if name == "__all__":  # `from sah import *`
        return [*_EXPORTS, *_masker_names()]
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    elif importlib.util.find_spec(f"{__name__}.{name}") is not None:
        # a submodule (`from sah import resources`): let the import system load it alone
        raise AttributeError(name)
    else:
        maskers = importlib.import_module("sah.maskers")  # every masker and its config
        if name not in maskers.__all__:
            raise AttributeError(f"module 'sah' has no attribute {name!r}")
        value = getattr(maskers, name)
    globals()[name] = value
    return value


def __dir__() -> List[str]:
    return sorted(set(globals()) | set(_EXPORTS) | set(_masker_names()))

