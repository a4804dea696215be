"""AttentionContext: the tensors of one attention call and what every masker derives from them.

Everything here depends only on the inputs (never on a masker's parameters), so it is
computed once, lazily, and shared by every masker of a chain and by every trial that
scores a chain on the same recorded layer: the GQA-expanded float32 logits, the allowed
(causal and user) positions, the row maxima, the exponentiated scores and the dense
attention output.

Shapes: queries ``(b, h, q, d)``; keys and values ``(b, hk, n, d)`` with ``h % hk == 0``;
query ``i`` sits at absolute key position ``query_positions[i]`` (default ``n - q + i``)
and may see keys ``j <= query_positions[i]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Optional, Tuple

import torch


@dataclass(frozen=True)
class AttentionTensorDimensions:
    batch_size: int
    num_heads: int
    num_kv_heads: int
    seq_len_queries: int
    seq_len_keys: int
    head_dim: int

    @property
    def group_size(self) -> int:
        return self.num_heads // self.num_kv_heads

    @property
    def mask_shape(self) -> tuple:
        return (self.batch_size, self.num_heads, self.seq_len_queries, self.seq_len_keys)


def tensor_dimensions(keys: torch.Tensor, queries: torch.Tensor) -> AttentionTensorDimensions:
    """Check the shapes of an attention call and return its dimensions."""
    if queries.dim() != 4 or keys.dim() != 4:
        raise ValueError(
            f"queries must be (b, h, q, d) and keys (b, hk, n, d); got {tuple(queries.shape)} "
            f"and {tuple(keys.shape)}")
    b, h, q, d = queries.shape
    bk, hk, n, dk = keys.shape
    if bk != b:
        raise ValueError(f"batch sizes differ: queries {b}, keys {bk}")
    if dk != d:
        raise ValueError(f"head dims differ: queries {d}, keys {dk}")
    if hk == 0 or h % hk != 0:
        raise ValueError(
            f"query heads ({h}) must be a multiple of key/value heads ({hk}) for grouped-query "
            f"attention")
    return AttentionTensorDimensions(b, h, hk, q, n, d)


def default_query_positions(num_queries: int, num_keys: int,
                            device: Optional[torch.device] = None) -> torch.Tensor:
    """Decode-style positions of a plain call: query ``i`` sits at ``n - q + i``."""
    return torch.arange(num_keys - num_queries, num_keys, device=device)


#: Keys per block when converting half-precision keys/values to float32 on the fly.
KEY_BLOCK = 8192


class AttentionContext:
    """One attention call: inputs plus cached, parameter-free derived tensors."""

    def __init__(self, queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                 scaling: Optional[float] = None,
                 query_positions: Optional[torch.Tensor] = None,
                 attention_mask: Optional[torch.Tensor] = None) -> None:
        self.dims = tensor_dimensions(keys, queries)
        if values.shape[:3] != keys.shape[:3]:
            raise ValueError(f"values {tuple(values.shape)} do not match keys {tuple(keys.shape)}")
        self.queries = queries
        self.keys = keys
        self.values = values
        self.scaling = float(scaling) if scaling is not None else 1.0 / math.sqrt(self.dims.head_dim)
        d = self.dims
        if query_positions is None:
            query_positions = default_query_positions(d.seq_len_queries, d.seq_len_keys, keys.device)
        query_positions = torch.as_tensor(query_positions, device=keys.device).long()
        if query_positions.shape[-1] != d.seq_len_queries:
            raise ValueError(
                f"query_positions has {query_positions.shape[-1]} entries; expected one per "
                f"query ({d.seq_len_queries})")
        if query_positions.numel() and int(query_positions.max()) >= d.seq_len_keys:
            raise ValueError(
                f"query position {int(query_positions.max())} lies beyond the last key "
                f"({d.seq_len_keys - 1})")
        self.query_positions = query_positions
        self.attention_mask = attention_mask
        #: True when this context serves many chains (a trial cache sets it): maskers may
        #: then build parameter-free precomputations that pay off only when reused.
        self.shared = False

    # ------------------------------------------------------------------ shapes
    @property
    def mask_shape(self) -> tuple:
        return self.dims.mask_shape

    @property
    def device(self) -> torch.device:
        return self.keys.device

    @cached_property
    def key_index(self) -> torch.Tensor:
        """``(n,)`` key positions."""
        return torch.arange(self.dims.seq_len_keys, device=self.device)

    @cached_property
    def positions_4d(self) -> torch.Tensor:
        """Query positions shaped to broadcast against ``(b, h, q, n)``: ``(b|1, 1, q, 1)``."""
        pos = self.query_positions
        if pos.dim() == 1:
            return pos.view(1, 1, -1, 1)
        return pos.view(pos.shape[0], 1, pos.shape[1], 1)

    # ------------------------------------------------------------------ allowed
    @cached_property
    def allowed(self) -> torch.Tensor:
        """Boolean, broadcastable to ``(b, h, q, n)``: causal and user attention mask."""
        allowed = self.key_index.view(1, 1, 1, -1) <= self.positions_4d
        am = self.attention_mask
        if am is not None:
            if am.dtype == torch.bool:
                user = am
            else:
                user = am == 0
            try:
                torch.broadcast_shapes(user.shape, self.mask_shape)
            except RuntimeError:
                raise ValueError(
                    f"attention_mask of shape {tuple(user.shape)} does not broadcast to "
                    f"(b, h, q, n) = {self.mask_shape}; slice it to the keys and queries of "
                    f"this call") from None
            allowed = allowed & user
        return allowed

    @cached_property
    def allowed_full(self) -> torch.Tensor:
        return self.allowed.expand(self.mask_shape)

    @cached_property
    def allowed_per_head(self) -> torch.Tensor:
        """Allowed positions per query head, ``(h,)`` float64 on the CPU."""
        per_head = torch.count_nonzero(self.allowed_full, dim=(0, 2, 3))
        return per_head.to(torch.float64).cpu()

    @cached_property
    def logits(self) -> torch.Tensor:
        """``s * Q K^T`` in float32, ``(b, h, q, n)``; ``-inf`` where not allowed."""
        d = self.dims
        # fold the query-head group into the query axis: one (g*q, d) x (d, n) product per KV
        # head, reading each key once (no expanded copy of K)
        q = self.queries.float().reshape(d.batch_size, d.num_kv_heads, d.group_size * d.seq_len_queries,
                                         d.head_dim)
        if self.keys.dtype == torch.float32:
            logits = torch.matmul(q, self.keys.transpose(-1, -2))
        else:  # convert keys block by block: no full float32 copy of K
            logits = torch.empty(q.shape[:-1] + (d.seq_len_keys,), dtype=torch.float32, device=self.device)
            for start in range(0, d.seq_len_keys, KEY_BLOCK):
                block = self.keys[:, :, start:start + KEY_BLOCK].float()
                logits[..., start:start + KEY_BLOCK] = torch.matmul(q, block.transpose(-1, -2))
        logits = logits.view(d.mask_shape)
        logits.mul_(self.scaling)
        return logits.masked_fill_(~self.allowed, float("-inf"))

    @cached_property
    def logits_sorted(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(values, indices)`` of each row's logits in descending order (stable: equal
        logits keep key order). Shared by every oracle top-k / top-p trial on this call."""
        values, indices = torch.sort(self.logits, dim=-1, descending=True, stable=True)
        return values, indices

    @cached_property
    def row_max(self) -> torch.Tensor:
        """``(b, h, q, 1)`` row maxima over allowed keys (0 for a row with none)."""
        m = self.logits.amax(dim=-1, keepdim=True)
        return torch.where(torch.isfinite(m), m, torch.zeros_like(m))

    @cached_property
    def exp_scores(self) -> torch.Tensor:
        """``exp(L - m)``, ``(b, h, q, n)`` float32, exactly 0 where not allowed."""
        return torch.exp(self.logits - self.row_max)

    @cached_property
    def row_sum(self) -> torch.Tensor:
        return self.exp_scores.sum(-1, keepdim=True)

    @cached_property
    def probabilities(self) -> torch.Tensor:
        """Dense softmax over allowed keys, float32."""
        return self.exp_scores / self.row_sum.clamp_min(torch.finfo(torch.float32).tiny)

    def weighted_values(self, weights: torch.Tensor) -> torch.Tensor:
        """``sum_j weights[..., j] V_j`` for ``(b, h, q, n)`` weights -> ``(b, h, q, d)``."""
        d = self.dims
        w = weights.reshape(d.batch_size, d.num_kv_heads, d.group_size * d.seq_len_queries,
                            d.seq_len_keys)
        if self.values.dtype == torch.float32:
            out = torch.matmul(w, self.values)
        else:  # convert values block by block: no full float32 copy of V
            out = None
            for start in range(0, d.seq_len_keys, KEY_BLOCK):
                part = torch.matmul(w[..., start:start + KEY_BLOCK],
                                    self.values[:, :, start:start + KEY_BLOCK].float())
                out = part if out is None else out.add_(part)
        return out.view(d.batch_size, d.num_heads, d.seq_len_queries, d.head_dim)

    @cached_property
    def dense_output(self) -> torch.Tensor:
        """Dense attention output ``(b, h, q, d)`` in float32."""
        out = self.weighted_values(self.exp_scores)
        return out / self.row_sum.clamp_min(torch.finfo(torch.float32).tiny)
