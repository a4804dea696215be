"""Synthetic recordings with the structure real attention has, at any size, seeded.

Everything below is stated in *logits* ``s * q . k`` (``s`` = ``1/sqrt(head_dim)``), with
``L = log(num_keys)`` so the share of softmax mass each structure takes stays about the
same at any size. Each head's offsets are drawn once per layer from the ranges given.

* **Attention sinks**: keys ``0 .. num_sinks-1`` get a bonus ``L + o_sink`` with
  ``o_sink ~ U(sink_offset)`` per query head. With all defaults the sinks take about
  2%-45% of a head's mass, the last 128 keys 25%-85%, heavy hitters 5%-30% and the top 5%
  of keys about 90%. Sink values are scaled by ``sink_value_scale`` (small, as in real
  models).
* **Recency** (RoPE-like, per query head): ``F`` rotary pairs with frequencies
  ``w_f`` log-spaced in ``[pi / (8 * recency_window), pi / recency_window]``; key ``j`` holds
  ``(cos w_f j, sin w_f j) / sqrt(F)``, so the logit bonus is
  ``R/F * sum_f cos(w_f (t - j))`` with ``R = L + o_recency``, ``o_recency ~ U(recency_offset)``:
  ``R`` at distance 0, decaying over about ``recency_window`` keys, then zero-mean
  oscillation (std about ``R / sqrt(2F)``), as RoPE's long-range decay.
* **Heavy hitters**: ``num_heavy_hitters`` random key positions per KV head (after the
  sinks) get a bonus ``w * (L + o_heavy)``, ``o_heavy ~ U(heavy_offset)`` per query head and
  ``w ~ U(0.5, 1)`` per query, so their importance varies from step to step.
* **Bulk**: every logit also gets content noise ``N(0, noise_std^2)`` from random
  query/key content dimensions; values are ``N(0, 1)``.
* **GQA**: ``num_heads / num_kv_heads`` query heads share each KV head's keys, sinks and
  heavy hitters, but each query head has its own offsets.

Head dims: 0 = sink channel, 1 = heavy-hitter channel, ``2 .. 2+2F`` rotary recency pairs
with ``F = (head_dim - 2) // 4``, the rest content. Queries sit at decode-style positions
spread over the final ``query_fraction`` of the keys
(:func:`sah.recording.positions.decode_query_positions`). Keys and values are generated
``BLOCK_KEYS`` at a time (each block seeded from ``seed``, the layer and the block index)
straight into the output (stored dtype), so peak extra memory is a few blocks: 131072 keys with 2 KV heads of dim 64 in float16 is 32 MiB per tensor.
"""

from __future__ import annotations

import math
from typing import Tuple, Union

import torch

from sah.recording.format import LayerRecording, Recording
from sah.recording.positions import decode_query_positions

BLOCK_KEYS = 16384  # keys generated (and seeded) per block: bounds the extra memory


def _uniform(gen: torch.Generator, shape, bounds: Tuple[float, float]) -> torch.Tensor:
    low, high = bounds
    return low + (high - low) * torch.rand(shape, generator=gen, dtype=torch.float64)


