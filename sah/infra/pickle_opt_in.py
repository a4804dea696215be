"""Whether this process may unpickle files (HashAttention ``.pkl`` weights).

Unpickling runs code, so the opt-in comes from the person running the command, never from
the file being loaded: the environment variable ``SAH_ALLOW_PICKLE=1``, the
``--allow-pickle`` flag of the commands that load configs (``sah tune``, ``sah resources``,
``sah patterns``; a tuning run hands it to its Ray workers explicitly), or, in Python,
``with sah.allow_pickle(): ...`` (or ``load_hat_weights(path, allow_pickle=True)``). A
config's or study's own ``allow_pickle: true`` is refused.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

ENV = "SAH_ALLOW_PICKLE"
HOW = ("run the command with --allow-pickle (or set SAH_ALLOW_PICKLE=1; in Python: "
       "`with sah.allow_pickle(): ...`)")
_state = {"enabled": False}


def pickle_allowed() -> bool:
    """True when the person running this process opted in (flag, environment or Python)."""
    return _state["enabled"] or os.environ.get(ENV, "").strip().lower() in ("1", "true", "yes")


def set_pickle_allowed(enabled: bool) -> None:
    """Opt in (or out) for the rest of this process (what ``--allow-pickle`` does)."""
    _state["enabled"] = bool(enabled)


@contextlib.contextmanager
def allow_pickle(enabled: bool = True) -> Iterator[None]:
    """Allow unpickling inside the block (only for files you trust)."""
    previous = _state["enabled"]
    _state["enabled"] = bool(enabled) or previous
    try:
        yield
    finally:
        _state["enabled"] = previous
