"""The recording format: one safetensors file, tensors plus JSON metadata, never pickle.

Tensors per recorded layer ``L``: ``layer.L.queries`` ``(b, h, q, d)`` at the recorded
query positions, ``layer.L.keys`` and ``layer.L.values`` ``(b, hk, n, d)`` (post-RoPE, as
attention sees them), and ``query_positions`` ``(q,)`` int64 absolute key positions
(query ``i`` may see keys ``[0, query_positions[i]]``). The safetensors header's
``__metadata__`` holds one key, ``sah``, a JSON document (model id, layers, heads, ...).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Union

import torch

from sah.context import AttentionContext


class RecordingError(ValueError):
    """A recording file is missing, corrupt or inconsistent. The message says which and why."""


@dataclass
class LayerRecording:
    layer: int
    queries: torch.Tensor  # (b, h, q, d)
    keys: torch.Tensor     # (b, hk, n, d)
    values: torch.Tensor   # (b, hk, n, d)


@dataclass
class Recording:
    layers: List[LayerRecording]
    query_positions: torch.Tensor  # (q,) int64
    scaling: float
    metadata: Dict[str, Any] = field(default_factory=dict)

    @property
    def num_heads(self) -> int:
        return int(self.layers[0].queries.shape[1])

    @property
    def num_kv_heads(self) -> int:
        return int(self.layers[0].keys.shape[1])

    @property
    def head_dim(self) -> int:
        return int(self.layers[0].queries.shape[-1])

    @property
    def num_keys(self) -> int:
        return int(self.layers[0].keys.shape[2])

    @property
    def num_queries(self) -> int:
        return int(self.layers[0].queries.shape[2])

    @property
    def layer_ids(self) -> List[int]:
        return [lr.layer for lr in self.layers]

    def context(self, index: int, device: Union[str, torch.device, None] = None) -> AttentionContext:
        """The :class:`AttentionContext` of the ``index``-th recorded layer (float32)."""
        lr = self.layers[index]
        dev = device if device is not None else lr.keys.device
        return AttentionContext(lr.queries.to(dev, torch.float32), lr.keys.to(dev, torch.float32),
                                lr.values.to(dev, torch.float32), scaling=self.scaling,
                                query_positions=self.query_positions.to(dev))


def save_recording(recording: Recording, path: Union[str, Path]) -> Path:
    raise NotImplementedError("written in the recordings issue")


def load_recording(path: Union[str, Path]) -> Recording:
    raise NotImplementedError("written in the recordings issue")
