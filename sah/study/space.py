"""Search domains of a study: parsing, checking and conversion to Ray Tune domains.

A YAML field is either a fixed value or ``{search: KIND, ...}``:

- ``grid``: ``values: [...]``, every value is tried (``tune.grid_search``);
- ``choice``: ``values: [...]``, one value drawn per trial (``tune.choice``);
- ``uniform`` / ``loguniform``: floats in ``[low, high]`` (``loguniform`` needs ``low > 0``);
- ``randint``: ints in ``[low, high)`` (Ray's convention: ``high`` excluded);
- ``qrandint``: the multiples of ``q`` in ``[low, high]``, both ends included (also for
  ``q = 1``, where Ray's own ``qrandint`` excludes ``high``), drawn uniformly; the same set
  for every searcher (the Ray domain gets the outermost multiples as its ends, so Optuna's
  ``low + k*q`` steps are multiples of ``q`` too).

Every domain is checked before any trial starts: kind and keys, types, ``low < high``,
and (by the study) the values the domain can produce must pass the masker's ``validate()``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from numbers import Integral, Real
from typing import Any, Dict, List, Tuple

from sah.infra.checks import ConfigError, short_repr

KINDS = ("grid", "choice", "uniform", "loguniform", "randint", "qrandint")
_KEYS = {
    "grid": {"values"}, "choice": {"values"}, "uniform": {"low", "high"},
    "loguniform": {"low", "high"}, "randint": {"low", "high"}, "qrandint": {"low", "high", "q"},
}


def _is_int(x: Any) -> bool:
    return isinstance(x, Integral) and not isinstance(x, bool)


def _is_number(x: Any) -> bool:
    return isinstance(x, Real) and not isinstance(x, bool)


@dataclass
class Domain:
    """One search domain; ``path`` is its YAML path (``chains[0].maskers[2].heavy_size``)."""

    kind: str
    path: str
    values: List[Any] = field(default_factory=list)
    low: Any = None
    high: Any = None
    q: int = 1

    @classmethod
    def parse(cls, spec: Dict[str, Any], path: str) -> "Domain":
        kind = spec.get("search")
        if kind not in KINDS:
            raise ConfigError(f"{path}.search: got {short_repr(kind)}; use one of {', '.join(KINDS)}")
        allowed = _KEYS[kind] | {"search"}
        unknown = sorted(set(spec) - allowed)
        if unknown:
            raise ConfigError(f"{path}.{unknown[0]}: a {kind} domain takes only "
                              f"{', '.join(sorted(_KEYS[kind]))}")
        missing = sorted(_KEYS[kind] - set(spec) - {"q"})
        if missing:
            raise ConfigError(f"{path}: a {kind} domain needs {missing[0]!r}")
        if kind in ("grid", "choice"):
            values = spec["values"]
            if not isinstance(values, list) or not values:
                raise ConfigError(f"{path}.values: expected a non-empty list of values")
            return cls(kind, path, values=list(values))
        low, high = spec["low"], spec["high"]
        if kind in ("randint", "qrandint"):
            for name, v in (("low", low), ("high", high)):
                if not _is_int(v):
                    raise ConfigError(f"{path}.{name}: got {short_repr(v)}; a {kind} domain needs ints")
        else:
            for name, v in (("low", low), ("high", high)):
                if not _is_number(v) or not math.isfinite(v):
                    raise ConfigError(f"{path}.{name}: got {short_repr(v)}; expected a finite number")
        if not low < high:
            raise ConfigError(f"{path}.high: got low={low}, high={high}; low must be below high")
        if kind == "loguniform" and low <= 0:
            raise ConfigError(f"{path}.low: got {low}; a loguniform domain needs low > 0")
        q = spec.get("q", 1)
        if kind == "qrandint" and (not _is_int(q) or q < 1):
            raise ConfigError(f"{path}.q: got {short_repr(q)}; expected an int >= 1")
        if kind == "qrandint" and -(-low // q) * q > high:
            raise ConfigError(f"{path}.q: got {q}; no multiple of q lies in [{low}, {high}]")
        if kind == "uniform" or kind == "loguniform":
            low, high = float(low), float(high)
        return cls(kind, path, low=low, high=high, q=int(q))

    def extremes(self) -> List[Tuple[str, Any]]:
        """``(path, value)`` pairs covering what the domain can produce: every listed value,
        or the two ends of a range (checked against the masker's ``validate()``)."""
        if self.kind in ("grid", "choice"):
            return [(f"{self.path}.values[{i}]", v) for i, v in enumerate(self.values)]
        if self.kind == "randint":
            return [(f"{self.path}.low", self.low), (f"{self.path}.high", self.high - 1)]
        if self.kind == "qrandint":  # the outermost multiples of q, both included
            first = -(-self.low // self.q) * self.q
            top = (self.high // self.q) * self.q
            return [(f"{self.path}.low", first), (f"{self.path}.high", top)]
        return [(f"{self.path}.low", self.low), (f"{self.path}.high", self.high)]

    @property
    def size(self) -> int:
        """Number of grid points (1 for any other kind)."""
        return len(self.values) if self.kind == "grid" else 1

    def sample(self, rng: Any) -> Any:
        """One value drawn with ``rng`` (a ``numpy.random.Generator``), as the Ray domain of
        the same kind would draw it: ``choice`` uniform over the values, ``uniform`` and
        ``loguniform`` floats in ``[low, high]``, ``randint`` ints in ``[low, high)``,
        ``qrandint`` multiples of ``q`` between the ends :meth:`extremes` checked.
        ``grid`` domains are enumerated, not sampled (see :mod:`sah.tuning.batching`)."""
        if self.kind in ("grid", "choice"):
            return self.values[int(rng.integers(len(self.values)))]
        if self.kind == "uniform":
            return float(rng.uniform(self.low, self.high))
        if self.kind == "loguniform":
            return float(math.exp(rng.uniform(math.log(self.low), math.log(self.high))))
        if self.kind == "randint":
            return int(rng.integers(self.low, self.high))
        (_, first), (_, top) = self.extremes()
        steps = max(0, (top - first) // self.q)
        return int(first + self.q * int(rng.integers(steps + 1)))

    def to_dict(self) -> Dict[str, Any]:
        if self.kind in ("grid", "choice"):
            return {"search": self.kind, "values": list(self.values)}
        out: Dict[str, Any] = {"search": self.kind, "low": self.low, "high": self.high}
        if self.kind == "qrandint":
            out["q"] = self.q
        return out


def plain_value(value: Any) -> Any:
    """Numpy scalars (what some Ray domains return) -> Python ints and floats."""
    if hasattr(value, "item") and not isinstance(value, (list, dict, str)):
        try:
            return value.item()
        except (TypeError, ValueError):
            return value
    return value
