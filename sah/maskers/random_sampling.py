"""Uniform random sampling without replacement, and the sampling helpers other samplers share.

``RandomSamplingMaskerConfig(sampling_rate, seed=42)``: from a row's allowed, not-yet-active
keys (``N`` of them) draw ``m = round(sampling_rate * n)`` keys without replacement (``n``
is the number of keys of the call; ``round`` is Python's, halves to even; ``m`` is capped
at ``N``). Each drawn key carries its exact inclusion probability ``m / N``. The draw is a
uniform random permutation per row, from a generator seeded ``seed + layer_idx`` (or the
``generator`` keyword of the call), so a fixed seed gives a fixed mask. Auxiliary memory:
0 bits per token (nothing is kept per key).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

import torch

from sah.mask import Mask, row_counts
from sah.maskers.base import MaskerConfig, MaskerRegistry, SamplingMasker
from sah.maskers.top_k import candidate_positions
from sah.infra.checks import check_float, check_int


def random_ranks(candidates: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Per row, the rank of every candidate in a uniform random order of the row's candidates
    (``0 .. N-1``); non-candidates get ranks ``>= N``. ``(b, h, q, n)`` int64.

    Keeping the candidates of rank ``< m`` is a uniform draw of ``m`` keys without
    replacement; ``m`` may differ per row. Equal noises (float32 draws can tie) rank by
    key index."""
    noise = torch.rand(candidates.shape, generator=generator, device=candidates.device)
    noise = torch.where(candidates, noise, torch.full((), 2.0, device=candidates.device))
    order = torch.sort(noise, dim=-1, stable=True).indices
    n = candidates.shape[-1]
    ranks = torch.empty(candidates.shape, dtype=torch.long, device=candidates.device)
    positions = torch.arange(n, device=candidates.device).expand(candidates.shape)
    return ranks.scatter_(-1, order, positions)


