import os
from pathlib import Path

import pytest
import torch

from tuning_support import recording_fixture

# Keep CPU tests reproducible and polite on 2-core machines.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def rng():
    return torch.Generator().manual_seed(1234)


# the small synthetic recording (tuning_support.SMALL), saved once per module; a module that
# needs another one assigns its own ``rec_path = recording_fixture(...)``
rec_path = recording_fixture()


TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


@pytest.fixture(scope="module")
def ray_session():
    """A small local Ray cluster for one test module (workers see the repo and tests/).
    ``address="local"``: always a new private Ray, never a cluster running on the machine."""
    import ray
    ray.init(address="local", num_cpus=2, object_store_memory=300 * 1024 * 1024, include_dashboard=False,
             log_to_driver=False, logging_level="ERROR",
             runtime_env={"env_vars": {"PYTHONPATH": f"{ROOT}{os.pathsep}{TESTS}"}})
    yield
    ray.shutdown()
