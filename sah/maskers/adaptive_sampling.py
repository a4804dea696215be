"""vAttention adaptive sampling: a per-row sample size chosen so that the sampled part of the
softmax denominator is within ``epsilon`` (relative) with confidence ``1 - delta``.

``AdaptiveSamplingMaskerConfig(base_rate_sampling, epsilon, delta, init_offset,
local_offset, seed=42)``. Per row (batch, head, query at position ``t``):

- window: allowed, not-yet-active keys with index in ``[start, end)``, ``start =
  eff(init_offset)``, ``end = t + 1 - eff(local_offset)`` (sizes: int count or float fraction
  of the ``n`` keys); ``N`` keys. ``N < 2``: the row gets nothing.
- ``e_j = exp(L_j - m)``; static part ``D_s = sum over active j of e_j / W_j`` (0 if none).
- base sample: ``n_b = max(2, eff(base_rate_sampling of N))`` (capped at ``N``; an int is a
  count, a float a fraction of ``N``) keys drawn uniformly without replacement;
  ``sigma`` = sample standard deviation of ``e`` on them (Bessel-corrected),
  ``D^ = D_s + N * mean(e on the base sample)``.
- budget ``B = clamp(ceil((z * sigma * N / (epsilon * D^))^2), n_b, N)`` with
  ``z = Phi^-1(1 - delta)`` (``torch.special.ndtri``); a second, independent uniform draw
  of ``B`` keys without replacement from the window, each with weight ``B / N`` (its exact
  inclusion probability given ``B``, so the estimate stays unbiased).

``base_rate_sampling = 0`` disables the masker. Draws come from a generator seeded
``seed + layer_idx`` (or the call's ``generator`` keyword). The budgets are reported in
``sparse_meta_data``: ``"adaptive_sampling_budget"`` (``(b, h, q)`` int64, 0 for rows with
``N < 2``), ``"adaptive_sampling_mean_budget"`` (mean ``B`` in keys over rows that sampled;
0.0 if none), ``"adaptive_sampling_mean_budget_per_layer"`` (``{layer_idx: mean}``) and,
per row, the base sample's mean and standard deviation of ``e`` (``"adaptive_sampling_base_mean"``,
``"adaptive_sampling_base_std"``, ``(b, h, q)`` float32, meaningful where ``N >= 2``).
Auxiliary memory: 0 bits per token (the estimate uses the keys themselves).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Union

import torch

from sah.mask import Mask, row_counts
from sah.maskers.base import MaskerConfig, MaskerRegistry, SamplingMasker
from sah.maskers.random_sampling import sample_indices
from sah.maskers.top_k import candidate_positions
from sah.infra.checks import check_float, check_int, check_size, resolve_size

MEAN_BUDGET_KEY = "adaptive_sampling_mean_budget"
BUDGET_KEY = "adaptive_sampling_budget"
PER_LAYER_KEY = "adaptive_sampling_mean_budget_per_layer"
BASE_MEAN_KEY = "adaptive_sampling_base_mean"
BASE_STD_KEY = "adaptive_sampling_base_std"


@dataclass
class AdaptiveSamplingMaskerConfig(MaskerConfig):
    """``base_rate_sampling``: base sample size (int count, or float fraction of the window);
    ``epsilon``: relative error target in (0, 1); ``delta``: failure probability in (0, 1);
    ``init_offset``/``local_offset``: keys left out at the start / before the query (int count
    or float fraction of the keys); ``seed``: base seed of the draws (plus ``layer_idx``)."""

    base_rate_sampling: Union[int, float] = 0.05
    epsilon: float = 0.25
    delta: float = 0.25
    init_offset: Union[int, float] = 128
    local_offset: Union[int, float] = 128
    seed: int = 42
    search_space: Dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        owner = type(self).__name__
        check_size(owner, "base_rate_sampling", self.base_rate_sampling)
        check_float(owner, "epsilon", self.epsilon, 0.0, 1.0, low_open=True, high_open=True)
        check_float(owner, "delta", self.delta, 0.0, 1.0, low_open=True, high_open=True)
        check_size(owner, "init_offset", self.init_offset)
        check_size(owner, "local_offset", self.local_offset)
        check_int(owner, "seed", self.seed, 0)


def adaptive_budget(static_sum: torch.Tensor, base_mean: torch.Tensor, base_std: torch.Tensor,
                    window_count: torch.Tensor, base_count: torch.Tensor, epsilon: float,
                    delta: float) -> torch.Tensor:
    """``B = clamp(ceil((z sigma N / (epsilon D^))^2), n_b, N)`` with ``D^ = D_s + N mean``
    (all per row, broadcasting); int64. A row with ``D^ = 0`` gets ``n_b``."""
    z = torch.special.ndtri(torch.tensor(1.0 - delta, dtype=torch.float64))
    n = window_count.double()
    estimate = static_sum.double() + n * base_mean.double()
    ratio = z.to(n.device) * base_std.double() * n / (epsilon * estimate)
    ratio = torch.where(estimate > 0, ratio, torch.zeros_like(ratio))
    wanted = torch.ceil(ratio * ratio)
    wanted = torch.minimum(torch.maximum(wanted, base_count.double()), n)
    return wanted.long()


@MaskerRegistry.register(AdaptiveSamplingMaskerConfig)
class AdaptiveSamplingMasker(SamplingMasker):
    """vAttention: uniform sampling with a per-row, error-driven budget."""

    def add_mask(self, keys, queries, values, attention_mask, scaling, dropout,
                 sparse_meta_data, previous_mask: Mask, **kwargs: Any) -> Mask:
        cfg = self.config
        if previous_mask.is_full() or cfg.base_rate_sampling == 0:
            return previous_mask
        ctx = self.context(keys, queries, values, attention_mask, scaling, kwargs)
        allowed_keys = ctx.size_keys  # sizes: a share of the keys the layer allows
        n = ctx.dims.seq_len_keys  # the row width of every (b, h, q, n) tensor
        start = resolve_size(cfg.init_offset, allowed_keys)
        end = ctx.positions_4d + 1 - resolve_size(cfg.local_offset, allowed_keys)  # (b|1, 1, q, 1)
        index = ctx.key_index.view(1, 1, 1, -1)
        in_range = (index >= start) & (index < end)  # (b|1, 1, q, n): small
        window = candidate_positions(ctx, previous_mask) & in_range
        count = row_counts(window)  # N, (b, h, q, 1)
        sampled_rows = count >= 2
        if not bool(sampled_rows.any()):
            self._report(sparse_meta_data, torch.zeros_like(count.squeeze(-1)), sampled_rows, kwargs)
            return previous_mask

        e = ctx.exp_scores
        zero = torch.zeros((), device=ctx.device)
        if previous_mask.is_empty(scan=False):  # (a dense mask of zeros sums to 0 below)
            static = torch.zeros_like(ctx.row_sum)
        elif previous_mask.is_binary():  # deterministic picks only: every W is 1
            static = torch.where(previous_mask.active(), e, zero).sum(-1, keepdim=True)
        else:
            w = previous_mask.to_dense()
            active = previous_mask.active() & ctx.allowed_full
            static = torch.where(active, e / torch.where(active, w, torch.ones_like(w)), zero)
            static = static.sum(-1, keepdim=True)

        generator = self.generator(kwargs, cfg.seed, ctx.device)
        if isinstance(cfg.base_rate_sampling, float):
            base = (cfg.base_rate_sampling * count.double()).floor().long()
        else:
            base = torch.full_like(count, int(cfg.base_rate_sampling))
        base = torch.minimum(base.clamp_min(2), count)
        in_base, kept = sample_indices(window, base, generator, count)
        base_f = base.clamp_min(1).double()
        # the base sample's e (gathered: base keys per row, not n); elementwise in float32,
        # sums accumulated in float64
        rows = in_base.shape[0]
        sampled = torch.where(kept, e.reshape(rows, n).gather(1, in_base), zero)
        mean = sampled.sum(-1, dtype=torch.float64).view(base_f.shape) / base_f
        deviation = torch.where(kept, sampled - mean.float().view(rows, 1), zero)
        sq_dev = (deviation * deviation).sum(-1, dtype=torch.float64).view(base_f.shape)
        std = (sq_dev / (base_f - 1).clamp_min(1)).sqrt()

        budget = adaptive_budget(static, mean, std, count, base, cfg.epsilon, cfg.delta)
        budget = torch.where(sampled_rows, budget, torch.zeros_like(budget))
        chosen, keep = sample_indices(window, budget, generator, count)
        probability = (budget.float() / count.clamp_min(1).float()).view(rows, 1)
        weights = torch.zeros(rows, n, device=ctx.device)
        weights.scatter_add_(1, chosen, torch.where(keep, probability, zero))  # padding adds 0
        weights = weights.view(ctx.mask_shape)
        self._report(sparse_meta_data, budget.squeeze(-1), sampled_rows, kwargs)
        if sparse_meta_data is not None:
            sparse_meta_data[BASE_MEAN_KEY] = mean.squeeze(-1).float()
            sparse_meta_data[BASE_STD_KEY] = std.squeeze(-1).float()
        return previous_mask.merge(Mask.from_dense(weights, check=False))

    @staticmethod
    def _report(meta: Dict[Any, Any], budget: torch.Tensor, sampled_rows: torch.Tensor,
                kwargs: Dict[str, Any]) -> None:
        if meta is None:
            return
        rows = sampled_rows.squeeze(-1)
        mean = float(budget[rows].double().mean()) if bool(rows.any()) else 0.0
        meta[BUDGET_KEY] = budget
        meta[MEAN_BUDGET_KEY] = mean
        meta.setdefault(PER_LAYER_KEY, {})[kwargs.get("layer_idx")] = mean
