"""Top-p selection: per row, the smallest set of candidates whose share of the candidates'
softmax mass reaches ``top_p`` (the rule in :mod:`sah.maskers.top_k`'s docstring): the plain
reference (one sort per row), the bucketed form without a sort, and the form for scores
already sorted (a context many trials share)."""

from __future__ import annotations

import torch


def top_p_positions(scores: torch.Tensor, candidates: torch.Tensor, top_p: float) -> torch.Tensor:
    """Boolean ``(b, h, q, n)``: per row, the smallest set of candidates (by descending
    softmax weight of ``scores``) whose share of the candidates' softmax mass reaches
    ``top_p``; candidates tied with the last one needed are included.

    The plain reference: one full sort per row (see :func:`top_p_positions_fast`)."""
    if top_p >= 1.0:
        return candidates.clone(memory_format=torch.contiguous_format)
    if top_p <= 0.0:
        return torch.zeros(candidates.shape, dtype=torch.bool, device=candidates.device)
    neg_inf = torch.full((), float("-inf"), device=scores.device)
    masked = torch.where(candidates, scores.float(), neg_inf)
    row_max = masked.amax(-1, keepdim=True)
    row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
    weights = torch.exp(masked - row_max)  # 0 on non-candidates
    ordered, _ = weights.sort(dim=-1, descending=True)
    cumulative = ordered.double().cumsum(-1)
    total = cumulative[..., -1:]
    before = cumulative - ordered.double()  # mass covered before adding each key
    needed = (before < top_p * total).sum(-1, keepdim=True)  # keys needed, (b, h, q, 1)
    threshold = ordered.gather(-1, (needed - 1).clamp_min(0))
    return candidates & (weights >= threshold) & (needed > 0)


#: float32 bit patterns of weights in [0, 1] shifted right by this many bits give the
#: buckets of :func:`top_p_positions_fast`: 8 exponent and 4 mantissa bits, 16 buckets per
#: octave, ordered like the weights (bit patterns of non-negative floats are monotone).
_BUCKET_SHIFT = 19
_NUM_BUCKETS = (0x3F800000 >> _BUCKET_SHIFT) + 1  # 1.0 is the largest weight


def top_p_positions_fast(scores: torch.Tensor, candidates: torch.Tensor,
                         top_p: float) -> torch.Tensor:
    """:func:`top_p_positions` without a full sort. Each row's candidate weights are
    binned by their float32 bit pattern (monotone in the weight); bucket masses locate the
    bucket holding the last key needed, and only that bucket's keys are compacted and
    sorted. Same set as the reference, ties at the threshold included, except when
    ``top_p`` x the mass lies within float64 rounding (about 1e-16 relative) of a partial
    sum, which the two sum in a different order.

    Passes over the ``(rows, n)`` weights: the weights themselves, their buckets (int32),
    one weighted bincount, one comparison with the chosen bucket and its compaction, and
    the final comparison with the threshold (no second bincount, no ``topk`` over
    whole rows: both ran several times slower than a pass)."""
    if top_p >= 1.0 or top_p <= 0.0:
        return top_p_positions(scores, candidates, top_p)
    shape = candidates.shape
    n = shape[-1]
    device = scores.device
    # row-contiguous whatever the layout of the scores (torch.where keeps a strided one)
    masked = torch.where(candidates, scores.float(),
                         torch.full((), float("-inf"), device=device)).contiguous()
    row_max = masked.amax(-1, keepdim=True)
    row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
    weights = masked.sub_(row_max).exp_()  # 0 on non-candidates, in [0, 1]
    w = weights.view(-1, n)
    rows = w.shape[0]
    # int32 bucket of each weight, offset by row: non-candidates (weight 0) fall in bucket 0
    # and add no mass; NaN patterns go to a bucket left out. (No bool masking here: where
    # and masked_fill_ on bool tensors ran several times slower than integer passes on an
    # AVX-512 Xeon.)
    slot = torch.bitwise_right_shift(w.view(torch.int32), _BUCKET_SHIFT).clamp_(0, _NUM_BUCKETS)
    offset = torch.arange(rows, device=device, dtype=torch.int32).unsqueeze(1) * (_NUM_BUCKETS + 1)
    slot.add_(offset)
    size = rows * (_NUM_BUCKETS + 1)
    mass = torch.bincount(slot.view(-1), weights=w.reshape(-1).double(), minlength=size)
    mass = mass.view(rows, -1)[:, :_NUM_BUCKETS]
    # mass in the buckets strictly above each bucket, summed from the top down
    inclusive = mass.flip(-1).cumsum(-1).flip(-1)
    above = torch.nn.functional.pad(inclusive[:, 1:], (0, 1))
    target = top_p * inclusive[:, :1]  # top_p x the candidates' mass
    # the last key needed sits in the lowest bucket holding mass whose first key is needed
    # (keys of weight 0 are never needed: the mass above them is the whole mass)
    holds = (mass > 0) & (above < target)
    found = holds.any(-1, keepdim=True)
    last = torch.where(found, holds.to(torch.int8).argmax(-1, keepdim=True), -1)  # -1: no bucket
    # that bucket's keys of weight > 0, compacted per row (padding 0), in descending order
    # (slot offset - 1 of a row without a bucket matches none of its keys)
    row_of, key = (slot == last.to(torch.int32) + offset).nonzero(as_tuple=True)
    counts = torch.bincount(row_of, minlength=rows)
    width = max(int(counts.max()) if rows else 0, 1)
    ptr = torch.nn.functional.pad(counts.cumsum(0), (1, 0))
    at = row_of * width + torch.arange(row_of.numel(), device=device) - ptr[row_of]
    values = torch.zeros(rows * width, device=device)
    values.index_copy_(0, at, w.reshape(-1).index_select(0, row_of * n + key))
    values = values.view(rows, width).sort(dim=-1, descending=True).values
    valid = values > 0
    values64 = values.double()
    before = above.gather(1, last.clamp_min(0)) + values64.cumsum(-1) - values64
    counted = valid & (before < target) & found
    threshold = torch.where(counted, values, torch.full((), float("inf"), device=device))
    threshold = threshold.amin(-1, keepdim=True)
    # threshold > 0 (or inf: no picks), so non-candidates (weight 0) are never picked
    return (w >= threshold).view(shape)


def top_p_positions_presorted(sorted_scores: torch.Tensor, order: torch.Tensor,
                              candidates: torch.Tensor, top_p: float) -> torch.Tensor:
    """:func:`top_p_positions` for scores already sorted in descending order per row
    (``sorted_scores`` with key ``order``). Same set, ties at the threshold included."""
    if top_p >= 1.0:
        return candidates.clone(memory_format=torch.contiguous_format)
    if top_p <= 0.0:
        return torch.zeros(candidates.shape, dtype=torch.bool, device=candidates.device)
    flags = candidates.gather(-1, order)
    masked = sorted_scores.float().masked_fill(~flags, float("-inf"))
    top = masked.amax(-1, keepdim=True)  # the best candidate's score
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    weights = torch.exp(masked - top)  # descending over candidates, 0 on the rest
    weights64 = weights.double()
    cumulative = weights64.cumsum(-1)
    total = cumulative[..., -1:].clone()
    before = cumulative.sub_(weights64)  # candidates' mass ahead of each position
    counted = flags & (before < top_p * total)
    threshold = torch.where(counted, weights, torch.full((), float("inf"))).amin(-1, keepdim=True)
    picks_sorted = flags & (weights >= threshold)
    picks = torch.zeros(candidates.shape, dtype=torch.bool, device=candidates.device)
    return picks.scatter_(-1, order, picks_sorted)
