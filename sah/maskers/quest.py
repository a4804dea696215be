"""Quest: query-aware page selection from per-page key bounds.

``QuestTopKMaskerConfig(heavy_size, page_size, label_bits=16)``:

- keys are cut into pages of ``page_size`` consecutive keys (the last page may be short);
  per page, KV head and channel ``c`` the bounds ``kmin_c`` and ``kmax_c`` over its keys;
  for the page holding the query's own position only the keys up to that position count
  (a decoder has not seen the others yet; with several queries per call each query
  bounds its own page by its own keys: sah's stated choice, beyond the spec's wording);
- page score ``sum_c max(q_c * kmin_c, q_c * kmax_c)`` (an upper bound of ``q . k`` on
  the page; a query head uses its KV head's bounds);
- ``T = eff(heavy_size)`` keys (int count or float fraction of the ``n`` keys);
  the ``min(P, max(3, floor(T / page_size)))`` best pages (3 when ``T`` resolves to 0
  keys) are chosen among the pages that still hold an allowed, not-yet-active key (all of
  them when fewer remain; pages with nothing left to add are skipped rather than spending
  the page budget: sah's stated choice), ties going to the most recent page, and every
  allowed key of a chosen page gets weight 1.0;
- ``label_bits < 16`` pseudo-quantises the bounds: per bound vector ``x`` (one page's
  ``kmin`` or ``kmax``), ``lo = min(x)``, ``hi = max(x)``, ``levels = 2^bits - 1``, each
  channel rounded to an integer ``round((x - lo) * levels / (hi - lo))`` in ``[0, levels]``
  and mapped back; ``16`` keeps the bounds as they are (fp16 labels).

Auxiliary memory: ``2 * d * label_bits / page_size`` bits per token (two ``d``-channel
bound vectors per page). Like a decoder, Quest keeps each layer's page bounds in
``sparse_meta_data`` (``quest_page_bounds``): a later call on the same sequence grown by
some keys recomputes only the last, partial page and the new pages.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Union

import torch

from sah.context import FEW_QUERY_ROWS, AttentionContext
from sah.mask import Mask, compact
from sah.maskers.base import FixedMasker, MaskerConfig, MaskerRegistry
from sah.maskers.kept import kept_store, probe_keys, same_sequence, with_capacity
from sah.maskers.top_k import candidate_positions, top_k_positions
from sah.infra.checks import check_int, check_size, resolve_size


@dataclass
class QuestTopKMaskerConfig(MaskerConfig):
    """``heavy_size``: int count or float fraction of the keys; ``page_size``: keys per page
    (>= 1); ``label_bits``: bits per stored bound channel, in [1, 16]."""

    heavy_size: Union[int, float] = 0.05
    page_size: int = 16
    label_bits: int = 16
    search_space: Dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        owner = type(self).__name__
        check_size(owner, "heavy_size", self.heavy_size)
        check_int(owner, "page_size", self.page_size, 1)
        check_int(owner, "label_bits", self.label_bits, 1, 16)


def quantize_bounds(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Pseudo-quantise each vector (last dim) to ``2^bits - 1`` levels between its min and max."""
    if bits >= 16:
        return x
    levels = float(2 ** bits - 1)
    lo = x.amin(-1, keepdim=True)
    hi = x.amax(-1, keepdim=True)
    span = hi - lo
    safe = torch.where(span > 0, span, torch.ones_like(span))
    code = torch.round((x - lo) * levels / safe).clamp(0, levels)
    return torch.where(span > 0, lo + code * safe / levels, x)


def page_bounds(keys: torch.Tensor, page_size: int):
    """Per page and channel ``(min, max)``, each ``(b, hk, P, d)`` float32 (the last page
    may be short)."""
    b, hk, n, d = keys.shape
    full = n // page_size
    body = keys[:, :, :full * page_size].reshape(b, hk, full, page_size, d)
    lo, hi = body.amin(3).float(), body.amax(3).float()  # min/max commute with the cast
    if full * page_size < n:
        tail = keys[:, :, full * page_size:]
        lo = torch.cat([lo, tail.amin(2, keepdim=True).float()], dim=2)
        hi = torch.cat([hi, tail.amax(2, keepdim=True).float()], dim=2)
    return lo, hi


