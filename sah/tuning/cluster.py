"""What a trial asks of the Ray cluster, whether the cluster can give it, and which device a
trial computes on.

- The study's ``resources_per_trial`` is parsed by :mod:`sah.study.trial_resources`.
- :func:`check_trial_resources`: compares one trial's request with the nodes of the cluster
  (a trial's bundle must fit on ONE node) BEFORE any trial starts or anything is written,
  so an impossible request (``gpu: 1`` without a GPU, ``cpu: 1000``, a custom resource no
  node has) is refused in seconds with the reason, instead of Ray waiting for ever.
- :func:`pick_device`: the torch device of a trial from the GPU ids Ray assigned it and
  ``CUDA_VISIBLE_DEVICES``; with GPU fractions (``gpu: 0.25``) Ray places several trials on
  one GPU and each keeps its tensors on that GPU.

No Ray import at module level (the study parser imports this module).
"""

from __future__ import annotations

import math
import os
from numbers import Real
from typing import Any, Dict, List, Optional, Sequence

from sah.infra.checks import ConfigError

from sah.study.trial_resources import HIDDEN_RESOURCES as _HIDDEN, NodeResources


def _is_number(x: Any) -> bool:
    return isinstance(x, Real) and not isinstance(x, bool)


def _check(cond: bool, path: str, message: str) -> None:
    if not cond:
        raise ConfigError(f"{path}: {message}")


def trial_request(cpu: float, gpu: float, custom: Dict[str, float]) -> NodeResources:
    """One trial's bundle in Ray's resource names (``CPU``, ``GPU``, custom names)."""
    request = {"CPU": float(cpu), "GPU": float(gpu)}
    request.update({k: float(v) for k, v in custom.items()})
    return {k: v for k, v in request.items() if v > 0}


def tune_resources(per_chain: Dict[str, tuple]) -> Any:
    """What ``tune.with_resources`` gets for chains' ``(cpu, gpu, custom)``: one dict when
    every chain asks the same, else a :class:`ChainResources` (one bundle per trial's chain;
    the batches of several chains share one experiment)."""
    bundles = {name: trial_request(*res) for name, res in per_chain.items()}
    distinct = {tuple(sorted(b.items())) for b in bundles.values()}
    if len(distinct) == 1:
        cpu, gpu, custom = next(iter(per_chain.values()))
        out: Dict[str, Any] = {"cpu": cpu, "gpu": gpu}
        if custom:
            out["custom_resources"] = dict(custom)
        return out
    return ChainResources(bundles)


class ChainResources:
    """Per-trial resources for ``tune.with_resources``: the bundle of the trial's chain
    (``config["chain"]``, or ``config["batch"]["chain"]`` for a batch)."""

    def __init__(self, bundles: Dict[str, NodeResources]) -> None:
        self.bundles = bundles

    def __call__(self, config: Dict[str, Any]) -> Any:
        from ray import tune
        batch = config.get("batch")
        chain = batch["chain"] if isinstance(batch, dict) else config["chain"]
        return tune.PlacementGroupFactory([dict(self.bundles[chain])])


# ---------------------------------------------------------------------- the cluster
def local_node_resources() -> NodeResources:
    """The resources a local run gives Ray (``ray.init(num_cpus=..., num_gpus=...)``)."""
    import torch
    return {"CPU": float(os.cpu_count() or 1), "GPU": float(torch.cuda.device_count())}


def _field(key: str) -> str:
    return {"CPU": "cpu", "GPU": "gpu"}.get(key, f"custom_resources.{key}")


def _fmt(x: float) -> str:
    return f"{x:g}"


def describe_nodes(nodes: Sequence[NodeResources]) -> str:
    """``2 nodes; cpu 2, gpu 0 in all, largest node cpu 1, gpu 0; custom resources node_a 1, ...``"""
    total: Dict[str, float] = {}
    largest: Dict[str, float] = {"CPU": 0.0, "GPU": 0.0}
    for node in nodes:
        for key, value in node.items():
            if key in _HIDDEN or key.startswith("node:") or key.startswith("accelerator_type:"):
                continue
            total[key] = total.get(key, 0.0) + value
            largest[key] = max(largest.get(key, 0.0), value)
    custom = sorted(k for k in total if k not in ("CPU", "GPU"))
    text = (f"{len(nodes)} node{'s' if len(nodes) != 1 else ''}: cpu {_fmt(total.get('CPU', 0))}, "
            f"gpu {_fmt(total.get('GPU', 0))} in all; largest node cpu {_fmt(largest['CPU'])}, "
            f"gpu {_fmt(largest['GPU'])}")
    if custom:
        text += "; custom resources " + ", ".join(f"{k} {_fmt(total[k])}" for k in custom)
    return text


