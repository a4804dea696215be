"""Torch threads for a block of work: small tensor operations (a fit, a validation, an
allocation's curves) run fastest on one thread on a shared machine."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator


@contextmanager
def torch_threads(count: int, at_most_current: bool = True) -> Iterator[None]:
    """Run the block with ``count`` torch threads (at least 1; with ``at_most_current``, no
    more than torch has now), then put the previous number back."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, min(before, count) if at_most_current else count))
    try:
        yield
    finally:
        torch.set_num_threads(before)
