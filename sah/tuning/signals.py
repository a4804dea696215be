"""Stop signals during a run: SIGTERM acts like Ctrl-C (Ray Tune stops gracefully and saves
its state), a sentinel SIGINT handler tells whether ``Tuner.fit`` was interrupted, and
outputs are written with SIGINT/SIGTERM held so they are never left half-written."""

from __future__ import annotations

import contextlib
import signal
from typing import Any, Dict, Iterator, List


def forward_sigterm() -> Any:
    """Make SIGTERM act like Ctrl-C so Ray Tune stops gracefully and saves its state."""
    def handler(signum: int, frame: Any) -> None:
        current = signal.getsignal(signal.SIGINT)
        if callable(current):
            current(signal.SIGINT, frame)
        else:
            raise KeyboardInterrupt
    try:
        return signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        return None


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM while the block runs, then deliver them: the outputs of a
    run are never left half-written by a stop signal."""
    received: List[int] = []
    previous: Dict[int, Any] = {}
    try:
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, lambda n, f: received.append(n))
    except ValueError:  # not the main thread: signals are not ours to hold
        previous.clear()
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for signum in received[:1]:
            signal.raise_signal(signum)


def _second_interrupt(signum: int, frame: Any) -> None:
    """SIGINT handler installed around ``Tuner.fit``. Ray Tune replaces it with its own
    graceful-stop handler and puts it back when a stop signal arrives, so finding it in
    place after ``fit`` means the run was interrupted; a second Ctrl-C lands here."""
    raise KeyboardInterrupt


def install_interrupt_sentinel() -> bool:
    try:
        signal.signal(signal.SIGINT, _second_interrupt)
        return True
    except ValueError:  # not the main thread: Ray Tune does not catch signals either
        return False
