"""sah's cache folder: embedded recordings, joined model files, fitted hashes."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Union


def cache_dir(override: Union[str, Path, None] = None) -> Path:
    """``override`` if given, else ``$SAH_CACHE_DIR``, else ``$XDG_CACHE_HOME/sah`` (default
    ``~/.cache/sah``)."""
    if override is not None:
        return Path(override)
    if os.environ.get("SAH_CACHE_DIR"):
        return Path(os.environ["SAH_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "sah"
