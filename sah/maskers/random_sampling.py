"""Uniform random sampling without replacement, and the sampling helpers other samplers share.

``RandomSamplingMaskerConfig(sampling_rate, seed=42)``: from a row's allowed, not-yet-active
keys (``N`` of them) draw ``m = round(sampling_rate * n)`` keys without replacement (``n``
is the number of keys of the call; ``round`` is Python's, halves to even; ``m`` is capped
at ``N``). Each drawn key carries its exact inclusion probability ``m / N``. The draw is
:func:`sah.maskers.draws.uniform_subsets`, its stream keyed by one draw of a generator
seeded ``seed + layer_idx`` (or the ``generator`` keyword of the call), so a fixed seed
gives a fixed mask. Auxiliary memory:
0 bits per token (nothing is kept per key).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

import torch

from sah.mask import Mask, row_counts
from sah.maskers.base import MaskerConfig, MaskerRegistry, SamplingMasker
from sah.maskers.draws import stream_key, uniform_subsets
from sah.maskers.top_k import candidate_positions
from sah.infra.checks import check_float, check_int


def sample_indices(candidates: torch.Tensor, budget: torch.Tensor, generator: torch.Generator,
                   count: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per row of ``candidates`` (boolean ``(b, h, q, n)``), ``min(budget, N)`` candidates
    drawn uniformly without replacement, as ``(chosen, keep)`` key indices per row
    (:func:`sah.maskers.draws.uniform_subsets`, its stream keyed by one draw of
    ``generator``); ``(rows, 0)`` when nothing is drawn (and then no generator draw).
    ``budget`` and ``count`` (each row's number of candidates ``N``, when the caller has
    it) broadcast to ``(b, h, q, 1)``."""
    budget = torch.as_tensor(budget, device=candidates.device)
    rows = candidates.numel() // candidates.shape[-1]
    if (int(budget.max()) if budget.numel() else 0) <= 0:
        empty = torch.zeros((rows, 0), dtype=torch.long, device=candidates.device)
        return empty, empty.bool()
    return uniform_subsets(candidates, budget, stream_key(generator, candidates.device), count)


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
