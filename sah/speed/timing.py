"""Time one chain's whole ``ResearchAttention.custom_attention`` call against dense attention.

The call is what a model makes at a decoding step: ``q`` query rows (1 by default) at the
end of ``n`` keys, ``h`` query heads sharing ``hk`` KV heads (GQA). Dense attention is
``torch.nn.functional.scaled_dot_product_attention`` on the same tensors (``enable_gqa``
when ``hk < h``; the lower-right causal mask when ``q > 1``). The two are timed
interleaved (chain, dense, chain, dense, ...), so a busy machine slows both alike, after
one warm-up call of each; the figures are the medians and the ratio is the chain's median
over the dense median.

Decoder-style: the chain's ``sparse_meta_data`` is one dict kept across the calls, as a
decoding loop passes it, so MagicPig's key codes and Quest's page bounds computed by the
warm-up call are reused by every timed call (the timed call is the warm one).

The tensors: :func:`decode_tensors` makes a structured synthetic decode step
(:func:`sah.recording.synthetic.make_synthetic_recording`: attention sinks, recency, heavy
hitters, so top-k and top-p find what they find in a model); :func:`recorded_tensors` takes
a recorded layer's last query and the keys it sees.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import torch

from sah.attention import ResearchAttention

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class DecodeShape:
    """A decoding call's shape: ``keys`` in the KV cache, ``heads`` query heads sharing
    ``kv_heads`` KV heads, ``head_dim``, ``queries`` query rows at the end of the keys."""

    keys: int
    heads: int
    kv_heads: int
    head_dim: int
    queries: int = 1

    def check(self, names: Optional[Dict[str, str]] = None) -> None:
        """Raise ``ValueError`` naming the field (``names`` maps a field to its flag, e.g.
        ``{"keys": "--keys"}``), the value and the fix."""
        name = {f: (names or {}).get(f, f) for f in ("keys", "heads", "kv_heads", "head_dim",
                                                      "queries")}
        for f in name:
            value = getattr(self, f)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name[f]} {value}: expected an int >= 1")
        if self.heads % self.kv_heads:
            raise ValueError(f"{name['heads']} {self.heads} is not a multiple of "
                             f"{name['kv_heads']} {self.kv_heads}: each KV head serves the same "
                             f"number of query heads (GQA); give KV heads dividing the heads")
        if self.queries > self.keys:
            raise ValueError(f"{name['queries']} {self.queries} exceeds {name['keys']} "
                             f"{self.keys}: the query rows sit at the end of the keys")

    def to_dict(self) -> Dict[str, int]:
        return {"keys": self.keys, "heads": self.heads, "kv_heads": self.kv_heads,
                "head_dim": self.head_dim, "queries": self.queries}


@dataclass
class DecodeTensors:
    """One call's inputs: ``queries`` ``(1, h, q, d)``, ``keys``/``values`` ``(1, hk, n, d)``,
    the softmax ``scaling`` and the layer id the chain runs as."""

    queries: torch.Tensor
    keys: torch.Tensor
    values: torch.Tensor
    scaling: float
    layer: int = 0

    @property
    def shape(self) -> DecodeShape:
        _, h, q, d = self.queries.shape
        return DecodeShape(int(self.keys.shape[2]), int(h), int(self.keys.shape[1]), int(d), int(q))


def decode_tensors(shape: DecodeShape, dtype: torch.dtype = torch.float32,
                   device: str = "cpu", seed: int = 0, layer: int = 0) -> DecodeTensors:
    """A structured synthetic decoding call of ``shape`` (the last ``queries`` positions of
    ``keys``); plain normal tensors when the shape is too small for the structure (head dim
    below 8 or fewer than 12 keys)."""
    shape.check()
    n, q = shape.keys, shape.queries
    if shape.head_dim >= 8 and n >= 12:
        from sah.recording.synthetic import make_synthetic_recording
        rec = make_synthetic_recording(num_layers=1, num_heads=shape.heads,
                                       num_kv_heads=shape.kv_heads, head_dim=shape.head_dim,
                                       num_keys=n, num_queries=q, seed=seed, dtype=torch.float32,
                                       query_fraction=q / n)
        lr = rec.layers[0]
        tensors = (lr.queries, lr.keys, lr.values)
        scaling = float(rec.scaling)
    else:
        g = torch.Generator().manual_seed(seed)
        tensors = (torch.randn(1, shape.heads, q, shape.head_dim, generator=g),
                   torch.randn(1, shape.kv_heads, n, shape.head_dim, generator=g),
                   torch.randn(1, shape.kv_heads, n, shape.head_dim, generator=g))
        scaling = shape.head_dim ** -0.5
    qt, kt, vt = (t.to(device=device, dtype=dtype).contiguous() for t in tensors)
    return DecodeTensors(qt, kt, vt, scaling, layer)


def recorded_tensors(recording: Any, index: int, dtype: torch.dtype = torch.float32,
                     device: str = "cpu") -> DecodeTensors:
    """The decoding step of a recorded layer's last query: that query (at position ``p``)
    and the ``p + 1`` keys and values it sees."""
    lr = recording.layers[index]
    p = int(recording.query_positions[-1])
    q = lr.queries[:1, :, -1:]
    k, v = lr.keys[:1, :, :p + 1], lr.values[:1, :, :p + 1]
    qt, kt, vt = (t.to(device=device, dtype=dtype).contiguous() for t in (q, k, v))
    return DecodeTensors(qt, kt, vt, float(recording.scaling), int(lr.layer))


@dataclass
class Timing:
    """Medians of the interleaved loop, in milliseconds, and every sample."""

    ms: float
    dense_ms: float
    repeats: int
    chain_samples: List[float] = field(default_factory=list)
    dense_samples: List[float] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        return self.ms / self.dense_ms if self.dense_ms > 0 else float("inf")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def dense_call(t: DecodeTensors):
    """A no-argument function: dense SDPA on ``t`` (GQA, lower-right causal for ``q > 1``)."""
    _, h, q, _ = t.queries.shape
    n = t.keys.shape[2]
    mask = None
    if q > 1:
        from torch.nn.attention.bias import causal_lower_right
        mask = causal_lower_right(q, n)
    gqa = t.keys.shape[1] != h
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def call():
        return sdpa(t.queries, t.keys, t.values, attn_mask=mask, scale=t.scaling, enable_gqa=gqa)
    return call


def chain_call(attention: ResearchAttention, t: DecodeTensors):
    """A no-argument function: the chain's whole ``custom_attention`` call on ``t``, its
    ``sparse_meta_data`` kept from one call to the next (decoder-style)."""
    kept: Dict[Any, Any] = {}

    def call():
        return attention.custom_attention(None, t.queries, t.keys, t.values, None, t.scaling,
                                          0.0, kept, layer_idx=t.layer)
    call.kept = kept  # type: ignore[attr-defined]  (the decoder's state, for inspection)
    return call


def time_interleaved(first, second, repeats: int, device: torch.device) -> Timing:
    """Medians of ``first`` and ``second`` timed alternately ``repeats`` times each, after one
    warm-up call of each (``first`` is the chain, ``second`` dense attention)."""
    if repeats < 1:
        raise ValueError(f"repeats {repeats}: expected an int >= 1")
    a_times, b_times = [], []
    with torch.inference_mode():
        first()
        second()
        _sync(device)
        for _ in range(repeats):
            for fn, out in ((first, a_times), (second, b_times)):
                start = time.perf_counter()
                fn()
                _sync(device)
                out.append(1000.0 * (time.perf_counter() - start))
    return Timing(statistics.median(a_times), statistics.median(b_times), repeats, a_times, b_times)


def time_chain(attention: ResearchAttention, tensors: DecodeTensors, repeats: int = 9) -> Timing:
    """The chain's warm ``custom_attention`` call against dense SDPA on ``tensors``."""
    return time_interleaved(chain_call(attention, tensors), dense_call(tensors), repeats,
                            tensors.queries.device)