def make_synthetic_recording(num_layers: int = 2, num_heads: int = 8, num_kv_heads: int = 2,
                             head_dim: int = 64, num_keys: int = 4096, num_queries: int = 16,
                             seed: int = 0, dtype: Union[str, torch.dtype] = torch.float16,
                             batch_size: int = 1, num_sinks: int = 4,
                             num_heavy_hitters: int = 8, recency_window: int = 64,
                             sink_offset: Tuple[float, float] = (-3.0, 0.0),
                             recency_offset: Tuple[float, float] = (-3.0, 0.0),
                             heavy_offset: Tuple[float, float] = (-2.0, 0.5),
                             noise_std: float = 1.0, sink_value_scale: float = 0.1,
                             query_fraction: float = 0.25) -> Recording:
    """A seeded synthetic :class:`Recording` (structure in the module docstring)."""
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    if num_kv_heads < 1 or num_heads % num_kv_heads:
        raise ValueError(f"num_heads ({num_heads}) must be a multiple of num_kv_heads "
                         f"({num_kv_heads})")
    if head_dim < 8:
        raise ValueError(f"head_dim must be >= 8 (sink, heavy, rotary and content dims); "
                         f"got {head_dim}")
    if num_layers < 1 or batch_size < 1 or num_keys < 1:
        raise ValueError("num_layers, batch_size and num_keys must be >= 1")
    if num_sinks + num_heavy_hitters > num_keys:
        raise ValueError(f"num_sinks + num_heavy_hitters ({num_sinks + num_heavy_hitters}) "
                         f"exceeds num_keys ({num_keys})")
    positions = decode_query_positions(num_keys, num_queries, query_fraction)
    gen = torch.Generator().manual_seed(int(seed))
    b, h, hk, n, d, q = batch_size, num_heads, num_kv_heads, num_keys, head_dim, num_queries
    g = h // hk
    pairs = (d - 2) // 4
    content = d - 2 - 2 * pairs
    s = 1.0 / math.sqrt(d)
    log_n = math.log(n)
    freqs = torch.logspace(math.log10(math.pi / (8 * recency_window)),
                           math.log10(math.pi / recency_window), pairs, dtype=torch.float64)

    layers = []
    for layer in range(num_layers):
        sink_bonus = log_n + _uniform(gen, (h,), sink_offset)
        rec_bonus = log_n + _uniform(gen, (h,), recency_offset)
        heavy_bonus = log_n + _uniform(gen, (h,), heavy_offset)
        heavy_weight = _uniform(gen, (b, h, q), (0.5, 1.0))
        heavy_pos = torch.stack([num_sinks + torch.randperm(n - num_sinks, generator=gen)
                                 [:num_heavy_hitters] for _ in range(b * hk)]).view(b, hk, -1)

        # queries (b, h, q, d), built in float64 then stored
        queries = torch.zeros(b, h, q, d, dtype=torch.float64)
        queries[..., 0] = sink_bonus.view(1, h, 1) / s
        queries[..., 1] = heavy_bonus.view(1, h, 1) * heavy_weight / s
        angle_q = positions.double().view(q, 1) * freqs.view(1, pairs)  # (q, F)
        rot_scale = (rec_bonus.view(1, h, 1, 1) / math.sqrt(pairs)) / s
        queries[..., 2:2 + 2 * pairs:2] = torch.cos(angle_q).view(1, 1, q, pairs) * rot_scale
        queries[..., 3:3 + 2 * pairs:2] = torch.sin(angle_q).view(1, 1, q, pairs) * rot_scale
        queries[..., 2 + 2 * pairs:] = (torch.randn(b, h, q, content, generator=gen,
                                                    dtype=torch.float64)
                                        * (noise_std / (s * math.sqrt(content))))

        keys = torch.empty(b, hk, n, d, dtype=dtype)
        values = torch.empty(b, hk, n, d, dtype=dtype)
        for block, start in enumerate(range(0, n, BLOCK_KEYS)):
            # each block of keys has its own seed, so generation order never matters
            block_gen = torch.Generator().manual_seed(
                int(seed) * 1_000_003 + layer * 10_007 + block)
            stop = min(n, start + BLOCK_KEYS)
            c = stop - start
            idx = torch.arange(start, stop, dtype=torch.float64)
            chunk = torch.zeros(b, hk, c, d, dtype=torch.float32)
            chunk[..., 0] = (idx < num_sinks).float().view(1, 1, c)
            angle_k = idx.view(c, 1) * freqs.view(1, pairs)
            chunk[..., 2:2 + 2 * pairs:2] = (torch.cos(angle_k) / math.sqrt(pairs)).float()
            chunk[..., 3:3 + 2 * pairs:2] = (torch.sin(angle_k) / math.sqrt(pairs)).float()
            chunk[..., 2 + 2 * pairs:] = torch.randn(b, hk, c, content, generator=block_gen)
            keys[:, :, start:stop] = chunk.to(dtype)
            v = torch.randn(b, hk, c, d, generator=block_gen)
            if start < num_sinks:
                v[:, :, : num_sinks - start] *= sink_value_scale
            values[:, :, start:stop] = v.to(dtype)
        # heavy-hitter channel: 1 at each KV head's heavy positions
        keys[..., 1].scatter_(-1, heavy_pos, torch.ones_like(heavy_pos, dtype=dtype))
        layers.append(LayerRecording(layer, queries.to(dtype), keys, values))

    metadata = {
        "model_id": "synthetic",
        "text_source": "synthetic (no text)",
        "num_tokens": n,
        "generator": {
            "name": "sah.recording.synthetic.make_synthetic_recording", "seed": int(seed),
            "num_sinks": num_sinks, "num_heavy_hitters": num_heavy_hitters,
            "recency_window": recency_window, "sink_offset": list(sink_offset),
            "recency_offset": list(recency_offset), "heavy_offset": list(heavy_offset),
            "noise_std": noise_std, "sink_value_scale": sink_value_scale,
            "query_fraction": query_fraction,
        },
    }
    return Recording(layers=layers, query_positions=positions, scaling=s, metadata=metadata)