def own_page_bounds(keys: torch.Tensor, positions: torch.Tensor, page_size: int):
    """Bounds of each query's own page over its keys up to the query position:
    ``positions`` ``(b, q)`` -> ``(min, max)``, each ``(b, hk, q, d)`` float32."""
    b, hk, n, d = keys.shape
    start = torch.div(positions, page_size, rounding_mode="floor") * page_size  # (b, q)
    index = start.unsqueeze(-1) + torch.arange(page_size, device=keys.device)  # (b, q, page)
    valid = index <= positions.unsqueeze(-1)
    flat = index.clamp_max(n - 1).view(b, 1, -1, 1).expand(-1, hk, -1, d)
    page = keys.gather(2, flat).float().view(b, hk, positions.shape[1], page_size, d)
    valid = valid.view(b, 1, positions.shape[1], page_size, 1)
    inf = torch.full((), float("inf"), device=keys.device)
    return torch.where(valid, page, inf).amin(3), torch.where(valid, page, -inf).amax(3)


def bound_score(queries: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """``sum_c max(q_c lo_c, q_c hi_c)`` for queries ``(..., q, d)`` against bounds
    ``(..., P, d)`` -> ``(..., q, P)``, as two matrix products with no ``(q, P, d)``
    intermediate: ``max(a, b) = (a + b)/2 + |a - b|/2``, so the sum is
    ``q . (lo + hi)/2 + |q| . |hi - lo|/2``."""
    if queries.shape[-2] <= FEW_QUERY_ROWS:
        # few query rows (decoding): the bound is hi where q_c >= 0 and lo where q_c < 0,
        # so the sum is hi . max(q, 0) + lo . min(q, 0): two products streaming the bounds
        # once each (the same value up to float rounding), as query rows times a transposed
        # view of the bounds (the orientation that runs at memory speed, see
        # AttentionContext.logits)
        upper = queries.clamp_min(0) @ hi.transpose(-1, -2)
        return upper.add_(queries.clamp_max(0) @ lo.transpose(-1, -2))
    mid = (lo + hi) * 0.5
    half_span = (hi - lo).abs() * 0.5
    return queries @ mid.transpose(-1, -2) + queries.abs() @ half_span.transpose(-1, -2)


#: ``sparse_meta_data`` key under which Quest keeps each layer's page bounds.
KEPT_BOUNDS_KEY = "quest_page_bounds"


@dataclass
class KeptBounds:
    """One layer's page bounds (unquantised, ``(b, hk, capacity, d)`` each, the first
    ``ceil(count / page_size)`` pages filled) and the probe of :mod:`sah.maskers.kept`."""

    lo: torch.Tensor
    hi: torch.Tensor
    count: int
    probe: torch.Tensor


@MaskerRegistry.register(QuestTopKMaskerConfig)
class QuestTopKMasker(FixedMasker):
    """Chooses whole pages by their query-aware upper bound."""

    rows_independent = True

    def aux_bits_per_token(self, head_dim: int) -> float:
        return 2.0 * head_dim * self.config.label_bits / self.config.page_size

    def kept_page_bounds(self, ctx: AttentionContext, sparse_meta_data: Optional[Dict[Any, Any]],
                         layer: Any):
        """Page bounds ``(lo, hi)`` of every key of the call, each ``(b, hk, P, d)``: kept in
        ``sparse_meta_data`` (per layer and page size) as a decoder keeps them, so a call
        on the same sequence grown by some keys recomputes only its last, partial page
        and the new pages (the same values as computing every page again)."""
        size = self.config.page_size
        keys = ctx.keys
        n = keys.shape[2]
        pages = -(-n // size)
        store = kept_store(sparse_meta_data, KEPT_BOUNDS_KEY, {})
        slot = (layer, size)
        kept = store.get(slot) if store is not None else None
        if isinstance(kept, KeptBounds) and same_sequence(kept.probe, kept.count, keys):
            if kept.count < n:
                first = kept.count // size  # the last, partial page is redone
                lo, hi = page_bounds(keys[:, :, first * size:], size)
                kept.lo = with_capacity(kept.lo, first, pages, dim=2)
                kept.hi = with_capacity(kept.hi, first, pages, dim=2)
                kept.lo[:, :, first:pages] = lo
                kept.hi[:, :, first:pages] = hi
                kept.count = n
                kept.probe = probe_keys(keys, n)
            return kept.lo[:, :, :pages], kept.hi[:, :, :pages]
        lo, hi = page_bounds(keys, size)
        if store is not None:
            store[slot] = KeptBounds(lo, hi, n, probe_keys(keys, n))
        return lo, hi

    def add_mask(self, keys, queries, values, attention_mask, scaling, dropout,
                 sparse_meta_data, previous_mask: Mask, **kwargs: Any) -> Mask:
        if previous_mask.is_full():
            return previous_mask
        cfg = self.config
        ctx = self.context(keys, queries, values, attention_mask, scaling, kwargs)
        d = ctx.dims
        heavy = resolve_size(cfg.heavy_size, ctx.size_keys)  # 0 keys still means 3 pages
        size = cfg.page_size
        lo, hi = self.kept_page_bounds(ctx, sparse_meta_data, kwargs.get("layer_idx"))
        pages = lo.shape[2]
        lo, hi = quantize_bounds(lo, cfg.label_bits), quantize_bounds(hi, cfg.label_bits)

        g = d.group_size
        q = ctx.queries.float().reshape(d.batch_size, d.num_kv_heads, g * d.seq_len_queries, d.head_dim)
        scores = bound_score(q, lo, hi)  # (b, hk, g*q, P)
        # The page holding the query: bounds over its keys up to the query position only.
        pos = ctx.positions_4d.view(-1, d.seq_len_queries).expand(d.batch_size, -1)
        own_lo, own_hi = own_page_bounds(ctx.keys, pos, size)
        own_lo = quantize_bounds(own_lo, cfg.label_bits)
        own_hi = quantize_bounds(own_hi, cfg.label_bits)
        q5 = q.view(d.batch_size, d.num_kv_heads, g, d.seq_len_queries, d.head_dim)
        own_lo, own_hi = own_lo.unsqueeze(2), own_hi.unsqueeze(2)
        own = torch.maximum(q5 * own_lo, q5 * own_hi).sum(-1)  # (b, hk, g, q)
        scores = scores.view(d.batch_size, d.num_heads, d.seq_len_queries, pages)
        own_page = torch.div(pos, size, rounding_mode="floor").view(d.batch_size, 1, -1, 1)
        own_page = own_page.expand(-1, d.num_heads, -1, -1)
        scores = scores.scatter(-1, own_page, own.reshape(d.batch_size, d.num_heads, -1, 1))

        # pages still holding an allowed, not-yet-active key (on the un-broadcast form of
        # the candidates: one row for every head when the previous picks are shared)
        candidates = compact(candidate_positions(ctx, previous_mask))
        pad = pages * size - d.seq_len_keys
        padded = torch.nn.functional.pad(candidates, (0, pad), value=False)
        open_pages = padded.view(*candidates.shape[:3], pages, size).any(-1)
        open_pages = open_pages.expand(*d.mask_shape[:3], pages)
        wanted = min(pages, max(3, heavy // size))
        chosen = top_k_positions(scores, open_pages, wanted)  # (b, h, q, P)
        chosen_keys = chosen.repeat_interleave(size, dim=-1)[..., :d.seq_len_keys]
        picks = chosen_keys & ctx.allowed_full
        return previous_mask.merge(Mask.from_bool(picks, ctx.mask_shape))
