"""Row helpers of :class:`sah.mask.Mask`: broadcast (stride-0) views, per-row counts, the
CSR row structure, and the probability check of mask weights."""

from __future__ import annotations

from typing import Tuple

import torch


def row_counts(active: torch.Tensor) -> torch.Tensor:
    """True entries per row (last dim) of a boolean tensor, ``(..., 1)`` int64 (a byte sum:
    ``count_nonzero`` over a dimension runs several times slower)."""
    return active.view(torch.uint8).sum(-1, keepdim=True, dtype=torch.int32).long()


def compact(t: torch.Tensor) -> torch.Tensor:
    """``t`` without its broadcast dimensions: every dimension with stride 0 (an
    ``expand``-ed view) narrowed to size 1, so it still broadcasts to ``t.shape``."""
    for dim in range(t.dim()):
        if t.stride(dim) == 0 and t.shape[dim] > 1:
            t = t.narrow(dim, 0, 1)
    return t


def _broadcast_csr(active: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """CSR ``(indices, indptr)`` of a boolean ``(b, h, q, n)`` view that broadcasts over some
    of b, h, q: the distinct rows are scanned once and their columns repeated per row."""
    base = compact(active)
    n = active.shape[-1]
    base_rows = base.shape[0] * base.shape[1] * base.shape[2]
    base_row, base_col = base.reshape(base_rows, n).nonzero(as_tuple=True)
    base_ptr = _indptr_from_rows(base_row, base_rows)
    # the distinct row each row of the full shape reads
    source = torch.arange(base_rows, device=active.device).view(base.shape[:3])
    source = source.expand(active.shape[:3]).reshape(-1)
    counts = (base_ptr[1:] - base_ptr[:-1])[source]
    indptr = torch.nn.functional.pad(counts.cumsum(0), (1, 0))
    total = int(indptr[-1])
    row_of = torch.repeat_interleave(torch.arange(source.numel(), device=active.device), counts,
                                     output_size=total)
    slot = torch.arange(total, device=active.device) - indptr[row_of]
    return base_col[base_ptr[source][row_of] + slot], indptr


def _row_ids(indptr: torch.Tensor, nnz: int) -> torch.Tensor:
    """Row id of each stored entry of a CSR structure."""
    counts = indptr[1:] - indptr[:-1]
    return torch.repeat_interleave(torch.arange(counts.numel(), device=indptr.device), counts,
                                   output_size=nnz)


def _indptr_from_rows(row_of: torch.Tensor, rows: int) -> torch.Tensor:
    """CSR row pointer from the (sorted) row id of each entry."""
    boundaries = torch.arange(rows + 1, device=row_of.device, dtype=row_of.dtype)
    return torch.searchsorted(row_of, boundaries)


def _check_probabilities(where: str, weights: torch.Tensor, shape) -> None:
    """Raise ``ValueError`` if any weight is NaN, negative or above 1 (naming one)."""
    if weights.numel() == 0:
        return
    low, high = torch.aminmax(weights)  # NaN propagates into both
    if bool(torch.isnan(low)) or bool(torch.isnan(high)):
        bad = torch.isnan(weights)
        what = "NaN"
    elif float(low) < 0.0:
        bad = weights < 0
        what = f"{float(low)!r}"
    elif float(high) > 1.0:
        bad = weights > 1
        what = f"{float(high)!r}"
    else:
        return
    flat = int(bad.reshape(-1).nonzero()[0])
    if shape is not None:
        at = []
        for size in reversed(shape):
            at.append(flat % size)
            flat //= size
        place = f"at {tuple(reversed(at))}"
    else:
        place = f"at entry {flat}"
    raise ValueError(f"{where}: weight {what} {place}; weights are inclusion probabilities and "
                     f"must lie in [0, 1] (0 = inactive)")
