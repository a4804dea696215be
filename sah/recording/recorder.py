"""Record post-RoPE queries, keys and values from a Hugging Face causal LM.

A recording attention function is registered with transformers' ``AttentionInterface``
(and the matching mask function with ``AttentionMaskInterface``) under the name
``sah_record_<base>``; the model is switched to it for one forward pass. The function sees
exactly what the model's attention sees (queries and keys after RoPE, keys/values of the KV
heads before GQA expansion, the scaling), keeps the queries at the chosen positions and the
keys/values up to the last chosen position for the chosen layers (so memory is bounded by
what is kept), then delegates to the real ``sdpa`` or ``eager`` attention, so the forward
pass is unchanged. The pass stops right after the last chosen layer.

Queries are decode-style: one teacher-forced pass over ``n`` tokens; the query at position
``t`` sees keys ``[0, t]``, exactly as a decoder with a dense KV cache at step ``t``.
"""

from __future__ import annotations

import hashlib
import sys
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch

from sah.recording.format import LayerRecording, Recording, RecordingError, STORAGE_DTYPES
from sah.recording.positions import decode_query_positions


class _StopForward(Exception):
    """Raised inside the attention function once every chosen layer is recorded."""


def parse_layers(spec: Union[str, Sequence[int], None], num_layers: int) -> List[int]:
    """``"all"``/None -> every layer; ``"0,5,10"`` or ``"0-3,8"`` or a list -> those layers."""
    if spec is None or (isinstance(spec, str) and spec.strip().lower() == "all"):
        return list(range(num_layers))
    if isinstance(spec, str):
        layers: List[int] = []
        for part in spec.split(","):
            part = part.strip()
            try:
                if "-" in part:
                    lo, hi = (int(x) for x in part.split("-", 1))
                    layers.extend(range(lo, hi + 1))
                else:
                    layers.append(int(part))
            except ValueError:
                raise ValueError(f"--layers: cannot read {part!r}; use e.g. 0,5,10 or 0-3 or all") \
                    from None
    else:
        layers = [int(x) for x in spec]
    bad = [i for i in layers if not 0 <= i < num_layers]
    if bad or not layers:
        raise ValueError(f"--layers: {bad or 'none given'} outside the model's layers "
                         f"0..{num_layers - 1}")
    return sorted(set(layers))


class _Capture:
    """The state the registered attention function writes into during one forward pass."""

    def __init__(self, layers: Iterable[int], positions: torch.Tensor, dtype: torch.dtype,
                 store_device: Union[str, torch.device], progress: Optional[Any]) -> None:
        self.layers = set(layers)
        self.last_layer = max(self.layers)
        self.positions = positions
        self.num_keys = int(positions[-1]) + 1
        self.dtype = dtype
        self.store_device = torch.device(store_device)
        self.progress = progress
        self.captured: Dict[int, LayerRecording] = {}
        self.scaling: Dict[int, float] = {}

    def record(self, module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
               value: torch.Tensor, scaling: Optional[float]) -> None:
        idx = getattr(module, "layer_idx", None)
        if idx is None:
            raise RecordingError(f"{type(module).__name__} has no layer_idx; this model's attention "
                                 f"modules cannot be told apart, so it cannot be recorded")
        idx = int(idx)
        if self.progress is not None:
            self.progress.update(1)
        if idx not in self.layers:
            return
        pos = self.positions.to(query.device)
        n = self.num_keys
        if key.shape[2] < n:
            raise RecordingError(f"layer {idx} attention saw {key.shape[2]} keys; need {n}")
        q = query.index_select(2, pos)
        self.captured[idx] = LayerRecording(
            idx, q.detach().to(self.store_device, self.dtype),
            key[:, :, :n].detach().to(self.store_device, self.dtype),
            value[:, :, :n].detach().to(self.store_device, self.dtype))
        self.scaling[idx] = float(scaling if scaling is not None else query.shape[-1] ** -0.5)


_ACTIVE: Dict[str, _Capture] = {}


