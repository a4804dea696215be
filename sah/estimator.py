"""The sparse attention estimator and the figures that compare it to dense attention.

With logits ``L = s Q K^T`` over allowed keys, row max ``m`` and ``e_j = exp(L_j - m)``:

- dense: ``O = sum_j e_j V_j / sum_j e_j`` (float32 whatever the input dtype);
- sparse with mask ``W``: ``u_j = e_j / W_j`` on active positions, 0 elsewhere,
  ``O = sum_j u_j V_j / sum_j u_j``: a Horvitz-Thompson estimate of numerator and
  denominator (a key sampled with probability p counts 1/p times). A row with no active
  allowed key has output 0 and is counted in ``empty_rows``.
- ``output_error = ||O_dense - O_sparse||_F / ||O_dense||_F`` per evaluated unit, and per
  query head.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

import torch

from sah.context import AttentionContext
from sah.mask import Mask, _row_ids

#: Masks with at most this share of active positions are estimated by gathering only the
#: active keys (same result, less memory traffic). When the logits are already computed
#: (evaluation against dense attention), the dense weighted sum wins sooner: measured on
#: the default recording, gathering pays off below about 5% density.
SPARSE_PATH_MAX_DENSITY = 0.25
SPARSE_PATH_MAX_DENSITY_WITH_LOGITS = 0.05
#: ... but only while the values are small enough to stay in cache (recordings with a few
#: thousand keys); long-context values are read from memory, and gathering wins up to 25%.
SMALL_VALUES_BYTES = 16 << 20


@dataclass
class SparseOutput:
    output: torch.Tensor          # (b, h, q, d) float32
    empty_rows: int               # rows with no active allowed key (output 0)
    weights: Optional[torch.Tensor] = None  # normalised estimator weights (b, h, q, n)


def sparse_attention(ctx: AttentionContext, mask: Mask, return_weights: bool = False) -> SparseOutput:
    """The sparse attention estimate for ``mask`` on the call described by ``ctx``."""
    if tuple(mask.shape) != tuple(ctx.mask_shape):
        raise ValueError(f"mask shape {mask.shape} does not match the call {ctx.mask_shape}")
    if mask.is_full():
        weights = ctx.probabilities if return_weights else None
        return SparseOutput(ctx.dense_output, 0, weights)
    d = ctx.dims
    if mask.is_empty(scan=False):  # a dense mask of zeros takes the general path (same result)
        out = torch.zeros(d.batch_size, d.num_heads, d.seq_len_queries, d.head_dim,
                          device=ctx.device)
        rows = d.batch_size * d.num_heads * d.seq_len_queries
        weights = torch.zeros(ctx.mask_shape, device=ctx.device) if return_weights else None
        return SparseOutput(out, rows, weights)
    cheap_dense = ("logits" in ctx.__dict__
                   and ctx.values.numel() * ctx.values.element_size() <= SMALL_VALUES_BYTES)
    limit = SPARSE_PATH_MAX_DENSITY_WITH_LOGITS if cheap_dense else SPARSE_PATH_MAX_DENSITY
    if not return_weights and mask.num_active() <= limit * mask.numel():
        return _sparse_output_gathered(ctx, mask)
    u = horvitz_thompson_weights(ctx, mask)
    denom = u.sum(-1, keepdim=True)
    empty = denom == 0
    safe = torch.where(empty, torch.ones_like(denom), denom)
    out = ctx.weighted_values(u) / safe
    return SparseOutput(out, int(empty.sum()), u / safe if return_weights else None)


def _sparse_output_gathered(ctx: AttentionContext, mask: Mask) -> SparseOutput:
    """The same estimate, reading only the active keys' values (CSR gather + index_add).

    For sparse masks this touches ``nnz * d`` value entries instead of ``rows * n * d``.
    """
    d = ctx.dims
    rows = d.batch_size * d.num_heads * d.seq_len_queries
    idx, ptr, w = mask.to_sparse()
    row_of = _row_ids(ptr, idx.numel())
    per_batch = d.num_heads * d.seq_len_queries
    head = torch.div(row_of % per_batch, d.seq_len_queries, rounding_mode="floor")
    kv_row = torch.div(row_of, per_batch, rounding_mode="floor") * d.num_kv_heads + torch.div(
        head, d.group_size, rounding_mode="floor")
    if "logits" in ctx.__dict__:  # already computed for this call (a masker needed them)
        logits = ctx.logits.reshape(rows, d.seq_len_keys)[row_of, idx]
    else:  # only the active positions' dot products: nnz * d work instead of rows * n * d
        q = ctx.queries.reshape(rows, d.head_dim)[row_of].float()
        k = ctx.keys.reshape(d.batch_size * d.num_kv_heads, d.seq_len_keys, d.head_dim)[kv_row, idx]
        logits = (q * k.float()).sum(-1) * ctx.scaling
        allowed = ctx.allowed_full.reshape(rows, d.seq_len_keys)[row_of, idx]
        logits = logits.masked_fill(~allowed, float("-inf"))
    # The estimate is invariant to the per-row shift; use the max over the row's active keys.
    shift = torch.full((rows,), float("-inf"), device=ctx.device).scatter_reduce_(
        0, row_of, logits, reduce="amax", include_self=True)
    shift = torch.where(torch.isfinite(shift), shift, torch.zeros_like(shift))
    u = torch.exp(logits - shift[row_of]) / w  # 0 where not allowed
    flat_values = ctx.values.reshape(-1, d.head_dim)
    lin = kv_row * d.seq_len_keys + idx  # row of each active key in the flattened values
    counts = ptr[1:] - ptr[:-1]
    width = int(counts.max()) if rows else 0
    if rows * width <= 2 * idx.numel():
        # rows hold similar numbers of keys: pad them to one width and use one batched
        # product (padding entries have weight 0 and point at key row 0)
        slot = torch.arange(idx.numel(), device=ctx.device) - ptr[row_of]
        flat_slot = row_of * width + slot
        padded_lin = torch.zeros(rows * width, dtype=torch.long, device=ctx.device)
        padded_lin[flat_slot] = lin
        padded_u = torch.zeros(rows * width, dtype=torch.float32, device=ctx.device)
        padded_u[flat_slot] = u
        v = flat_values.index_select(0, padded_lin).view(rows, width, d.head_dim).float()
        num = torch.bmm(padded_u.view(rows, 1, width), v).view(rows, d.head_dim)
    else:
        v = flat_values.index_select(0, lin).float()
        num = torch.zeros(rows, d.head_dim, dtype=torch.float32, device=ctx.device)
        num.index_add_(0, row_of, v * u.unsqueeze(1))
    den = torch.zeros(rows, dtype=torch.float32, device=ctx.device).index_add_(0, row_of, u)
    empty = den == 0
    out = num / torch.where(empty, torch.ones_like(den), den).unsqueeze(1)
    return SparseOutput(out.view(d.batch_size, d.num_heads, d.seq_len_queries, d.head_dim),
                        int(empty.sum()))


def horvitz_thompson_weights(ctx: AttentionContext, mask: Mask) -> torch.Tensor:
    """``u_j = e_j / W_j`` on active allowed positions, 0 elsewhere, ``(b, h, q, n)`` float32.

    ``sum_j u_j V_j`` and ``sum_j u_j`` are unbiased estimates of the dense numerator and
    denominator when each position is kept with probability ``W_j``.
    """
    if mask.is_full():
        return ctx.exp_scores
    if mask.is_binary():  # every weight is 1: u is e on active positions
        return torch.where(mask.active(), ctx.exp_scores, 0.0)
    w = mask.to_dense()
    active = mask.active()
    # exp_scores is exactly 0 where not allowed, so u is 0 there too; divide exactly by W.
    return torch.where(active, ctx.exp_scores / torch.where(active, w, torch.ones_like(w)),
                       torch.zeros_like(w))


def output_error(dense: torch.Tensor, sparse: torch.Tensor) -> float:
    """Relative Frobenius error ``||dense - sparse|| / ||dense||`` over the whole unit."""
    num = torch.linalg.vector_norm((dense - sparse).float())
    den = torch.linalg.vector_norm(dense.float())
    return float(num / den) if float(den) > 0 else float(num)


def per_head_output_error(dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
    """Relative error per query head, ``(h,)``: norms over batch, queries and head dim."""
    diff = (dense - sparse).float()
    num = torch.linalg.vector_norm(diff, dim=(0, 2, 3))
    den = torch.linalg.vector_norm(dense.float(), dim=(0, 2, 3))
    return (num / torch.where(den > 0, den, torch.ones_like(den))).cpu()


@dataclass
class Evaluation:
    """How a mask's sparse attention compares with dense attention on one unit (a layer)."""

    output_error: float
    density: float
    density_rect: float
    empty_rows: int
    per_head_error: List[float] = field(default_factory=list)
    per_head_density: List[float] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "output_error": self.output_error, "density": self.density,
            "density_rect": self.density_rect, "empty_rows": self.empty_rows,
            "per_head_error": list(self.per_head_error),
            "per_head_density": list(self.per_head_density),
        }


def evaluate_mask(ctx: AttentionContext, mask: Mask) -> Evaluation:
    """Score ``mask`` against dense attention on ``ctx``."""
    sparse = sparse_attention(ctx, mask)
    dense = ctx.dense_output
    allowed_per_head = ctx.allowed_per_head
    if mask.is_full() or mask.is_empty(scan=False):
        fill = 1.0 if mask.is_full() else 0.0
        per_head_active = allowed_per_head * fill
        active_total = float(per_head_active.sum()) if mask.is_full() else 0.0
    else:
        active = mask.active()
        # one pass: active allowed positions per head, and all active positions
        per_head_active = torch.count_nonzero(active & ctx.allowed, dim=(0, 2, 3)).to(torch.float64)
        active_total = float(torch.count_nonzero(active))
    num_allowed = float(allowed_per_head.sum())
    return Evaluation(
        output_error=output_error(dense, sparse.output),
        density=float(per_head_active.sum()) / num_allowed if num_allowed else 0.0,
        density_rect=active_total / mask.numel(),
        empty_rows=sparse.empty_rows,
        per_head_error=per_head_output_error(dense, sparse.output).tolist(),
        per_head_density=(per_head_active / allowed_per_head.clamp_min(1)).tolist(),
    )
