"""Stop signals during a run: SIGTERM acts like Ctrl-C (Ray Tune stops gracefully and saves
its state), a sentinel SIGINT handler tells whether ``Tuner.fit`` was interrupted (and
turns a second Ctrl-C into an immediate, clean exit), and outputs are written with
SIGINT/SIGTERM held so they are never left half-written."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from typing import Any, Callable, Dict, Iterator, List

INTERRUPTED_TWICE = 130  # exit status of a second Ctrl-C (the shell's for SIGINT)
_FORCED_EXIT_HOOKS: List[Callable[[], None]] = []


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


def at_forced_exit(hook: Callable[[], None]) -> Callable[[], None]:
    """Run ``hook`` (e.g. saving ``progress.json``) if a second Ctrl-C stops the process at
    once; returns the function that forgets it again."""
    _FORCED_EXIT_HOOKS.append(hook)

    def forget() -> None:
        if hook in _FORCED_EXIT_HOOKS:
            _FORCED_EXIT_HOOKS.remove(hook)
    return forget


def _second_interrupt(signum: int, frame: Any) -> None:
    """SIGINT handler installed around ``Tuner.fit``. Ray Tune replaces it with its own
    graceful-stop handler and puts it back when a stop signal arrives, so finding it in
    place after ``fit`` means the run was interrupted. A second Ctrl-C lands here and stops
    at once (skipping Ray Tune's last checkpoint): the :func:`at_forced_exit` hooks run,
    one line is printed and the process exits with status 130. It does not raise
    ``KeyboardInterrupt``: raised inside a destructor or a Ray callback, that is printed as
    a traceback and ignored."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for hook in list(_FORCED_EXIT_HOOKS):
        try:
            hook()
        except Exception:  # noqa: BLE001 (stopping anyway; the hook's work is a bonus)
            pass
    sys.stderr.write("\nsah: stopped at once (second Ctrl-C); finished trials are kept; "
                     "continue with --resume\n")
    sys.stderr.flush()
    sys.stdout.flush()
    os._exit(INTERRUPTED_TWICE)


def install_interrupt_sentinel() -> bool:
    try:
        signal.signal(signal.SIGINT, _second_interrupt)
        return True
    except ValueError:  # not the main thread: Ray Tune does not catch signals either
        return False
