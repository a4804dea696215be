"""The default recording: made from the embedded model on first use, cached outside git.

:func:`default_recording_spec` says what it is; :func:`ensure_default_recording` returns the
path of the cached file, making it (one forward pass of SmolLM2-135M over the default
corpus) when it is missing, corrupt or made to another spec. The cache directory is
``$SAH_CACHE_DIR`` or ``$XDG_CACHE_HOME/sah`` (default ``~/.cache/sah``); a file lock makes
concurrent callers (for example Ray workers) wait for one maker.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, Union

from sah.recording.format import RecordingError, load_recording, save_recording

SPEC_VERSION = 1


def default_recording_spec() -> Dict[str, Any]:
    """What the default recording is (its cache file name is derived from this)."""
    from sah.recording.default_model import DEFAULT_MODEL_ID, DEFAULT_MODEL_SHAPE

    return {
        "spec_version": SPEC_VERSION,
        "model": DEFAULT_MODEL_ID,
        "text": "default corpus: pydoc_data.topics, sorted topics, first tokens",
        "num_tokens": 2048,
        "num_queries": 32,
        "query_fraction": 0.25,
        "layers": list(range(DEFAULT_MODEL_SHAPE["num_layers"])),
        "dtype": "float16",
        "attn_implementation": "sdpa",
    }


def cache_dir(override: Union[str, Path, None] = None) -> Path:
    if override is not None:
        return Path(override)
    if os.environ.get("SAH_CACHE_DIR"):
        return Path(os.environ["SAH_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "sah"


def default_recording_path(cache: Union[str, Path, None] = None) -> Path:
    spec = json.dumps(default_recording_spec(), sort_keys=True).encode()
    return cache_dir(cache) / "recordings" / f"default-{hashlib.sha256(spec).hexdigest()[:12]}.safetensors"


def make_default_recording(path: Union[str, Path], progress: bool = True) -> Path:
    """Record the default spec into ``path`` (about 35 s on 2 CPU cores, model load included)."""
    from sah.recording.corpus import default_corpus_text, text_sha256, tokenize
    from sah.recording.default_model import load_default_model
    from sah.recording.recorder import record_attention

    spec = default_recording_spec()
    start = time.perf_counter()
    model, tokenizer = load_default_model(attn_implementation=spec["attn_implementation"])
    text, source = default_corpus_text()
    ids = tokenize(tokenizer, text, spec["num_tokens"], source)
    rec = record_attention(model, ids, layers=spec["layers"], num_queries=spec["num_queries"],
                           query_fraction=spec["query_fraction"], dtype=spec["dtype"],
                           progress=progress,
                           metadata={"text_source": source, "text_sha256": text_sha256(text),
                                     "default_spec": spec})
    rec.metadata["make_seconds"] = round(time.perf_counter() - start, 1)
    return save_recording(rec, path)


def ensure_default_recording(cache_dir: Union[str, Path, None] = None,
                             progress: bool = True) -> Path:
    """Path of the cached default recording, made (or re-made) if missing or corrupt."""
    path = default_recording_path(cache_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if path.exists():
                try:
                    rec = load_recording(path)
                    if rec.metadata.get("default_spec") == default_recording_spec():
                        return path
                    reason = "it was made to another spec"
                except RecordingError as exc:
                    reason = str(exc)
                print(f"sah: re-making the default recording ({reason})", file=sys.stderr)
            else:
                print(f"sah: making the default recording (once) at {path}", file=sys.stderr)
            return make_default_recording(path, progress=progress)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
