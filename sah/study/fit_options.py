"""The study key ``fit_hash_attention``: HashAttention fitting options, checked with the rest
of the study (before any file is written).

```yaml
fit_hash_attention: {bits: 32, hat_mlp_layers: 1, hat_mlp_hidden_size: 32, steps: 40}
```

Every key is a keyword of :func:`sah.maskers.hash_attention_fit.fit_hash_attention`
(``bits`` is short for ``hat_bits``); each value is checked for its type and range here, so
``steps: -1`` or ``bits: 0`` is refused as ``<file>: fit_hash_attention.steps: got -1; ...``
and nothing is written.
"""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Any, Callable, Dict, List, Optional, Tuple

from sah.infra.checks import ConfigError, check_size

def _is_int(v: Any) -> bool:
    return isinstance(v, Integral) and not isinstance(v, bool)


def _is_finite(v: Any) -> bool:
    return isinstance(v, Real) and not isinstance(v, bool) and math.isfinite(v)


def _int_at_least(low: int) -> Tuple[Callable[[Any], bool], str]:
    return (lambda v: _is_int(v) and v >= low), f"an int >= {low}"


def _size_ok(value: Any) -> bool:
    try:
        check_size("", "recall_size", value)
    except ConfigError:
        return False
    return True


def _activations() -> Tuple[str, ...]:
    from sah.maskers.hash_attention import ACTIVATIONS
    return tuple(ACTIVATIONS)


#: option -> (check, what it expects); the keywords of fit_hash_attention a study may set
CHECKS: Dict[str, Tuple[Callable[[Any], bool], str]] = {
    "hat_bits": _int_at_least(1),
    "hat_mlp_layers": _int_at_least(1),
    "hat_mlp_hidden_size": _int_at_least(1),
    "hat_mlp_activation": (lambda v: isinstance(v, str) and v in _activations(),
                           "an activation name (silu, relu, gelu, tanh)"),
    "steps": _int_at_least(0),
    "lr": (lambda v: _is_finite(v) and v > 0, "a number > 0"),
    "recall_size": (_size_ok, "an int count of keys >= 0 or a float fraction in [0, 1]"),
    "target_temperature": (lambda v: _is_finite(v) and v > 0, "a number > 0"),
    "anneal": (lambda v: _is_finite(v) and v >= 0, "a number >= 0"),
    "seed": _int_at_least(0),
    "layers": (lambda v: isinstance(v, list) and bool(v) and all(_is_int(x) and x >= 0 for x in v),
               "a non-empty list of layer ids"),
}


def parse_fit_options(spec: Any, path: str = "fit_hash_attention") -> Optional[Dict[str, Any]]:
    """The checked options (as written, ``bits`` kept) or None when fitting is off."""
    if spec is None:
        return None
    if not isinstance(spec, dict):
        raise ConfigError(f"{path}: got {type(spec).__name__}; expected a mapping of fitting "
                          f"options (e.g. {{bits: 32, steps: 40}}) or null")
    known = ["bits", *CHECKS]
    for key, value in spec.items():
        if key not in known:
            raise ConfigError(f"{path}.{key}: unknown option; options: {', '.join(known)}")
        if key == "bits" and "hat_bits" in spec:
            raise ConfigError(f"{path}.bits: bits is short for hat_bits; give one of them")
        check, expected = CHECKS["hat_bits" if key == "bits" else key]
        if not check(value):
            shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
            raise ConfigError(f"{path}.{key}: got {shown} ({type(value).__name__}); "
                              f"expected {expected}")
    return dict(spec)


def fit_keywords(spec: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """The options as :func:`fit_hash_attention` keywords (``bits`` -> ``hat_bits``)."""
    opts = dict(spec or {})
    if "bits" in opts:
        opts["hat_bits"] = opts.pop("bits")
    return opts


def fitted_layers(study: Any) -> Optional[List[int]]:
    """The layers a study fits HashAttention on: ``fit_hash_attention.layers``, else the
    study's ``layers`` (unless it validates in the model, which runs every layer and needs
    hashes for each), else None: every layer of the fit recordings."""
    explicit = (study.fit_hash_attention or {}).get("layers")
    if explicit:
        return [int(x) for x in explicit]
    if study.layers and study.validate is None:
        return [int(x) for x in study.layers]
    return None