def smallest_indices(noise: torch.Tensor, budget: torch.Tensor,
                     count: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per row of ``noise`` (noise in [0, 1) on candidates, 2.0 elsewhere), the key indices
    of the ``budget`` smallest noises, ``(rows, width)`` with a ``keep`` flag per entry
    (``budget`` broadcasts to ``(..., 1)`` and is at most the row's candidate ``count``;
    the first ``budget`` entries of a row are kept, the rest are padding). Ties go to the
    lowest key index.

    Uniform noise puts a row's ``B`` smallest values below about ``B / N``: keys below a cut
    with a safe margin are compacted and only those are sorted. A row where the cut holds
    fewer than ``B`` keys (very unlikely) makes every row take the full sort; the set is
    the same either way."""
    shape = noise.shape
    n = shape[-1]
    flat = noise.reshape(-1, n)
    rows = flat.shape[0]
    wanted = budget.expand(*shape[:-1], 1).reshape(rows)
    largest = int(wanted.max()) if rows else 0
    if largest <= 0:
        empty = torch.zeros((rows, 0), dtype=torch.long, device=noise.device)
        return empty, empty.bool()
    if count is None:
        count = (flat <= 1.0).view(torch.uint8).sum(-1, dtype=torch.int32)
    count = count.expand(*shape[:-1], 1).reshape(rows).double()
    want = wanted.double()
    # the B-th smallest of N uniforms is about B / N (sd below sqrt(B) / N); 1.5 keeps
    # non-candidates (2.0) out
    cut = ((want + 4.0 * want.sqrt() + 16.0) / count.clamp_min(1.0)).clamp_max(1.5)
    below = flat < cut.to(flat.dtype).unsqueeze(1)
    row_of, key = below.nonzero(as_tuple=True)
    held = torch.bincount(row_of, minlength=rows)
    width = int(held.max())
    if bool((held >= wanted).all()) and width <= n // 4:
        width = max(width, 1)
        ptr = torch.nn.functional.pad(held.cumsum(0), (1, 0))
        to = row_of * width + torch.arange(key.numel(), device=noise.device) - ptr[row_of]
        padded = torch.full((rows * width,), 3.0, device=noise.device)
        padded.index_copy_(0, to, flat.reshape(-1).index_select(0, row_of * n + key))
        padded_key = torch.zeros(rows * width, dtype=torch.long, device=noise.device)
        padded_key.index_copy_(0, to, key)
        order = torch.sort(padded.view(rows, width), dim=-1, stable=True).indices[:, :largest]
        chosen = padded_key.view(rows, width).gather(1, order)
    else:
        chosen = torch.sort(flat, dim=-1, stable=True).indices[:, :largest]
    keep = torch.arange(chosen.shape[1], device=noise.device) < wanted.unsqueeze(1)
    return chosen, keep


def smallest_positions(noise: torch.Tensor, budget: torch.Tensor,
                       count: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Boolean, ``noise``'s shape: :func:`smallest_indices` as a mask."""
    chosen, keep = smallest_indices(noise, budget, count)
    picks = torch.zeros(chosen.shape[0], noise.shape[-1], dtype=torch.bool, device=noise.device)
    return picks.scatter_(1, chosen, keep).view(noise.shape)


def sample_indices(candidates: torch.Tensor, budget: torch.Tensor, generator: torch.Generator,
                   count: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """:func:`sample_without_replacement` as ``(chosen, keep)`` key indices per row (see
    :func:`smallest_indices`); ``(rows, 0)`` when nothing is drawn (no generator draw)."""
    budget = torch.as_tensor(budget, device=candidates.device)
    rows = candidates.numel() // candidates.shape[-1]
    largest = int(budget.max()) if budget.numel() else 0
    if largest <= 0:
        empty = torch.zeros((rows, 0), dtype=torch.long, device=candidates.device)
        return empty, empty.bool()
    noise = torch.rand(candidates.shape, generator=generator, device=candidates.device)
    noise = torch.where(candidates, noise, torch.full((), 2.0, device=candidates.device))
    if count is None:
        count = row_counts(candidates)
    budget = torch.minimum(budget.expand(count.shape), count)
    chosen, keep = smallest_indices(noise, budget, count)
    return chosen, keep & candidates.reshape(rows, -1).gather(1, chosen)


def sample_without_replacement(candidates: torch.Tensor, budget: torch.Tensor,
                               generator: torch.Generator,
                               count: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Boolean ``(b, h, q, n)``: per row, ``min(budget, N)`` candidates drawn uniformly without
    replacement. ``budget`` broadcasts to ``(b, h, q, 1)``; ``count`` (optional, same
    shape) is each row's number of candidates ``N`` when the caller has it.

    The same draw as keeping the candidates of :func:`random_ranks` below ``budget`` (the
    ``budget`` smallest of one uniform noise per position, ties to the lowest key index),
    found by :func:`smallest_indices` without a full sort."""
    chosen, keep = sample_indices(candidates, budget, generator, count)
    picks = torch.zeros(chosen.shape[0], candidates.shape[-1], dtype=torch.bool,
                        device=candidates.device)
    return picks.scatter_(1, chosen, keep).view(candidates.shape)


@dataclass
class RandomSamplingMaskerConfig(MaskerConfig):
    """``sampling_rate``: fraction of the ``n`` keys to draw per row, in [0, 1];
    ``seed``: base seed of the draws (plus ``layer_idx``), default 42."""

    sampling_rate: float = 0.1
    seed: int = 42
    search_space: Dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        owner = type(self).__name__
        check_float(owner, "sampling_rate", self.sampling_rate, 0.0, 1.0)
        check_int(owner, "seed", self.seed, 0)


@MaskerRegistry.register(RandomSamplingMaskerConfig)
class RandomSamplingMasker(SamplingMasker):
    """Uniform sampling without replacement among allowed, not-yet-active keys."""

    def add_mask(self, keys, queries, values, attention_mask, scaling, dropout,
                 sparse_meta_data, previous_mask: Mask, **kwargs: Any) -> Mask:
        if previous_mask.is_full():
            return previous_mask
        ctx = self.context(keys, queries, values, attention_mask, scaling, kwargs)
        m = round(self.config.sampling_rate * ctx.size_keys)
        if m == 0:
            return previous_mask
        candidates = candidate_positions(ctx, previous_mask)
        count = row_counts(candidates)  # N per row
        taken = count.clamp_max(m)
        generator = self.generator(kwargs, self.config.seed, ctx.device)
        chosen, keep = sample_indices(candidates, taken, generator, count)
        probability = (taken.float() / count.clamp_min(1).float()).reshape(-1, 1)
        weights = torch.zeros(chosen.shape[0], ctx.dims.seq_len_keys, device=ctx.device)
        weights.scatter_add_(1, chosen, torch.where(keep, probability, 0.0))  # padding adds 0
        return previous_mask.merge(Mask.from_dense(weights.view(ctx.mask_shape), check=False))
