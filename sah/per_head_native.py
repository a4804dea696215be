"""Native per-head paths for :class:`~sah.layer_config.PerHeadMasker`.

The generic path runs a masker once per distinct value. These paths give the same masks
with less work when a single field varies by head:

- sinks (``sink_size``) and local windows (``window_size``): one pass with a per-head
  size tensor;
- the top-k family (``heavy_size``; maskers whose ``select`` is ``TopKMasker.select``):
  the method's scores once, then, on a context with the sorted logits (oracle on a shared
  context), one pass with a per-head rank limit, else one ``topk`` per distinct size on
  its heads' rows;
- the top-p family (``top_p``; ``select`` is ``TopPMasker.select``): the scores once, one
  selection per distinct value on its heads' rows.

Anything else returns None and the generic path runs. ``tests/test_layer_config.py``
checks every path against the single-value chain, head by head.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from sah.context import AttentionContext
from sah.mask import Mask
from sah.maskers.local import LocalMasker
from sah.maskers.sink import SinkMasker
from sah.maskers.top_k import (TopKMasker, TopPMasker, candidate_positions, top_k_positions,
                               top_p_positions, top_p_positions_presorted)
from sah.infra.checks import resolve_size

Groups = Sequence[Tuple[Tuple[Any, ...], List[int]]]


def native_add_mask(masker: Any, ctx: AttentionContext, groups: Groups, previous_mask: Mask,
                    sparse_meta_data: Optional[Dict[Any, Any]], kwargs: Dict[str, Any]) -> Optional[Mask]:
    """The per-head mask by a native path, or None when there is none for this masker."""
    fields = tuple(masker.per_head)
    cls = masker.masker_class
    if len(fields) != 1:
        return None
    field = fields[0]
    per_head = masker.per_head[field]
    n = ctx.size_keys
    if cls is SinkMasker and field == "sink_size":
        size = _sizes(per_head, n, ctx.device)
        picks = (ctx.key_index.view(1, 1, 1, -1) < size) & ctx.allowed
        return previous_mask.merge(Mask.from_bool(picks, ctx.mask_shape))
    if cls is LocalMasker and field == "window_size":
        size = _sizes(per_head, n, ctx.device)
        picks = (ctx.key_index.view(1, 1, 1, -1) > ctx.positions_4d - size) & ctx.allowed
        return previous_mask.merge(Mask.from_bool(picks, ctx.mask_shape))
    if issubclass(cls, TopKMasker) and cls.select is TopKMasker.select and field == "heavy_size":
        return _top_k(masker, ctx, groups, previous_mask, sparse_meta_data, kwargs)
    if issubclass(cls, TopPMasker) and cls.select is TopPMasker.select and field == "top_p":
        return _top_p(masker, ctx, groups, previous_mask, sparse_meta_data, kwargs)
    return None


def _sizes(values: Sequence[Any], num_keys: int, device: torch.device) -> torch.Tensor:
    """Per-head counts of keys, ``(1, h, 1, 1)``, from sizes (int counts or float fractions)."""
    return torch.tensor([resolve_size(v, num_keys) for v in values], device=device).view(1, -1, 1, 1)


def _top_k(masker: Any, ctx: AttentionContext, groups: Groups, previous_mask: Mask,
           meta: Optional[Dict[Any, Any]], kwargs: Dict[str, Any]) -> Mask:
    k = _sizes(masker.per_head["heavy_size"], ctx.size_keys, ctx.device)
    if int(k.max()) == 0:
        return previous_mask
    scorer = masker.masker_for(groups[0][0])  # scores do not depend on heavy_size
    candidates = candidate_positions(ctx, previous_mask)
    scores = scorer.scores(ctx, meta if meta is not None else {}, **kwargs)
    if scores is ctx.logits and (ctx.shared or "logits_sorted" in ctx.__dict__):
        order = ctx.logits_sorted[1]
        flags = candidates.gather(-1, order)
        rank = flags.cumsum(-1, dtype=torch.int32)
        picks = torch.zeros_like(candidates).scatter_(-1, order, flags & (rank <= k))
    else:
        picks = torch.zeros(ctx.mask_shape, dtype=torch.bool, device=ctx.device)
        for (value,), heads in groups:
            size = int(k[0, heads[0], 0, 0])
            if size == 0:
                continue
            idx = torch.tensor(heads, device=ctx.device)
            picks[:, idx] = top_k_positions(scores[:, idx], candidates[:, idx], size)
    return previous_mask.merge(Mask.from_bool(picks, ctx.mask_shape))


def _top_p(masker: Any, ctx: AttentionContext, groups: Groups, previous_mask: Mask,
           meta: Optional[Dict[Any, Any]], kwargs: Dict[str, Any]) -> Mask:
    if all(float(v) <= 0.0 for v in masker.per_head["top_p"]):
        return previous_mask
    scorer = masker.masker_for(groups[0][0])
    candidates = candidate_positions(ctx, previous_mask)
    scores = scorer.scores(ctx, meta if meta is not None else {}, **kwargs)
    oracle = scores is ctx.logits
    picks = torch.zeros(ctx.mask_shape, dtype=torch.bool, device=ctx.device)
    for (value,), heads in groups:
        if float(value) <= 0.0:
            continue
        idx = torch.tensor(heads, device=ctx.device)
        if oracle:
            values, order = ctx.logits_sorted
            picks[:, idx] = top_p_positions_presorted(values[:, idx], order[:, idx],
                                                      candidates[:, idx], float(value))
        else:
            picks[:, idx] = top_p_positions(scores[:, idx], candidates[:, idx], float(value))
    return previous_mask.merge(Mask.from_bool(picks, ctx.mask_shape))
