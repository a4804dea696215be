"""GGUF models loaded once, then from a float32 copy in sah's cache.

transformers reads a GGUF file slowly: it parses every metadata field (the whole
vocabulary) twice and maps tensor names one by one, about 18 s for the 135M default model
on 2 CPU cores, before it dequantises the weights to float32 in about 1 s. The first load
of a GGUF file therefore writes what it produced (the float32 weights as safetensors, the
config as JSON, the tokenizer's own JSON files: data only, nothing that runs code) to
``<sah cache>/models/converted/<file stem>-<key>/``; later loads read that folder in under
a second. The weights and logits are bit-identical to the GGUF load (tested).

The key covers the GGUF file (resolved path, size, modification time) and the transformers
version, so a reinstalled model or another transformers converts again. The folder is
written under a temporary name and renamed whole; a folder without its ``complete`` marker
is never read. A cache that cannot be written only costs the slow load next time."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Optional, Tuple

#: bump when what is written changes
FORMAT = 1
MARKER = "complete"


def converted_folder(gguf: Path) -> Optional[Path]:
    """Where the float32 copy of ``gguf`` lives in sah's cache (None if unknown)."""
    from sah.recording.cache import cache_dir
    import transformers

    try:
        stat = gguf.stat()
    except OSError:
        return None
    note = f"{gguf.resolve()} {stat.st_size} {stat.st_mtime_ns} {transformers.__version__} {FORMAT}"
    key = hashlib.sha256(note.encode()).hexdigest()[:16]
    return cache_dir() / "models" / "converted" / f"{gguf.stem}-{key}"


def _ready(folder: Optional[Path]) -> bool:
    return folder is not None and (folder / MARKER).is_file()


def _from_copy_or_gguf(auto_class: Any, gguf: Path) -> Any:
    """``auto_class.from_pretrained`` on the converted copy of ``gguf`` when there is a
    readable one, else on the GGUF file itself."""
    folder = converted_folder(gguf)
    if _ready(folder):
        try:
            return auto_class.from_pretrained(str(folder))
        except Exception:  # noqa: BLE001 (a damaged copy: read the GGUF file itself)
            pass
    return auto_class.from_pretrained(str(gguf.parent), gguf_file=gguf.name)


def load_gguf_config(gguf: Path) -> Any:
    """The model config of ``gguf`` without its weights (from the converted copy when there
    is one)."""
    from transformers import AutoConfig

    return _from_copy_or_gguf(AutoConfig, gguf)


def load_gguf_tokenizer(gguf: Path) -> Any:
    """The tokenizer of ``gguf`` (from the converted copy when there is one)."""
    from transformers import AutoTokenizer

    return _from_copy_or_gguf(AutoTokenizer, gguf)


def load_gguf_model(gguf: Path, attn_implementation: str = "sdpa") -> Tuple[Any, Any]:
    """``(model, tokenizer)`` of ``gguf`` in float32 (not yet moved or put in eval mode)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = converted_folder(gguf)
    if _ready(folder):
        try:
            model = AutoModelForCausalLM.from_pretrained(
                str(folder), attn_implementation=attn_implementation)
            return model, AutoTokenizer.from_pretrained(str(folder))
        except Exception:  # noqa: BLE001 (a damaged copy, whatever the reader raises: removed, converted again below)
            shutil.rmtree(folder, ignore_errors=True)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                 attn_implementation=attn_implementation)
    if folder is not None:
        _write_copy(folder, model, tokenizer)
    return model, tokenizer


def _write_copy(folder: Path, model: Any, tokenizer: Any) -> None:
    from safetensors.torch import save_model

    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    except OSError:
        return
    try:
        config = model.config.__class__.from_dict(model.config.to_dict())
        if hasattr(config, "quantization_config"):  # the copy is plain float32
            del config.quantization_config
        config.save_pretrained(str(tmp))
        save_model(model, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        tokenizer.save_pretrained(str(tmp))
        (tmp / MARKER).write_text("converted from GGUF by sah\n")
        os.rename(tmp, folder)  # whole or not at all; a racing process may have won
    except (OSError, ValueError, TypeError, RuntimeError):
        pass
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
