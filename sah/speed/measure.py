"""One chain config's speed figures: its masks' block densities and bytes ratio on a
recording (means over layers), and its measured latency against dense attention."""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Union

import torch

from sah.attention import ResearchAttention, ResearchAttentionConfig
from sah.evaluate import ContextCache, as_recording, layer_indices
from sah.speed.timing import DTYPES, DecodeShape, Timing, decode_tensors, recorded_tensors, time_chain
from sah.speed.traffic import BLOCKS, KV_BITS, mask_traffic

TRAFFIC_FIGURES = tuple(f"block_density_{b}" for b in BLOCKS) + ("bytes_ratio",)


def _mean(values: List[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(sum(finite) / len(finite)) if finite else math.nan


def traffic_figures(config: ResearchAttentionConfig, recording: object,
                    layers: Optional[Sequence[int]] = None, cache: Optional[ContextCache] = None,
                    kv_bits: int = KV_BITS) -> Dict[str, float]:
    """:data:`TRAFFIC_FIGURES` of ``config``'s masks on ``recording``'s layers (model layer
    ids ``layers``, default all), each the mean over the layers. ``recording``: a
    :class:`~sah.recording.format.Recording`, a file or an embedded recording name."""
    recording = as_recording(recording, "traffic_figures: recording")
    attention = ResearchAttention.create_from_config(config)
    cache = cache if cache is not None else ContextCache()
    per_layer: Dict[str, List[float]] = {k: [] for k in TRAFFIC_FIGURES}
    device = recording.layers[0].keys.device
    with torch.inference_mode():
        for index in layer_indices(recording, layers):
            layer = recording.layers[index].layer
            ctx = cache.get(recording, index, device)
            mask = attention.compute_mask(ctx, layer_idx=layer)
            for key, value in mask_traffic(attention, ctx, layer, mask, kv_bits).items():
                per_layer[key].append(value)
    return {k: _mean(v) for k, v in per_layer.items()}


def recording_shape(recording: object, keys: Optional[int] = None) -> DecodeShape:
    """The decode shape of a recording's model (its heads, KV heads and head dim) at
    ``keys`` keys (default: the keys its last query sees)."""
    n = keys if keys is not None else int(recording.query_positions[-1]) + 1
    return DecodeShape(n, recording.num_heads, recording.num_kv_heads, recording.head_dim)


def latency(config: ResearchAttentionConfig, recording: object, keys: Optional[int] = None,
            repeats: int = 5, device: str = "cpu", dtype: Union[str, torch.dtype] = "float32",
            index: Optional[int] = None) -> Timing:
    """``config``'s warm decoding call against dense SDPA at the recording's model shape:
    on the recorded layer ``index`` (default the middle one; its last query and the keys it
    sees) when ``keys`` is None, else on a structured synthetic call of ``keys`` keys."""
    recording = as_recording(recording, "latency: recording")
    dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
    index = len(recording.layers) // 2 if index is None else index
    layer = int(recording.layers[index].layer)
    if keys is None:
        tensors = recorded_tensors(recording, index, dtype, device)
    else:
        tensors = decode_tensors(recording_shape(recording, keys), dtype, device, layer=layer)
    return time_chain(ResearchAttention.create_from_config(config), tensors, repeats)
