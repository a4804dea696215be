"""Study-wide checks that need more than one field: names (they become folder and file
names), chain names that could overwrite each other's output files, the total number of
configurations. Each raises one :class:`ConfigError` line with the YAML path, the value and
the fix. (The weight files a study names are read, and so checked, before the run folder is
made: :mod:`sah.runs.artefacts`.)"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, List

from sah.infra.checks import ConfigError, short_repr

if TYPE_CHECKING:  # pragma: no cover
    from sah.study.spec import ChainSpec

MAX_NAME_CHARS = 100  # run and chain names become folder and file names (with suffixes)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# what output files add to a chain's name: tuned/<name>.hub.json, .density_<t>.yaml, ...
_OUTPUT_SUFFIX = re.compile(r"^(hub|density_.*|allocated(\..*)?)$")


def _check(cond: bool, path: str, message: str) -> None:
    if not cond:
        raise ConfigError(f"{path}: {message}")


def check_name(name: Any, path: str, why: str) -> None:
    _check(isinstance(name, str) and bool(_NAME.match(name)), path,
           f"got {short_repr(name)}; use letters, digits, '_', '-', '.' ({why})")
    _check(len(name) <= MAX_NAME_CHARS, path,
           f"got a name of {len(name)} characters ({short_repr(name)}); use at most "
           f"{MAX_NAME_CHARS} ({why})")


def check_chain_names(chains: List[ChainSpec]) -> None:
    """Chain names must not collide as output files (``tuned/<name>.yaml``, ``.hub.json``,
    ``.density_<t>.yaml``, ``resources/<name>.json``, ...), on case-insensitive file
    systems too."""
    for j, b in enumerate(chains):
        for a in chains[:j]:
            low_a, low_b = a.name.lower(), b.name.lower()
            if low_a == low_b:
                why = "is already" if a.name == b.name else "differs only in case from"
                raise ConfigError(f"{b.path}.name: {b.name!r} {why} the name of {a.path} "
                                  f"({a.name!r}); chain names name output files and must be "
                                  f"unique, case-insensitively; rename one")
            for short, long_, this, other in ((low_a, low_b, b, a), (low_b, low_a, a, b)):
                if long_.startswith(short + ".") and _OUTPUT_SUFFIX.match(long_[len(short) + 1:]):
                    raise ConfigError(
                        f"{this.path}.name: {this.name!r} is {other.name!r} ({other.path}) plus "
                        f"an output suffix (.hub, .density_<t>, .allocated); their files in tuned/ "
                        f"can overwrite each other; rename one")


def check_total(chains: List[ChainSpec], limit: int) -> None:
    """Refuse absurd searches before any configuration is built."""
    counts = [c.expected_trials() for c in chains]
    total = sum(counts)
    if total <= limit:
        return
    worst = max(range(len(chains)), key=lambda i: counts[i])
    c = chains[worst]
    raise ConfigError(
        f"{c.path}: the study expands to {total:,} configurations ({c.name!r}: {counts[worst]:,} "
        f"= {counts[worst] // c.num_samples:,} grid point(s) x num_samples {c.num_samples:,}); the "
        f"limit is max_configurations = {limit:,}; lower num_samples or the grid, or raise the "
        f"limit (study key max_configurations, or --max-configurations)")
