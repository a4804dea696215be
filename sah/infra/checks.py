"""Field validation shared by every config: clear errors that name the field and the fix.

Size convention (used by every masker): an ``int`` is a count of keys; a ``float`` is a
fraction of the row's number of keys ``n`` (count = ``int(x * n)``, floor). ``bool`` is
never a size.
"""

from __future__ import annotations

import math
import reprlib
from numbers import Integral, Real
from typing import Any


class ConfigError(ValueError):
    """A config field holds a value it may not hold. The message names field and fix."""


_repr = reprlib.Repr()
_repr.maxstring = _repr.maxother = 60
_repr.maxlist = _repr.maxtuple = _repr.maxdict = _repr.maxset = _repr.maxfrozenset = 6
_repr.maxlevel = 3


def short_repr(value: Any) -> str:
    """``repr`` cut to a few items, levels and characters: bounded time and length even on
    huge or alias-shared structures (what error messages show of a value)."""
    return _repr.repr(value)


def _where(owner: str, field: str) -> str:
    return f"{owner}.{field}" if owner else field


def check_size(owner: str, field: str, value: Any) -> None:
    """An int count >= 0 or a float fraction in [0, 1]."""
    where = _where(owner, field)
    if isinstance(value, bool) or not isinstance(value, (Integral, Real)):
        raise ConfigError(
            f"{where}: got {short_repr(value)} ({type(value).__name__}); expected an int count of keys "
            f">= 0 or a float fraction of the keys in [0, 1]"
        )
    if isinstance(value, Integral):
        if value < 0:
            raise ConfigError(f"{where}: got {value}; a count of keys must be >= 0")
        return
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise ConfigError(
            f"{where}: got {value}; a fraction of the keys must be in [0, 1] "
            f"(use an int for a count of keys)"
        )


def check_int(owner: str, field: str, value: Any, low: int | None = None,
              high: int | None = None) -> None:
    where = _where(owner, field)
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise ConfigError(f"{where}: got {short_repr(value)} ({type(value).__name__}); expected an int")
    if (low is not None and value < low) or (high is not None and value > high):
        lo = "-inf" if low is None else str(low)
        hi = "inf" if high is None else str(high)
        raise ConfigError(f"{where}: got {value}; must be an int in [{lo}, {hi}]")


def check_float(owner: str, field: str, value: Any, low: float, high: float, *,
                low_open: bool = False, high_open: bool = False) -> None:
    """A real number in the interval; open ends are excluded."""
    where = _where(owner, field)
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ConfigError(f"{where}: got {short_repr(value)} ({type(value).__name__}); expected a number")
    ok = math.isfinite(value) or (math.isinf(high) and value == high and not high_open)
    ok = ok and (value > low if low_open else value >= low)
    ok = ok and (value < high if high_open else value <= high)
    if not ok:
        left = "(" if low_open else "["
        right = ")" if high_open else "]"
        raise ConfigError(f"{where}: got {value}; must be in {left}{low}, {high}{right}")


def check_choice(owner: str, field: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ConfigError(
            f"{_where(owner, field)}: got {short_repr(value)}; must be one of {', '.join(map(repr, choices))}"
        )


def resolve_size(value: int | float, num_keys: int) -> int:
    """Turn a size (int count or float fraction of ``num_keys``) into a count in [0, n]."""
    if isinstance(value, Integral):
        return max(0, min(int(value), num_keys))
    return max(0, min(int(value * num_keys), num_keys))
