"""Starting (or joining) Ray for a run, the cluster's resources, and the versions recorded
in ``run.yaml``.

A local run always starts its OWN Ray (``ray.init(address="local")``): it never joins a
cluster that happens to run on the machine (``RAY_ADDRESS``, ``/tmp/ray/ray_current_cluster``).
``--address`` joins the cluster named there; sah's code then travels to the workers with
the job (``runtime_env`` ``py_modules``), so every node runs the driver's version of sah
(the nodes need its dependencies: torch, numpy, safetensors, ...). Nothing else a trial
needs is a driver-side path: the recording and the fitted weights go through the object
store (:mod:`sah.tuning.trainable`, :mod:`sah.runs.artefacts`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Dict, List, Optional

from sah.study.trial_resources import NodeResources
from sah.tuning.cluster import local_node_resources, node_list

REPO_ROOT = Path(__file__).resolve().parents[2]
_COMMON = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)


def versions() -> Dict[str, str]:
    import platform

    import ray
    import torch

    from sah.infra.version import __version__
    out = {"sah": str(__version__), "ray": str(ray.__version__),
           "torch": str(torch.__version__), "python": platform.python_version()}
    try:
        import optuna
        out["optuna"] = str(optuna.__version__)
    except ImportError:  # pragma: no cover
        pass
    return out


def join_cluster(address: str) -> bool:
    """Join the Ray cluster at ``address`` (``auto``, ``host:port``, ``ray://...``) unless
    Ray already runs in this process. Returns True when we joined it."""
    import ray

    if ray.is_initialized():
        return False
    package = str(Path(__file__).resolve().parents[1])  # the sah package folder
    try:
        ray.init(address=address, runtime_env={"py_modules": [package]}, **_COMMON)
    except (ConnectionError, RuntimeError, ray.exceptions.RayError) as exc:  # none, or token refused
        lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
        raise ConnectionError(f"--address {address}: cannot join the Ray cluster "
                              f"({lines[0] if lines else type(exc).__name__}); check the "
                              f"address of its head and, with token auth, RAY_AUTH_TOKEN_PATH "
                              f"(or RAY_AUTH_TOKEN)") from None
    return True


def start_local_ray(recording_bytes: int) -> bool:
    """Start a private local Ray with this machine's CPUs and CUDA devices (the figures
    :func:`local_node_resources` promised) unless Ray already runs. True when we started it."""
    import ray
    if ray.is_initialized():
        return False
    have = local_node_resources()
    store = int(min(max(1 << 30, 3 * recording_bytes), 4 << 30))
    pythonpath = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)
    ray.init(address="local", num_cpus=int(have["CPU"]), num_gpus=int(have["GPU"]),
             object_store_memory=store,
             runtime_env={"env_vars": {"PYTHONPATH": pythonpath}}, **_COMMON)
    return True


def init_ray(address: Optional[str], recording_bytes: int) -> bool:
    """Join ``address`` or start a private local Ray; True when this call did it."""
    return join_cluster(address) if address else start_local_ray(recording_bytes)


def cluster_nodes() -> List[NodeResources]:
    """The resources of every alive node of the Ray this process is connected to."""
    import ray
    return node_list(ray.nodes())


def planned_nodes() -> List[NodeResources]:
    """The nodes a run will use: the connected cluster's (joined or already running) or, for a
    local run that has not started Ray yet, this machine as :func:`start_local_ray` gives it."""
    import ray
    if ray.is_initialized():
        return cluster_nodes()
    return [local_node_resources()]
