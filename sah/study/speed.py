"""A study's ``speed:`` section: each tuned pick's speed beside its error, after tuning.

```yaml
speed:
  long_keys: 32768     # the longer stated length the latency is also measured at (>= 1)
  repeats: 3           # interleaved rounds (chain, dense) per latency; medians (>= 1)
  picks: [best, density_0.1]  # default: every pick: best and density_<t> per density target
  device: cpu          # cpu or cuda (checked before the run folder is made)
  dtype: float32       # float32 or bfloat16
  threads: 1           # torch CPU threads while measuring (>= 1; at most the process's)
```

``threads`` is 1 by default, as the run's other steps after Ray (validation, the
HashAttention fit): on cores shared with other work, two threads wait for each other and
the timings scatter (on a 2-core machine at load average 9-13, one call of Quest took
14 ms with one thread and 95-392 ms with two, dense SDPA 24 and 36-56 ms).

``speed: {}`` takes every default. For each chain and each pick (its tuned config file) the
step (:mod:`sah.tuning.steps.speed`) measures ``latency_ratio`` (the whole
``custom_attention`` decoding call over dense SDPA, interleaved medians, decoder-style
kept codes and bounds; at the recording's keys and at ``long_keys``), the masks'
``block_density_64``, ``block_density_128`` and ``bytes_ratio`` on the scored recordings
(:mod:`sah.speed`), and writes ``speed.csv``, ``speed.png`` and the speed section of
``summary.md``. Every refusal is one :class:`~sah.infra.checks.ConfigError` line naming the
YAML path, the value and the fix. Nothing here imports torch.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

from sah.infra.checks import ConfigError, short_repr
from sah.study.spec import (DEFAULT_SPEED_LONG_KEYS, DEFAULT_SPEED_REPEATS, SpeedSection)
from sah.study.validate import all_picks

KEYS = ("long_keys", "repeats", "picks", "device", "dtype", "threads")
DEVICES = ("cpu", "cuda")
DTYPES = ("float32", "bfloat16")
#: Longest ``long_keys`` accepted: the synthetic decoding call is built in memory.
MAX_LONG_KEYS = 1 << 20


def _check(cond: bool, path: str, message: str) -> None:
    if not cond:
        raise ConfigError(f"{path}: {message}")


def _int_in(data: dict, key: str, default: int, low: int, high: int, what: str) -> int:
    value = data.get(key, default)
    _check(isinstance(value, int) and not isinstance(value, bool) and low <= value <= high,
           f"speed.{key}", f"got {short_repr(value)}; expected an int in [{low}, {high}] ({what})")
    return int(value)


def parse_speed_section(data: Any, density_targets: Sequence[float]) -> Optional[SpeedSection]:
    """The ``speed`` value of a study (None or absent: no speed step)."""
    if data is None:
        return None
    _check(isinstance(data, dict), "speed",
           f"got {short_repr(data)}; expected a mapping {{long_keys: 32768, repeats: 3, "
           f"picks: [...], device: cpu, dtype: float32}}, {{}} for the defaults, or null")
    unknown = sorted(set(map(str, data)) - set(KEYS))
    _check(not unknown, f"speed.{unknown[0]}" if unknown else "speed",
           f"unknown key; speed takes {', '.join(KEYS)}")
    long_keys = _int_in(data, "long_keys", DEFAULT_SPEED_LONG_KEYS, 1, MAX_LONG_KEYS,
                        "keys of the longer decoding call timed")
    repeats = _int_in(data, "repeats", DEFAULT_SPEED_REPEATS, 1, 1000,
                      "interleaved rounds per latency")
    known = all_picks(density_targets)
    picks = data.get("picks", known)
    _check(isinstance(picks, list) and bool(picks), "speed.picks",
           f"got {short_repr(picks)}; expected a non-empty list of picks from {', '.join(known)}")
    for i, pick in enumerate(picks):
        _check(pick in known, f"speed.picks[{i}]",
               f"got {short_repr(pick)}; the study's picks are {', '.join(known)} (density_<t> "
               f"for each of density_targets)")
        _check(pick not in picks[:i], f"speed.picks[{i}]",
               f"got {short_repr(pick)} again; list each pick once")
    device = data.get("device", "cpu")
    _check(device in DEVICES, "speed.device", f"got {short_repr(device)}; use cpu or cuda")
    dtype = data.get("dtype", "float32")
    _check(dtype in DTYPES, "speed.dtype", f"got {short_repr(dtype)}; use float32 or bfloat16")
    threads = _int_in(data, "threads", 1, 1, 1024, "torch CPU threads while measuring")
    return SpeedSection(long_keys, repeats, [str(p) for p in picks], str(device), str(dtype),
                        threads)