def _register(base: str) -> str:
    """Register ``sah_record_<base>`` (attention + mask functions) once; return its name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    name = f"sah_record_{base}"
    if name in ALL_ATTENTION_FUNCTIONS:
        return name
    if base != "eager" and base not in ALL_ATTENTION_FUNCTIONS:
        raise ValueError(f"attention implementation {base!r} cannot be recorded; use sdpa or eager")

    def delegate_for(module: torch.nn.Module) -> Callable:
        if base != "eager":
            return ALL_ATTENTION_FUNCTIONS[base]
        # eager attention is each model's own function, defined next to its attention module
        own = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
        if own is None:
            raise RecordingError(f"{type(module).__module__} defines no eager_attention_forward; "
                                 f"record with sdpa attention")
        return own

    def recording_attention(module, query, key, value, attention_mask, scaling=None,
                            dropout=0.0, **kwargs):
        capture = _ACTIVE.get(name)
        if capture is not None:
            capture.record(module, query, key, value, scaling)
        out = delegate_for(module)(module, query, key, value, attention_mask, scaling=scaling,
                                   dropout=dropout, **kwargs)
        if capture is not None and getattr(module, "layer_idx", -1) == capture.last_layer:
            raise _StopForward()
        return out

    AttentionInterface.register(name, recording_attention)
    AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[base])
    return name


def model_shape(model: torch.nn.Module) -> Tuple[int, int, int, int]:
    """``(num_layers, num_heads, num_kv_heads, head_dim)`` from a causal LM's config."""
    cfg = model.config
    cfg = getattr(cfg, "text_config", None) or cfg
    heads = int(cfg.num_attention_heads)
    kv = int(getattr(cfg, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // heads)
    return int(cfg.num_hidden_layers), heads, kv, head_dim


@torch.no_grad()
def record_attention(model: torch.nn.Module, input_ids: torch.Tensor,
                     layers: Union[str, Sequence[int], None] = None,
                     num_queries: int = 32,
                     query_positions: Optional[torch.Tensor] = None,
                     query_fraction: float = 0.25,
                     dtype: Union[str, torch.dtype] = "float16",
                     store_device: Union[str, torch.device] = "cpu",
                     progress: bool = True,
                     metadata: Optional[Dict[str, Any]] = None) -> Recording:
    """Run ``model`` once over ``input_ids`` ``(1, n)`` and record the chosen layers.

    ``query_positions`` (strictly increasing, within ``[0, n)``) default to
    :func:`decode_query_positions` ``(n, num_queries, query_fraction)``. Tensors are kept
    on ``store_device`` in ``dtype``; ``metadata`` is merged into the recording's.
    """
    if isinstance(dtype, str):
        if dtype not in STORAGE_DTYPES:
            raise ValueError(f"--dtype {dtype!r} is not one of {sorted(STORAGE_DTYPES)}")
        dtype = STORAGE_DTYPES[dtype]
    if input_ids.dim() == 1:
        input_ids = input_ids.unsqueeze(0)
    n = int(input_ids.shape[1])
    num_layers, heads, kv_heads, head_dim = model_shape(model)
    chosen = parse_layers(layers, num_layers)
    if query_positions is None:
        query_positions = decode_query_positions(n, num_queries, query_fraction)
    query_positions = torch.as_tensor(query_positions, dtype=torch.int64).cpu()
    if query_positions.numel() == 0 or int(query_positions.max()) >= n or \
            int(query_positions.min()) < 0:
        raise ValueError(f"query positions must lie in [0, {n - 1}]")
    base = model.config._attn_implementation or "sdpa"
    base = base if base in ("sdpa", "eager") else "sdpa"
    name = _register(base)
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=max(chosen) + 1, desc=f"recording {n} tokens", unit="layer")
    capture = _Capture(chosen, query_positions, dtype, store_device, bar)
    device = next(model.parameters()).device
    previous = model.config._attn_implementation
    start = time.perf_counter()
    model.set_attn_implementation(name)
    _ACTIVE[name] = capture
    try:
        model(input_ids=input_ids.to(device), use_cache=False)
    except _StopForward:
        pass
    finally:
        _ACTIVE.pop(name, None)
        model.set_attn_implementation(previous)
        if bar is not None:
            bar.close()
    missing = [i for i in chosen if i not in capture.captured]
    if missing:
        raise RecordingError(f"layers {missing} were never called during the forward pass")
    scalings = {capture.scaling[i] for i in chosen}
    if len(scalings) != 1:
        raise RecordingError(f"layers use different attention scalings {sorted(scalings)}; "
                             f"record them separately")
    meta = {
        "model_id": str(getattr(model.config, "_name_or_path", "") or type(model).__name__),
        "model_class": type(model).__name__,
        "num_tokens": n,
        "attn_implementation": base,
        "record_seconds": round(time.perf_counter() - start, 3),
        "device": str(device),
        "input_ids_sha256": hashlib.sha256(
            input_ids.cpu().to(torch.int64).numpy().tobytes()).hexdigest(),
    }
    meta.update(metadata or {})
    rec = Recording([capture.captured[i] for i in chosen], query_positions, scalings.pop(), meta)
    rec.validate("recorded attention")
    return rec
