"""Torch threads for a block of work, and independent pieces of one computation on a few
Python threads at once.

- :func:`torch_threads`: small tensor operations (a fit, a validation, an allocation's
  curves) run fastest on one thread on a shared machine.
- :func:`map_in_threads`: on the CPU many of torch's index operations (``nonzero``'s
  writes, ``index_add_``, ``bincount``, ``scatter_reduce_``, ``repeat_interleave``) use one
  core whatever the intra-op thread count, so a call split into independent chunks leaves
  the other cores idle for much of its time; the chunks run on as many Python threads as
  torch may use (torch releases the GIL inside its operations). The caller's grad and
  inference modes (thread-local in torch) hold in every thread.
"""

from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterator, List, Optional, Sequence, TypeVar


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


T = TypeVar("T")
R = TypeVar("R")

_PREFIX = "sah-chunk"
_lock = threading.Lock()
_pool: Optional[ThreadPoolExecutor] = None
_pool_size = 0


def _forget_pool_in_child() -> None:
    """A forked child has the parent's pool object but none of its threads (and maybe a
    lock held at the fork): start from nothing there."""
    global _lock, _pool, _pool_size
    _lock, _pool, _pool_size = threading.Lock(), None, 0


os.register_at_fork(after_in_child=_forget_pool_in_child)


def _executor(size: int) -> ThreadPoolExecutor:
    """The shared pool of ``size`` threads (made again when the size changes)."""
    global _pool, _pool_size
    with _lock:
        if _pool is None or _pool_size != size:
            if _pool is not None:
                _pool.shutdown(wait=False)
            _pool = ThreadPoolExecutor(max_workers=size, thread_name_prefix=_PREFIX)
            _pool_size = size
        return _pool


def map_in_threads(fn: Callable[[T], R], items: Sequence[T], device: Any) -> List[R]:
    """``[fn(item) for item in items]``, on ``torch.get_num_threads()`` threads when the work
    runs on the CPU (in order; the first exception is raised). On other devices, with one
    torch thread or one item, the plain loop."""
    import torch
    size = torch.get_num_threads()
    if (torch.device(device).type != "cpu" or size <= 1 or len(items) <= 1
            or threading.current_thread().name.startswith(_PREFIX)):  # (no nested pools)
        return [fn(item) for item in items]
    grad = torch.is_grad_enabled()
    inference = torch.is_inference_mode_enabled()

    def run(item: T) -> R:
        with torch.inference_mode(inference), torch.set_grad_enabled(grad):
            return fn(item)

    return list(_executor(size).map(run, items))
