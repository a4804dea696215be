"""Score-based selection: the TopK/TopP bases and the helpers every data-dependent masker shares.

A score-based masker supplies one score per position, ``(b, h, q, n)``; the selection rules
are the same for all of them:

- *candidates* are the allowed positions (causal limit and user mask) that are not yet
  active in the previous mask (``W > 0``); a selection never re-picks an active key;
- top-k: the ``k`` candidates with the largest score per row (``k`` from ``heavy_size``:
  int count of keys or float fraction of the ``n`` keys); a row with fewer than ``k``
  candidates takes all of them; among candidates tied at the cut the most recent key
  (highest key index) wins, on every path;
- top-p: among the candidates, the smallest set (by descending softmax weight of the
  score) whose share of the *remaining* softmax mass (the candidates' mass) reaches
  ``top_p``; every candidate tied with the last one needed is included; ``top_p = 1.0``
  takes every candidate and ``top_p = 0`` none.

Picks carry weight 1.0. Everything is vectorised over batch, heads and queries.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from dataclasses import dataclass, field
from typing import Any, Dict, Union

import torch

from sah.context import AttentionContext
from sah.mask import Mask, compact, row_counts
from sah.maskers.base import FixedMasker, MaskerConfig
from sah.maskers.top_p_selection import (top_p_positions, top_p_positions_fast,  # noqa: F401
                                        top_p_positions_presorted)
from sah.infra.checks import check_float, check_size, resolve_size


def candidate_positions(ctx: AttentionContext, previous_mask: Mask) -> torch.Tensor:
    """Boolean ``(b, h, q, n)``: allowed positions not yet active in ``previous_mask``.

    A view that may broadcast (stride 0) over heads or queries when the allowed positions
    and the previous picks do (sink + local): treat it as read-only."""
    if previous_mask.is_empty(scan=False):  # (a dense mask of zeros: the same result below)
        return ctx.allowed_full
    return (ctx.allowed & ~compact(previous_mask.active())).expand(ctx.mask_shape)


def _ranked_scores(scores: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """float32 scores with NaN and -inf mapped to the lowest finite float (so every
    candidate ranks above every non-candidate) and -inf on non-candidates; a new tensor."""
    low = torch.finfo(torch.float32).min
    ranked = scores.float().nan_to_num(nan=low, neginf=low)
    if ranked.data_ptr() == scores.data_ptr():
        ranked = ranked.clone()
    return ranked.masked_fill_(~candidates, float("-inf"))


def top_k_positions(scores: torch.Tensor, candidates: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean ``(b, h, q, n)``: per row, the ``k`` candidates with the largest score (all
    candidates when a row has fewer than ``k``). Ties at the cut go to the most recent
    key (highest index), the rule of every path (the context's sorted logits included).

    No sort: long rows keep the keys at or above a cut read off a strided sample of the
    row (with a margin, so that the cut holds at least ``k`` keys) and select among those
    only; other rows use one partial selection (``topk``) over the row. Rows where the
    k-th score is tied with keys left out are redone with the recency rule."""
    shape = candidates.shape
    n = shape[-1]
    k = min(int(k), n)
    if k <= 0:
        return torch.zeros(shape, dtype=torch.bool, device=candidates.device)
    if _prefilter_applies(n, k):
        keys, good = _top_k_prefiltered(scores, candidates, k)
        rows = good.numel()
        picks = torch.zeros((rows, n), dtype=torch.bool, device=candidates.device)
        settled = good.nonzero().squeeze(1)
        flat = (settled * n).unsqueeze(1) + keys
        picks.view(-1).index_fill_(0, flat.view(-1), True)
        rest = (~good).nonzero().squeeze(1)
        if rest.numel():  # rows the sampled cut did not settle
            b, h, q = shape[:3]
            index = (torch.div(rest, h * q, rounding_mode="floor"),
                     torch.div(rest % (h * q), q, rounding_mode="floor"), rest % q)
            sub = _ranked_scores(scores[index], candidates[index])
            picks.index_copy_(0, rest, _top_k_rows(sub, k))
        return picks.view(shape)
    return _top_k_rows(_ranked_scores(scores, candidates).view(-1, n), k).view(shape)


