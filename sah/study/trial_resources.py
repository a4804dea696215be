"""A study's ``resources_per_trial`` (``cpu``, ``gpu``, ``custom_resources``): what one trial
asks of the cluster, checked as finite numbers before anything runs. No Ray import: whether
the cluster can give it is :mod:`sah.tuning.cluster`'s question.
"""

from __future__ import annotations

import math
from numbers import Real
from typing import Any, Dict

from sah.infra.checks import ConfigError

NodeResources = Dict[str, float]
HIDDEN_RESOURCES = ("memory", "object_store_memory")  # Ray's bookkeeping resources, never requested


def _is_number(x: Any) -> bool:
    return isinstance(x, Real) and not isinstance(x, bool)


def _check(cond: bool, path: str, message: str) -> None:
    if not cond:
        raise ConfigError(f"{path}: {message}")


def parse_trial_resources(spec: Any) -> tuple:
    """``{cpu, gpu, custom_resources: {name: amount}}`` -> ``(cpu, gpu, custom)``."""
    _check(isinstance(spec, dict), "resources_per_trial",
           "expected {cpu: N, gpu: G, custom_resources: {name: amount}}")
    unknown = sorted(set(spec) - {"cpu", "gpu", "custom_resources"})
    _check(not unknown, f"resources_per_trial.{unknown[0]}" if unknown else "",
           "unknown key; use cpu, gpu and custom_resources")
    cpu, gpu = spec.get("cpu", 1), spec.get("gpu", 0)
    _check(_is_number(cpu) and math.isfinite(cpu) and cpu > 0, "resources_per_trial.cpu",
           f"got {cpu!r}; expected a finite number of CPUs > 0")
    _check(_is_number(gpu) and math.isfinite(gpu) and gpu >= 0, "resources_per_trial.gpu",
           f"got {gpu!r}; expected a finite number of GPUs >= 0 (a fraction shares a GPU)")
    _check(gpu <= 1 or float(gpu).is_integer(), "resources_per_trial.gpu",
           f"got {gpu!r}; use a fraction <= 1 (several trials share one GPU) or whole GPUs")
    custom = spec.get("custom_resources") or {}
    _check(isinstance(custom, dict), "resources_per_trial.custom_resources",
           f"got {custom!r}; expected a mapping {{resource name: amount}}")
    for key, amount in custom.items():
        where = f"resources_per_trial.custom_resources.{key}"
        _check(isinstance(key, str) and key.strip() != "" and key.upper() not in ("CPU", "GPU")
               and key not in HIDDEN_RESOURCES, where,
               "expected the name of a custom Ray resource (cpu and gpu have their own keys)")
        _check(_is_number(amount) and math.isfinite(amount) and amount > 0, where,
               f"got {amount!r}; expected a finite amount > 0")
    return cpu, gpu, {k: float(v) for k, v in custom.items()}
