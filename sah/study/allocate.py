"""A study's ``allocate:`` section: after tuning, spend each density target across the
layers (or heads) of chosen chains (:mod:`sah.runs.allocate`).

```yaml
allocate:
  density_targets: [0.05, 0.10]   # mean densities, each in (0, 1]
  chains: [sink_local_oracle_top_k, sink_local_quest]   # default: every chain whose size
                                  # field (heavy_size, top_p, ..., or a local window_size) the study searches
  per_head: true                  # a size per head (default); false: per layer
```

Writes ``tuned/<chain>.allocated.density_<t>.yaml`` and a section in ``summary.md``. Checked
with the rest of the study, before any folder is written: unknown keys, targets, chains
that do not exist or whose size the study does not search.
"""

from __future__ import annotations

from typing import Any, List, Optional

from sah.attention import ResearchAttentionConfig
from sah.infra.checks import ConfigError, short_repr
from sah.study.spec import AllocateSpec, ChainSpec

KEYS = ("density_targets", "chains", "per_head")


def example_config(spec: ChainSpec) -> ResearchAttentionConfig:
    """The chain with each searched field at its first extreme (to find its size field)."""
    return ResearchAttentionConfig([m.build({m.keys[f]: d.extremes()[0][1]
                                             for f, d in m.domains.items()})
                                    for m in spec.maskers])


def no_size_field(spec: ChainSpec) -> Optional[str]:
    """Why the chain cannot be allocated (None when it can): it has no size field, or the
    study does not search it (no curve to start from)."""
    from sah.allocation.curves import budget_field
    try:
        index, name = budget_field(example_config(spec))
    except ConfigError:
        return ("its family has no size field (heavy_size, top_p, sampling_rate, "
                "base_rate_sampling or a local window_size)")
    if name not in spec.maskers[index].domains:
        last = spec.maskers[-1].config_class.__name__
        family = (f"{last} has no size field (heavy_size, top_p, sampling_rate, "
                  f"base_rate_sampling) and " if index != len(spec.maskers) - 1 else "")
        return (f"{family}its size field {spec.maskers[index].config_class.__name__}.{name} is "
                f"fixed in the study (the run does not vary it)")
    return None


def parse_allocate(data: Any, chains: List[ChainSpec]) -> Optional[AllocateSpec]:
    if data is None:
        return None

    def check(cond: bool, path: str, message: str) -> None:
        if not cond:
            raise ConfigError(f"allocate{path}: {message}")

    check(isinstance(data, dict), "", f"got {short_repr(data)}; expected {{density_targets: "
                                      f"[...], chains: [...], per_head: true}}")
    unknown = sorted(set(data) - set(KEYS))
    check(not unknown, f".{unknown[0]}" if unknown else "",
          f"unknown key; allocate takes {', '.join(KEYS)}")
    targets = data.get("density_targets")
    check(isinstance(targets, list) and bool(targets), ".density_targets",
          f"got {short_repr(targets)}; expected a non-empty list of mean densities in (0, 1]")
    for i, t in enumerate(targets):
        check(isinstance(t, (int, float)) and not isinstance(t, bool) and 0 < t <= 1,
              f".density_targets[{i}]", f"got {short_repr(t)}; expected a density in (0, 1]")
    names = [c.name for c in chains]
    able = [c.name for c in chains if no_size_field(c) is None]
    wanted = data.get("chains", able)
    check(isinstance(wanted, list) and bool(wanted), ".chains",
          f"got {short_repr(wanted)}; expected a non-empty list of chain names (of: "
          f"{', '.join(able) or 'none'})")
    for i, name in enumerate(wanted):
        check(name in names, f".chains[{i}]", f"no chain {short_repr(name)} in the study; "
                                              f"chains that can be allocated: {', '.join(able)}")
        check(name not in wanted[:i], f".chains[{i}]", f"{name!r} is listed twice; list it once")
        why = no_size_field(chains[names.index(name)])
        check(why is None, f".chains[{i}]", f"chain {name!r} cannot be allocated: {why}; "
                                            f"chains that can: {', '.join(able) or 'none'}")
    per_head = data.get("per_head", True)
    check(isinstance(per_head, bool), ".per_head", f"got {short_repr(per_head)}; expected true "
                                                   f"(a size per head) or false (per layer)")
    return AllocateSpec([float(t) for t in targets], [str(n) for n in wanted], per_head)