def top_k_keys(scores: torch.Tensor, candidates: torch.Tensor, k: int):
    """The picks of :func:`top_k_positions` as key indices, ``(b, h, q, k)`` ascending per
    row, when the sampled cut settles every row and each row has at least ``k`` candidates
    (the usual case for long rows); None otherwise (the caller then uses the boolean form).
    No ``(b, h, q, n)`` tensor of picks is made."""
    n = candidates.shape[-1]
    k = int(k)
    if k <= 0 or k > n or not _prefilter_applies(n, k):
        return None
    keys, good = _top_k_prefiltered(scores, candidates, k)
    if keys.shape[0] != good.numel():
        return None
    return keys.view(candidates.shape[:3] + (k,))


def _prefilter_applies(n: int, k: int) -> bool:
    return n >= PREFILTER_MIN_KEYS and k * 8 <= n


#: Rows of at least this many keys (and k at most an eighth of them) take the prefilter.
PREFILTER_MIN_KEYS = 2048
#: Keys per sampled key in the prefilter's strided sample.
PREFILTER_STRIDE = 16


def _top_k_rows(ranked: torch.Tensor, k: int) -> torch.Tensor:
    """:func:`top_k_positions` on ``(rows, n)`` ranked scores (-inf: not a candidate).

    One ``topk`` of ``k + 1``: its smallest value is the (k+1)-th score, its second
    smallest the k-th; they are equal exactly when the k-th score is tied with a key left
    out (those rows are redone with the recency rule), and no full-row count is needed."""
    rows, n = ranked.shape
    if k >= n:
        return ranked > float("-inf")
    values, idx = ranked.topk(k + 1, dim=-1, sorted=False)
    nxt, kth = values.topk(2, dim=-1, largest=False, sorted=True).values.unbind(-1)
    nxt, kth = nxt.unsqueeze(1), kth.unsqueeze(1)
    picks = torch.zeros(ranked.shape, dtype=torch.bool, device=ranked.device)
    picks.scatter_(-1, idx, values > nxt)  # all k+1 but the (k+1)-th when no tie
    few = kth == float("-inf")  # fewer than k candidates: all of them
    tied = (kth == nxt) & ~few
    if bool(few.any()):
        picks = torch.where(few, ranked > float("-inf"), picks)
    if bool(tied.any()):
        redo = tied.view(-1).nonzero().squeeze(1)
        sub = ranked.index_select(0, redo)
        picks.index_copy_(0, redo, _recent_ties_first(sub, kth.view(-1).index_select(0, redo), k))
    return picks


def _recent_ties_first(ranked: torch.Tensor, kth: torch.Tensor, k: int) -> torch.Tensor:
    """Per row: every score above the k-th, then keys scoring exactly the k-th from the
    highest key index down until k are picked."""
    cut = kth.view(-1, 1)
    above = ranked > cut
    at_cut = ranked == cut
    room = k - row_counts(above)
    from_the_end = at_cut.flip(-1).cumsum(-1).flip(-1)
    return above | (at_cut & (from_the_end <= room))


