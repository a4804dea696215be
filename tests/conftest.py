import os

import pytest
import torch

# Keep CPU tests reproducible and polite on 2-core machines.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def rng():
    return torch.Generator().manual_seed(1234)

