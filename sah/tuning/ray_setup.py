"""Starting (or joining) Ray for a run, and the versions recorded in ``run.yaml``."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Dict, Optional

REPO_ROOT = Path(__file__).resolve().parents[2]


def versions() -> Dict[str, str]:
    import platform

    import ray
    import torch

    import sah
    out = {"sah": str(sah.__version__), "ray": str(ray.__version__),
           "torch": str(torch.__version__), "python": platform.python_version()}
    try:
        import optuna
        out["optuna"] = str(optuna.__version__)
    except ImportError:  # pragma: no cover
        pass
    return out


def init_ray(address: Optional[str], recording_bytes: int) -> bool:
    """Start (or join) Ray unless it already runs. Returns True when we started it."""
    import ray
    if ray.is_initialized():
        return False
    common = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    if address:
        ray.init(address=address, **common)
        return True
    store = int(min(max(1 << 30, 3 * recording_bytes), 4 << 30))
    pythonpath = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)
    ray.init(num_cpus=os.cpu_count(), object_store_memory=store,
             runtime_env={"env_vars": {"PYTHONPATH": pythonpath}}, **common)
    return True
