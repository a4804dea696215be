"""The default recording (``default`` = the embedded recording ``docs``: the first 2048 tokens
of the Python documentation topics, all 30 layers of SmolLM2-135M, 32 queries, float16).

Kept for the names earlier code and users know; everything lives in
:mod:`sah.recording.embedded`, which makes and caches every embedded recording.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Union

from sah.recording.embedded import cache_dir, ensure_recordings, parse_embedded

__all__ = ["cache_dir", "default_recording_spec", "default_recording_path",
           "ensure_default_recording"]


def default_recording_spec() -> Dict[str, Any]:
    """What the default recording is (its cache file name is derived from this)."""
    return parse_embedded("default").spec()


def default_recording_path(cache: Union[str, Path, None] = None) -> Path:
    return parse_embedded("default").path(cache)


def ensure_default_recording(cache_dir: Union[str, Path, None] = None,
                             progress: bool = True) -> Path:
    """Path of the cached default recording, made (or re-made) if missing or corrupt."""
    return ensure_recordings(["default"], cache_dir, progress)[0]
