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
from typing import Any, Dict

import torch

from sah.mask import Mask
from sah.maskers.base import MaskerConfig, MaskerRegistry, SamplingMasker
from sah.maskers.top_k import candidate_positions
from sah.validation import check_float, check_int


def random_ranks(candidates: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Per row, the rank of every candidate in a uniform random order of the row's candidates
    (``0 .. N-1``); non-candidates get ranks ``>= N``. ``(b, h, q, n)`` int64.

    Keeping the candidates of rank ``< m`` is a uniform draw of ``m`` keys without
    replacement; ``m`` may differ per row."""
    noise = torch.rand(candidates.shape, generator=generator, device=candidates.device)
    noise = torch.where(candidates, noise, torch.full((), 2.0, device=candidates.device))
    order = noise.argsort(dim=-1)
    n = candidates.shape[-1]
    ranks = torch.empty(candidates.shape, dtype=torch.long, device=candidates.device)
    positions = torch.arange(n, device=candidates.device).expand(candidates.shape)
    return ranks.scatter_(-1, order, positions)


def sample_without_replacement(candidates: torch.Tensor, budget: torch.Tensor,
                               generator: torch.Generator) -> torch.Tensor:
    """Boolean ``(b, h, q, n)``: per row, ``min(budget, N)`` candidates drawn uniformly without
    replacement. ``budget`` broadcasts to ``(b, h, q, 1)``.

    The same draw as keeping the candidates of :func:`random_ranks` below ``budget`` (the
    ``budget`` smallest of one uniform noise per position), found with a partial
    ``topk`` instead of a full sort when budgets are small."""
    n = candidates.shape[-1]
    budget = torch.as_tensor(budget, device=candidates.device)
    largest = int(budget.max()) if budget.numel() else 0
    if largest <= 0:
        return torch.zeros_like(candidates)
    if largest > n // 4:
        return candidates & (random_ranks(candidates, generator) < budget)
    noise = torch.rand(candidates.shape, generator=generator, device=candidates.device)
    noise = torch.where(candidates, noise, torch.full((), 2.0, device=candidates.device))
    smallest = noise.topk(largest, dim=-1, largest=False, sorted=True).indices
    keep = torch.arange(largest, device=candidates.device) < budget  # first `budget` per row
    picks = torch.zeros_like(candidates).scatter_(-1, smallest, keep.expand(smallest.shape))
    return picks & candidates


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
        m = round(self.config.sampling_rate * ctx.dims.seq_len_keys)
        if m == 0:
            return previous_mask
        candidates = candidate_positions(ctx, previous_mask)
        count = torch.count_nonzero(candidates, dim=-1).unsqueeze(-1)  # N per row
        taken = count.clamp_max(m)
        generator = self.generator(kwargs, self.config.seed, ctx.device)
        picks = sample_without_replacement(candidates, taken, generator)
        probability = taken.float() / count.clamp_min(1).float()
        weights = torch.where(picks, probability, torch.zeros((), device=ctx.device))
        return previous_mask.merge(Mask.from_dense(weights, check=False))