def check_trial_resources(request: NodeResources, nodes: Sequence[NodeResources],
                          cluster: str = "the Ray cluster") -> None:
    """Raise :class:`ConfigError` unless some node can hold one trial's ``request``."""
    for key, amount in request.items():
        _check(math.isfinite(amount) and amount >= 0, f"resources_per_trial.{_field(key)}",
               f"got {amount!r}; expected a finite amount")
    if any(all(node.get(k, 0.0) >= v for k, v in request.items()) for node in nodes):
        return
    fix = ("lower resources_per_trial (or --cpus-per-trial / --gpus-per-trial) or join a "
           "cluster that has them (--address)")
    what = describe_nodes(nodes)
    for key, amount in request.items():
        most = max((node.get(key, 0.0) for node in nodes), default=0.0)
        if most >= amount:
            continue
        if key == "GPU" and most == 0:
            raise ConfigError(f"resources_per_trial.gpu: a trial asks for {_fmt(amount)} GPU but "
                              f"{cluster} has no GPU ({what}); set gpu: 0 (--gpus-per-trial 0) "
                              f"or join a cluster with GPUs (--address)")
        if most == 0:
            raise ConfigError(f"resources_per_trial.{_field(key)}: a trial asks for {key} "
                              f"{_fmt(amount)} but no node of {cluster} has resource {key!r} "
                              f"({what}); {fix}")
        raise ConfigError(f"resources_per_trial.{_field(key)}: a trial asks for "
                          f"{_field(key).split('.')[-1]} {_fmt(amount)} but the largest node of "
                          f"{cluster} has {_fmt(most)} ({what}); {fix}")
    asked = ", ".join(f"{_field(k).split('.')[-1]} {_fmt(v)}" for k, v in request.items())
    raise ConfigError(f"resources_per_trial: no single node of {cluster} has {asked} together "
                      f"(a trial runs on one node; {what}); {fix}")


# ---------------------------------------------------------------------- the device
def pick_device(gpus_per_trial: float, gpu_ids: Sequence[Any], visible_devices: Optional[str],
                cuda_device_count: int) -> str:
    """The torch device a trial computes on. ``gpu_ids``: what ``ray.get_gpu_ids()`` gave the
    trial (several trials share an id when they ask for a GPU fraction); ``visible_devices``:
    ``CUDA_VISIBLE_DEVICES`` of the worker (Ray sets it to the assigned ids, so the trial's
    GPU is ``cuda:<its position>``; unset, the id is the CUDA index)."""
    if gpus_per_trial <= 0:
        return "cpu"
    if not gpu_ids:
        raise RuntimeError(f"the trial asked for {gpus_per_trial:g} GPU but Ray assigned it none")
    first = str(gpu_ids[0]).strip()
    visible = [v.strip() for v in (visible_devices or "").split(",") if v.strip()]
    if visible:
        if first not in visible:
            raise RuntimeError(f"GPU {first} assigned by Ray is not in CUDA_VISIBLE_DEVICES="
                               f"{visible_devices}")
        index = visible.index(first)
    else:
        index = int(first)
    if index >= cuda_device_count:
        raise RuntimeError(f"the trial was given GPU {first} (cuda:{index}) but torch sees "
                           f"{cuda_device_count} CUDA device(s) on this node; install a CUDA "
                           f"build of torch there or run with gpu: 0")
    return f"cuda:{index}"


def trial_device(gpus_per_trial: float) -> str:
    """:func:`pick_device` inside a Ray trial; makes that GPU torch's current device."""
    if gpus_per_trial <= 0:
        return "cpu"
    import ray
    import torch
    device = pick_device(gpus_per_trial, ray.get_gpu_ids(), os.environ.get("CUDA_VISIBLE_DEVICES"),
                         torch.cuda.device_count())
    torch.cuda.set_device(torch.device(device))
    return device


def node_list(raw_nodes: List[Dict[str, Any]]) -> List[NodeResources]:
    """The resources of the alive nodes in ``ray.nodes()``."""
    return [{k: float(v) for k, v in (n.get("Resources") or {}).items()}
            for n in raw_nodes if n.get("Alive")]