def _top_k_prefiltered(scores: torch.Tensor, candidates: torch.Tensor, k: int):
    """``(keys, good)``: ``good`` (rows,) marks the rows a sampled cut settles, ``keys``
    ``(settled rows, k)`` their picks as key indices, ascending, settled rows in order.

    Per row, the cut is the ``r``-th largest of every ``PREFILTER_STRIDE``-th candidate's
    score, ``r`` the expected rank of the k-th key in that sample plus 4 standard
    deviations: the candidates at or above it (about twice ``k``) hold the top k unless
    the sample misleads, which the count checks. Works on the scores as given (no
    ranked copy of a ``(b, h, q, n)`` tensor); NaN and -inf scores are never above a cut,
    as they rank lowest."""
    shape = candidates.shape
    n = shape[-1]
    rows = candidates.numel() // n
    device = candidates.device
    low = torch.finfo(torch.float32).min
    sample = torch.where(candidates[..., ::PREFILTER_STRIDE],
                         scores[..., ::PREFILTER_STRIDE].float().nan_to_num(nan=low, neginf=low),
                         torch.full((), float("-inf"), device=scores.device))
    expected = sample.shape[-1] * k / n
    r = min(sample.shape[-1], int(math.ceil(expected + 4.0 * math.sqrt(expected) + 2.0)))
    cut = sample.topk(r, dim=-1, sorted=False).values.amin(-1, keepdim=True)
    keep = scores >= cut
    keep &= candidates
    row_of, key = keep.view(rows, n).nonzero(as_tuple=True)  # row-major: keys in order
    held = torch.bincount(row_of, minlength=rows)  # (a per-row count of a bool tensor is slower)
    good = (held >= k) & (held <= n // 4) & (cut.view(-1) > float("-inf"))
    if not bool(good.any()):
        return torch.zeros((0, k), dtype=torch.long, device=device), good
    if not bool(good.all()):
        settled = good[row_of]
        row_of, key = row_of[settled], key[settled]
    counts = torch.where(good, held, 0)
    width = int(counts.max())
    ptr = torch.nn.functional.pad(counts.cumsum(0), (1, 0))
    # each kept key's place in its compacted row
    to = row_of * width + torch.arange(key.numel(), device=device) - ptr[row_of]
    values = torch.full((rows * width,), float("-inf"), device=device)
    values.index_copy_(0, to, scores.reshape(-1).index_select(0, row_of * n + key).float())
    chosen = _top_k_rows(values.view(rows, width), k)  # same set, same tie rule: k per good row
    return key[chosen.view(-1).index_select(0, to)].view(-1, k), good


def recent_first_order(scores: torch.Tensor):
    """``(values, indices)`` of each row's scores in descending order, equal scores ordered
    from the highest key index down (the tie rule of every top-k path)."""
    n = scores.shape[-1]
    values, flipped = torch.sort(scores.flip(-1), dim=-1, descending=True, stable=True)
    return values, flipped.neg_().add_(n - 1)


def top_k_positions_presorted(order: torch.Tensor, candidates: torch.Tensor, k: int) -> torch.Tensor:
    """:func:`top_k_positions` for scores whose descending ``order`` per row is known (the
    context's cached sort of the logits): the first ``k`` candidates in that order. No
    per-trial sort; ``order`` puts equal scores most recent key first (see
    :func:`recent_first_order`)."""
    flags = candidates.gather(-1, order)
    rank = flags.cumsum(-1, dtype=torch.int32)
    picks = torch.zeros(candidates.shape, dtype=torch.bool, device=candidates.device)
    return picks.scatter_(-1, order, flags & (rank <= int(k)))


@dataclass
class TopKMaskerConfig(MaskerConfig):
    """Base of top-k maskers. ``heavy_size``: int count of keys or float fraction of the keys."""

    heavy_size: Union[int, float] = 0.05
    search_space: Dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        check_size(type(self).__name__, "heavy_size", self.heavy_size)


@dataclass
class TopPMaskerConfig(MaskerConfig):
    """Base of top-p maskers. ``top_p``: share of the remaining softmax mass, in [0, 1]."""

    top_p: float = 0.9
    search_space: Dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        check_float(type(self).__name__, "top_p", self.top_p, 0.0, 1.0)


class ScoreSelectionMasker(FixedMasker):
    """Shared flow of the score-based maskers: candidates, the method's scores, a
    selection, and the merge. Subclasses supply :meth:`scores` and :meth:`select`."""

    @abstractmethod
    def scores(self, ctx: AttentionContext, sparse_meta_data: Dict[Any, Any],
               **kwargs: Any) -> torch.Tensor:
        """One score per position, ``(b, h, q, n)`` (larger is better; a logit for top-p)."""

    @abstractmethod
    def select(self, ctx: AttentionContext, scores: torch.Tensor,
               candidates: torch.Tensor) -> torch.Tensor:
        """Boolean ``(b, h, q, n)`` picks among ``candidates``: a new tensor (the caller may
        merge the previous picks into it)."""

    def select_keys(self, ctx: AttentionContext, scores: torch.Tensor,
                    candidates: torch.Tensor):
        """The picks as ``(b, h, q, k)`` key indices ascending per row, when this method
        picks the same number of keys in every row and can say so without a boolean form;
        None (the default) otherwise."""
        return None

    def selects_nothing(self, ctx: AttentionContext) -> bool:
        return False

    def add_mask(self, keys, queries, values, attention_mask, scaling, dropout,
                 sparse_meta_data, previous_mask: Mask, **kwargs: Any) -> Mask:
        if previous_mask.is_full():
            return previous_mask
        ctx = self.context(keys, queries, values, attention_mask, scaling, kwargs)
        if self.selects_nothing(ctx):
            return previous_mask
        candidates = candidate_positions(ctx, previous_mask)
        scores = self.scores(ctx, sparse_meta_data if sparse_meta_data is not None else {}, **kwargs)
        keys = self.select_keys(ctx, scores, candidates) if previous_mask.is_binary() else None
        if keys is not None:
            # picks as key indices merged in CSR form (sink + local + top-k on long rows):
            # no (b, h, q, n) picks, and the estimator gets its CSR form without a scan
            merged = previous_mask.with_row_picks(keys)
            if merged is not None:
                return merged
            picks = torch.zeros(ctx.mask_shape, dtype=torch.bool, device=ctx.device)
            picks.scatter_(-1, keys, True)
        else:
            picks = self.select(ctx, scores, candidates)
        if previous_mask.is_binary() and picks.is_contiguous():
            # the picks are this call's own tensor: merge into it (no second (b, h, q, n) mask)
            picks |= compact(previous_mask.active())
            return Mask.from_bool(picks, ctx.mask_shape)
        return previous_mask.merge(Mask.from_bool(picks, ctx.mask_shape))


class TopKMasker(ScoreSelectionMasker):
    """Adds, per row, the ``heavy_size`` candidates with the largest :meth:`scores`."""

    def selects_nothing(self, ctx: AttentionContext) -> bool:
        return resolve_size(self.config.heavy_size, ctx.size_keys) == 0

    def select(self, ctx: AttentionContext, scores: torch.Tensor,
               candidates: torch.Tensor) -> torch.Tensor:
        k = resolve_size(self.config.heavy_size, ctx.size_keys)
        if scores is ctx.logits and (ctx.shared or "logits_sorted" in ctx.__dict__):
            # oracle on a context many trials share: one sort per context, reused
            return top_k_positions_presorted(ctx.logits_sorted[1], candidates, k)
        return top_k_positions(scores, candidates, k)

    def select_keys(self, ctx: AttentionContext, scores: torch.Tensor,
                    candidates: torch.Tensor):
        if scores is ctx.logits and (ctx.shared or "logits_sorted" in ctx.__dict__):
            return None  # the shared sort serves the boolean form
        return top_k_keys(scores, candidates, resolve_size(self.config.heavy_size, ctx.size_keys))


class TopPMasker(ScoreSelectionMasker):
    """Adds, per row, the smallest candidate set covering ``top_p`` of the remaining mass."""

    def selects_nothing(self, ctx: AttentionContext) -> bool:
        return self.config.top_p <= 0.0

    def select(self, ctx: AttentionContext, scores: torch.Tensor,
               candidates: torch.Tensor) -> torch.Tensor:
        if scores is ctx.logits and (ctx.shared or "logits_sorted" in ctx.__dict__):
            # oracle on a context many trials share: one sort per context, reused
            return top_p_positions_presorted(*ctx.logits_sorted, candidates, self.config.top_p)
        return top_p_positions_fast(scores, candidates, self.config.top_p)
