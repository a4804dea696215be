"""The sparse attention estimator and the figures that compare it to dense attention.

With logits ``L = s Q K^T`` over allowed keys, row max ``m`` and ``e_j = exp(L_j - m)``:

- dense: ``O = sum_j e_j V_j / sum_j e_j`` (float32 whatever the input dtype);
- sparse with mask ``W``: ``u_j = e_j / W_j`` on active positions, 0 elsewhere,
  ``O = sum_j u_j V_j / sum_j u_j``: a Horvitz-Thompson estimate of numerator and
  denominator (a key sampled with probability p counts 1/p times). A row with no active
  allowed key has output 0 and is counted in ``empty_rows``. The estimate does not depend
  on the per-row shift; every path shifts so that the row's best ACTIVE key has
  ``e = 1`` (or at least ``exp(-ACTIVE_SHIFT_GAP)``), so no active key underflows when
  the row maximum sits on an inactive key.
- ``output_error = ||O_dense - O_sparse||_F / ||O_dense||_F`` per evaluated unit, and per
  query head.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Optional

import torch

from sah.context import AttentionContext, csr_matrix, row_matrix, sampled_dot_products
from sah.mask import Mask, _row_ids

#: Masks with at most this share of active positions are estimated by gathering only the
#: active keys (same result, less memory traffic). When the logits are already computed
#: (evaluation against dense attention), the dense weighted sum wins sooner: measured on
#: the default recording, gathering pays off below about 5% density.
SPARSE_PATH_MAX_DENSITY = 0.25
SPARSE_PATH_MAX_DENSITY_WITH_LOGITS = 0.05
#: The gathered output copies the active value rows, ``(nnz, dv)``, up to this many
#: entries (32 MiB of float32); past it float32 values use a CSR x dense product.
GATHER_MAX_ENTRIES = 8 << 20
#: ... but only while the values are small enough to stay in cache (recordings with a few
#: thousand keys); long-context values are read from memory, and gathering wins up to 25%.
SMALL_VALUES_BYTES = 16 << 20


#: The dense path normally reuses the context's ``exp(L - m)`` (``m``: the row max over the
#: allowed keys). When the best ACTIVE key of a row lies more than this many logits below
#: ``m``, active keys could underflow; such rows are shifted by their active max instead.
#: Below the gap no active key that matters can underflow (an active key whose ``exp``
#: leaves the normal float32 range weighs less than ``exp(-47)`` of the row's best active
#: key), so the result is the active-shift estimate to float32 precision.
ACTIVE_SHIFT_GAP = 40.0


@dataclass
class SparseOutput:
    output: torch.Tensor          # (b, h, q, dv) float32
    empty_rows: int               # rows with no active allowed key (output 0)
    weights: Optional[torch.Tensor] = None  # normalised estimator weights (b, h, q, n)


def sparse_attention(ctx: AttentionContext, mask: Mask, return_weights: bool = False) -> SparseOutput:
    """The sparse attention estimate for ``mask`` on the call described by ``ctx``.

    Sparse masks read only their active keys (no dense logits, no dense weights) unless
    ``return_weights`` asks for the ``(b, h, q, n)`` weights."""
    if tuple(mask.shape) != tuple(ctx.mask_shape):
        raise ValueError(f"mask shape {mask.shape} does not match the call {ctx.mask_shape}")
    if mask.is_full():
        weights = ctx.probabilities if return_weights else None
        return SparseOutput(ctx.dense_output, 0, weights)
    d = ctx.dims
    if mask.is_empty(scan=False):  # a dense mask of zeros takes the general path (same result)
        out = torch.zeros(d.batch_size, d.num_heads, d.seq_len_queries, ctx.value_dim,
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


def _broadcast_index(t: torch.Tensor, *indices: torch.Tensor) -> torch.Tensor:
    """``t[i0, i1, ...]`` for a tensor that broadcasts along some dims (size 1 there)."""
    zero = torch.zeros((), dtype=torch.long, device=t.device)
    return t[tuple(zero if t.shape[dim] == 1 else index for dim, index in enumerate(indices))]


def _sparse_output_gathered(ctx: AttentionContext, mask: Mask) -> SparseOutput:
    """The same estimate, reading only the active keys (CSR form of the mask).

    For sparse masks this touches ``nnz * d`` key and value entries instead of
    ``rows * n * d``: float32 inputs use sampled dense-dense products for the active logits
    and a CSR x dense product for the output (both over the keys and values as stored,
    one row per KV head and key); other dtypes gather the active rows."""
    d = ctx.dims
    rows = d.batch_size * d.num_heads * d.seq_len_queries
    idx, ptr, w = mask.to_sparse()
    row_of = _row_ids(ptr, idx.numel())
    n = d.seq_len_keys
    # each row's (batch, KV head): rows (b, h, q) -> b * hk + h // g
    kv_of_row = torch.div(torch.arange(rows, device=ctx.device), d.group_size * d.seq_len_queries,
                          rounding_mode="floor")
    if "logits" in ctx.__dict__:  # already computed for this call (a masker needed them)
        logits = ctx.logits.reshape(-1).index_select(0, row_of * n + idx)
    else:  # only the active positions' dot products: nnz * d work instead of rows * n * d
        left = ctx.queries.reshape(rows, d.head_dim)
        key_matrix, key_start = row_matrix(ctx.keys)
        lin = key_start[kv_of_row][row_of] + idx
        logits = sampled_dot_products(left, key_matrix, ptr, row_of, lin).mul_(ctx.scaling)
        position = ctx.positions_4d.expand(d.batch_size, d.num_heads, -1, 1).reshape(rows)
        allowed = idx <= position[row_of]
        if ctx.attention_mask is not None or not ctx.layer_type.is_full:  # window, chunk
            per_batch = d.num_heads * d.seq_len_queries
            batch = torch.div(row_of, per_batch, rounding_mode="floor")
            head = torch.div(row_of % per_batch, d.seq_len_queries, rounding_mode="floor")
            query = row_of % d.seq_len_queries
            allowed &= _broadcast_index(ctx.allowed, batch, head, query, idx)
        logits.masked_fill_(~allowed, float("-inf"))
    # The estimate is invariant to the per-row shift; use the max over the row's active keys.
    shift = torch.full((rows,), float("-inf"), device=ctx.device).scatter_reduce_(
        0, row_of, logits, reduce="amax", include_self=True)
    shift = torch.where(torch.isfinite(shift), shift, torch.zeros_like(shift))
    u = torch.exp(logits - shift[row_of])  # 0 where not allowed
    if not mask.is_binary():  # binary masks: every weight is 1
        u /= w
    dv = ctx.value_dim
    value_matrix, value_start = row_matrix(ctx.values)
    lin = value_start[kv_of_row][row_of] + idx  # each active key's row in value_matrix
    big_values = ctx.values.numel() * ctx.values.element_size() > SMALL_VALUES_BYTES
    if ctx.values.dtype == torch.float32 and (big_values or lin.numel() * dv > GATHER_MAX_ENTRIES):
        # many active keys, or values read from memory (long contexts): a CSR x dense
        # product reads each active value row once, in place (no (nnz, dv) copy, which
        # costs more to write and read back than the product itself)
        num = csr_matrix(ptr, lin, u, (rows, value_matrix.shape[0])) @ value_matrix
    else:
        num = _gathered_weighted_values(value_matrix, ptr, row_of, lin, u, rows)
    den = torch.zeros(rows, dtype=torch.float32, device=ctx.device).index_add_(0, row_of, u)
    empty = den == 0
    out = num / torch.where(empty, torch.ones_like(den), den).unsqueeze(1)
    return SparseOutput(out.view(d.batch_size, d.num_heads, d.seq_len_queries, dv),
                        int(empty.sum()))


def _gathered_weighted_values(flat_values: torch.Tensor, ptr: torch.Tensor, row_of: torch.Tensor,
                              lin: torch.Tensor, u: torch.Tensor, rows: int) -> torch.Tensor:
    """``sum_j u_j V_j`` per row from the gathered active value rows (converted to float32
    after the gather: no float32 copy of all values)."""
    dv = flat_values.shape[1]
    device = flat_values.device
    counts = ptr[1:] - ptr[:-1]
    width = int(counts.max()) if rows else 0
    if rows * width <= 2 * lin.numel():
        # rows hold similar numbers of keys: pad them to one width and use one batched
        # product (padding entries have weight 0 and point at key row 0)
        slot = torch.arange(lin.numel(), device=device) - ptr[row_of]
        flat_slot = row_of * width + slot
        padded_lin = torch.zeros(rows * width, dtype=torch.long, device=device)
        padded_lin[flat_slot] = lin
        padded_u = torch.zeros(rows * width, dtype=torch.float32, device=device)
        padded_u[flat_slot] = u
        v = flat_values.index_select(0, padded_lin).view(rows, width, dv).float()
        return torch.bmm(padded_u.view(rows, 1, width), v).view(rows, dv)
    v = flat_values.index_select(0, lin).float()
    num = torch.zeros(rows, dv, dtype=torch.float32, device=device)
    return num.index_add_(0, row_of, v * u.unsqueeze(1))


def active_exp_scores(ctx: AttentionContext, active: torch.Tensor) -> torch.Tensor:
    """``exp(L - m)`` on active positions, 0 elsewhere, ``(b, h, q, n)`` float32, with ``m``
    the row max over the allowed keys, except in rows whose best active key lies more than
    :data:`ACTIVE_SHIFT_GAP` below it: there ``m`` is the max over the active keys, so an
    active key never underflows while the row's maximum sits on an inactive key."""
    if ctx.shared or "exp_scores" in ctx.__dict__:
        e = torch.where(active, ctx.exp_scores, 0.0)
    else:  # one chain on this call (decoding): exp(L - m) in place, no cached copy to keep;
        # zeroed by a byte product (torch.where / masked_fill_ on a bool tensor ran 4-8x
        # slower on an AVX-512 Xeon). A NaN logit makes its row's m NaN on either path.
        e = torch.sub(ctx.logits, ctx.row_max).exp_().mul_(active.view(torch.uint8))
    low = e.amax(-1, keepdim=True) < math.exp(-ACTIVE_SHIFT_GAP)
    if bool(low.any()):
        active_max = ctx.logits.masked_fill(~active, float("-inf")).amax(-1, keepdim=True)
        redo = low & torch.isfinite(active_max)
        if bool(redo.any()):
            shift = torch.where(redo, active_max, ctx.row_max)
            e = torch.where(active, torch.exp(ctx.logits - shift), 0.0)
    return e


def horvitz_thompson_weights(ctx: AttentionContext, mask: Mask) -> torch.Tensor:
    """``u_j = e_j / W_j`` on active allowed positions, 0 elsewhere, ``(b, h, q, n)`` float32
    (``e`` from :func:`active_exp_scores`: the shift never lets an active key underflow).

    ``sum_j u_j V_j`` and ``sum_j u_j`` are unbiased estimates of the dense numerator and
    denominator (up to the row's common factor) when each position is kept with
    probability ``W_j``.
    """
    if mask.is_full():
        return ctx.exp_scores
    active = mask.active()
    e = active_exp_scores(ctx, active)
    if mask.is_binary():  # every weight is 1: u is e on active positions
        return e
    w = mask.to_dense()
    # e is exactly 0 where not allowed or inactive, so u is 0 there too; divide exactly by W.
    return e / torch.where(active, w, torch.ones_like(w))


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
