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

**Chunked prefill** (texts longer than ``chunk_size`` tokens, default
:data:`DEFAULT_CHUNK_TOKENS`): the text goes through the model in chunks of ``chunk_size``
tokens with a KV cache (transformers' ``DynamicCache``), as a serving engine's chunked
prefill does. The cache is a full one (``DynamicCache()`` without the model's config) in
every model: a sliding-window cache would hand a window layer only its last keys, and the
recording holds every key (the layer's window is applied when it is scored; the model
masks it in the forward pass either way).
A chunk's attention call sees the chunk's queries and every key so far, so
each chosen query is taken from the chunk that holds it, and the keys/values of the chosen
layers are taken once, from the last chunk's call, which sees all of them. Attention
scores, the mask and the MLP activations then scale with ``chunk_size x n`` and
``chunk_size`` instead of ``n x n`` and ``n``; what stays is linear in ``n`` (the cache and
the recorded tensors). Layers after the last chosen one are never run. Texts of at most
``chunk_size`` tokens take the single-pass path unchanged.

Each recorded layer's attention type (full, sliding window, chunked; :mod:`sah.layer_types`)
is read from the model's config and stored as ``layer_types``; a model with a layer type
sah does not know is refused before its forward pass.
"""

from __future__ import annotations

import hashlib
import sys
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch

from sah.layer_types import layer_types_from_config, layer_types_metadata
from sah.recording.format import LayerRecording, Recording, RecordingError, STORAGE_DTYPES
from sah.recording.positions import decode_query_positions

#: Tokens per prefill chunk; texts of at most this many tokens are recorded in one pass.
DEFAULT_CHUNK_TOKENS = 2048


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
    """The state the registered attention function writes into during the forward pass(es).

    A call's queries are the tokens ``[offset, offset + q_len)`` with ``offset = keys -
    q_len`` (its keys are the cache so far plus the chunk), so the chosen queries of a chunk
    are picked by position; keys/values are taken from the call that sees all ``num_keys``.
    """

    def __init__(self, layers: Iterable[int], positions: torch.Tensor, dtype: torch.dtype,
                 store_device: Union[str, torch.device], progress: Optional[Any]) -> None:
        self.layers = set(layers)
        self.last_layer = max(self.layers)
        self.positions = positions
        self.num_keys = int(positions[-1]) + 1
        self.dtype = dtype
        self.store_device = torch.device(store_device)
        self.progress = progress
        self.queries: Dict[int, torch.Tensor] = {}
        self.queries_seen: Dict[int, torch.Tensor] = {}
        self.keys_values: Dict[int, Tuple[torch.Tensor, torch.Tensor]] = {}
        self.scaling: Dict[int, float] = {}
        #: called with a layer id once that layer's attention has run for the last time
        self.release_layer: Optional[Callable[[int], None]] = None

    def done(self, module: torch.nn.Module) -> None:
        """The attention call of ``module`` has returned."""
        if self.release_layer is not None:
            self.release_layer(int(getattr(module, "layer_idx", -1)))

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
        q_len, k_len = int(query.shape[2]), int(key.shape[2])
        offset = k_len - q_len  # the call's queries are tokens [offset, k_len)
        if idx not in self.queries:
            b, h, _, d = query.shape
            self.queries[idx] = torch.zeros(b, h, len(self.positions), d, dtype=self.dtype,
                                            device=self.store_device)
            self.queries_seen[idx] = torch.zeros(len(self.positions), dtype=torch.bool)
        inside = (self.positions >= offset) & (self.positions < k_len)
        if bool(inside.any()):
            rows = (self.positions[inside] - offset).to(query.device)
            self.queries[idx][:, :, inside] = query.index_select(2, rows).detach().to(
                self.store_device, self.dtype)
            self.queries_seen[idx] |= inside
        if k_len >= self.num_keys and idx not in self.keys_values:
            n = self.num_keys
            self.keys_values[idx] = (key[:, :, :n].detach().to(self.store_device, self.dtype),
                                     value[:, :, :n].detach().to(self.store_device, self.dtype))
        self.scaling.setdefault(idx, float(scaling if scaling is not None
                                           else query.shape[-1] ** -0.5))

    def layer(self, idx: int) -> LayerRecording:
        """The recorded layer ``idx``; raises if a query or the keys were never seen."""
        if idx not in self.keys_values or not bool(self.queries_seen[idx].all()):
            raise RecordingError(f"layer {idx}: the forward pass never showed its attention all "
                                 f"{self.num_keys} keys and every chosen query")
        keys, values = self.keys_values[idx]
        return LayerRecording(idx, self.queries[idx], keys, values)


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
        if capture is not None:
            capture.done(module)
            if getattr(module, "layer_idx", -1) == capture.last_layer:
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


def _cache_argument(model: torch.nn.Module) -> str:
    """The forward's name for the KV cache (``cache`` since transformers 5.x, before that
    ``past_key_values``)."""
    import inspect

    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _release_cache_layer(cache: Any, idx: int) -> None:
    """Free layer ``idx`` of a transformers cache (its keys/values are not read again)."""
    layers = getattr(cache, "layers", None)
    if isinstance(layers, list) and 0 <= idx < len(layers):
        layer = layers[idx]
        for name in ("keys", "values"):
            if isinstance(getattr(layer, name, None), torch.Tensor):
                setattr(layer, name, torch.empty(0))


def _run_forward(model: torch.nn.Module, input_ids: torch.Tensor, chunk_size: int,
                 capture: _Capture) -> int:
    """One forward over ``input_ids``, or chunks of ``chunk_size`` with a KV cache; each
    pass stops after the last chosen layer (:class:`_StopForward`). In the last chunk a
    layer's cache is freed as soon as its attention has run (nothing reads it again), so
    the cache and the recorded keys/values are not all held at once. Returns the chunk
    count."""
    n = int(input_ids.shape[1])
    if n <= chunk_size:
        try:
            model(input_ids=input_ids, use_cache=False)
        except _StopForward:
            pass
        return 1
    from transformers import DynamicCache

    cache = DynamicCache()  # full layers: never the model's sliding-window layers
    name = _cache_argument(model)
    chunks = 0
    for begin in range(0, n, chunk_size):
        if begin + chunk_size >= n:
            capture.release_layer = lambda idx: _release_cache_layer(cache, idx)
        try:
            model(input_ids=input_ids[:, begin:begin + chunk_size], use_cache=True,
                  **{name: cache})
        except _StopForward:
            pass
        chunks += 1
    capture.release_layer = None
    del cache
    return chunks


@torch.no_grad()
def record_attention(model: torch.nn.Module, input_ids: torch.Tensor,
                     layers: Union[str, Sequence[int], None] = None,
                     num_queries: int = 32,
                     query_positions: Optional[torch.Tensor] = None,
                     query_fraction: float = 0.25,
                     dtype: Union[str, torch.dtype] = "float16",
                     store_device: Union[str, torch.device] = "cpu",
                     progress: bool = True,
                     metadata: Optional[Dict[str, Any]] = None,
                     chunk_size: Optional[int] = None) -> Recording:
    """Run ``model`` over ``input_ids`` ``(1, n)`` and record the chosen layers.

    ``query_positions`` (strictly increasing, within ``[0, n)``) default to
    :func:`decode_query_positions` ``(n, num_queries, query_fraction)``. Tensors are kept
    on ``store_device`` in ``dtype``; ``metadata`` is merged into the recording's.
    ``chunk_size`` (default :data:`DEFAULT_CHUNK_TOKENS`): texts longer than this are run
    as a chunked prefill with a KV cache (bounded memory; see the module docstring).
    Tokens after the last query position are not run (they cannot change what it sees).
    """
    if isinstance(dtype, str):
        if dtype not in STORAGE_DTYPES:
            raise ValueError(f"--dtype {dtype!r} is not one of {sorted(STORAGE_DTYPES)}")
        dtype = STORAGE_DTYPES[dtype]
    chunk_size = DEFAULT_CHUNK_TOKENS if chunk_size is None else chunk_size
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"--chunk-size: got {chunk_size!r}; give a token count >= 1 "
                         f"(default {DEFAULT_CHUNK_TOKENS})")
    if input_ids.dim() == 1:
        input_ids = input_ids.unsqueeze(0)
    n = int(input_ids.shape[1])
    num_layers, heads, kv_heads, head_dim = model_shape(model)
    chosen = parse_layers(layers, num_layers)
    types = layer_types_from_config(model.config)  # UnknownLayerType before any forward pass
    if query_positions is None:
        query_positions = decode_query_positions(n, num_queries, query_fraction)
    query_positions = torch.as_tensor(query_positions, dtype=torch.int64).cpu()
    if query_positions.dim() != 1 or query_positions.numel() == 0 or \
            int(query_positions.max()) >= n or int(query_positions.min()) < 0:
        raise ValueError(f"query positions must lie in [0, {n - 1}]")
    if query_positions.numel() > 1 and not bool((query_positions[1:] > query_positions[:-1]).all()):
        raise ValueError("query positions must be strictly increasing")
    base = model.config._attn_implementation or "sdpa"
    base = base if base in ("sdpa", "eager") else "sdpa"
    name = _register(base)
    run_ids = input_ids[:, :int(query_positions[-1]) + 1]
    num_chunks = -(-int(run_ids.shape[1]) // chunk_size)
    bar = None
    if progress:
        from tqdm.auto import tqdm
        what = f"recording {n} tokens" + (f" in {num_chunks} chunks" if num_chunks > 1 else "")
        bar = tqdm(total=num_chunks * (max(chosen) + 1), desc=what, unit="layer")
    capture = _Capture(chosen, query_positions, dtype, store_device, bar)
    device = next(model.parameters()).device
    previous = model.config._attn_implementation
    start = time.perf_counter()
    model.set_attn_implementation(name)
    _ACTIVE[name] = capture
    try:
        num_chunks = _run_forward(model, run_ids.to(device), chunk_size, capture)
    finally:
        _ACTIVE.pop(name, None)
        model.set_attn_implementation(previous)
        if bar is not None:
            bar.close()
    missing = [i for i in chosen if i not in capture.scaling]
    if missing:
        raise RecordingError(f"layers {missing} were never called during the forward pass")
    recorded = [capture.layer(i) for i in chosen]
    scalings = {capture.scaling[i] for i in chosen}
    if len(scalings) != 1:
        raise RecordingError(f"layers use different attention scalings {sorted(scalings)}; "
                             f"record them separately")
    meta = {
        "model_id": str(getattr(model.config, "_name_or_path", "") or type(model).__name__),
        "model_class": type(model).__name__,
        "num_tokens": n,
        "attn_implementation": base,
        "layer_types": layer_types_metadata({i: types[i] for i in chosen}),
        "prefill_chunk_tokens": min(chunk_size, int(run_ids.shape[1])),
        "prefill_chunks": num_chunks,
        "record_seconds": round(time.perf_counter() - start, 3),
        "device": str(device),
        "input_ids_sha256": hashlib.sha256(
            input_ids.cpu().to(torch.int64).numpy().tobytes()).hexdigest(),
    }
    meta.update(metadata or {})
    rec = Recording(recorded, query_positions, scalings.pop(), meta)
    rec.validate("recorded attention")
    return rec
