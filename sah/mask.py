"""The Mask: which (batch, head, query, key) positions a sparse attention method reads.

A mask is an array ``W`` of shape ``(b, h, q, n)`` with values in ``[0, 1]``. ``W = 0`` is
inactive; ``W > 0`` is active and is the position's *inclusion probability*
(deterministic picks carry 1.0, a sampled position carries the probability with which
it was sampled).

Forms: a dense tensor, a sparse CSR form (rows are the ``b*h*q`` (batch, head, query)
triples; column indices sorted and duplicate-free per row), and two flags: *full* (every
allowed position active with weight 1, nothing stored) and *empty* (nothing active). A
*binary* mask (every active weight 1.0: deterministic picks) is kept as booleans, possibly
broadcast over batch, heads or queries (sink, local), or as a CSR form of ones (top-k picks
merged as key lists, :meth:`Mask.with_row_picks`). Conversions are exact and lazy (computed on first use, then kept). Masks are values:
no method mutates a mask or the tensors it was made from.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from sah.mask_rows import (_broadcast_csr, _check_probabilities, _indptr_from_rows,  # noqa: F401
                           _row_ids, compact, row_counts)

Shape = Tuple[int, int, int, int]


class Mask:
    """An attention mask of inclusion probabilities. Build it with the ``create_*``/``from_*``
    class methods, never by hand."""

    __slots__ = ("shape", "_full", "_empty", "_dense", "_indices", "_indptr", "_values", "_active",
                 "_binary", "_device")

    def __init__(self, shape: Shape, *, full: bool = False, empty: bool = False,
                 dense: Optional[torch.Tensor] = None,
                 sparse: Optional[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = None,
                 binary: Optional[torch.Tensor] = None,
                 device: Optional[torch.device] = None) -> None:
        if len(shape) != 4:
            raise ValueError(f"Mask.shape: got {tuple(shape)}; expected (batch, heads, queries, keys)")
        self.shape: Shape = tuple(int(s) for s in shape)  # type: ignore[assignment]
        self._full = full
        self._empty = empty
        self._dense = dense
        self._indices = self._indptr = self._values = None
        # binary form: a boolean tensor of active positions, every weight 1.0 (deterministic
        # picks only); the float form is made from it only when asked for
        self._active: Optional[torch.Tensor] = binary
        self._binary = binary is not None
        if binary is not None:
            device = binary.device
        if sparse is not None:
            self._indices, self._indptr, self._values = sparse
        if dense is not None:
            device = dense.device
        elif sparse is not None:
            device = sparse[0].device
        self._device = torch.device(device) if device is not None else torch.device("cpu")

    # ------------------------------------------------------------------ constructors
    @classmethod
    def create_full(cls, shape: Shape, device: Optional[torch.device] = None) -> "Mask":
        return cls(shape, full=True, device=device)

    @classmethod
    def create_empty(cls, shape: Shape, device: Optional[torch.device] = None) -> "Mask":
        return cls(shape, empty=True, device=device)

    @classmethod
    def from_dense(cls, weights: torch.Tensor, check: bool = True) -> "Mask":
        """Wrap a dense ``(b, h, q, n)`` tensor of inclusion probabilities (values in [0, 1]).

        Weights above 1, below 0 or NaN are refused (``ValueError`` naming the value and
        where it is). ``check=False`` skips that pass over the tensor, for callers that
        build the weights from probabilities themselves (the built-in samplers)."""
        if weights.dim() != 4:
            raise ValueError(f"Mask.from_dense: got a {weights.dim()}-d tensor; expected (b, h, q, n)")
        w = weights if weights.dtype == torch.float32 else weights.float()
        if check:
            _check_probabilities("Mask.from_dense", w, tuple(w.shape))
        return cls(tuple(w.shape), dense=w)

    @classmethod
    def from_bool(cls, active: torch.Tensor, shape: Optional[Shape] = None) -> "Mask":
        """Weight 1.0 wherever ``active`` is True; ``active`` may broadcast to ``shape``."""
        shape = tuple(shape) if shape is not None else tuple(active.shape)
        return cls(shape, binary=active.to(torch.bool).expand(shape))

    @classmethod
    def from_indices(cls, shape: Shape, indices: torch.Tensor,
                     weights: Optional[torch.Tensor] = None,
                     valid: Optional[torch.Tensor] = None) -> "Mask":
        """Scatter per-row key indices ``(b, h, q, k)`` (weight 1 or ``weights``) into a mask.

        ``valid`` (same shape as ``indices``, bool) drops entries that are not picks.
        """
        if weights is None:
            src = torch.ones(indices.shape, dtype=torch.float32, device=indices.device)
        else:
            src = weights.to(torch.float32).expand(indices.shape)
        if valid is not None:
            src = src * valid
        dense = torch.zeros(shape, dtype=torch.float32, device=indices.device)
        dense.scatter_(-1, indices, src)
        return cls(shape, dense=dense)

    @classmethod
    def from_sparse(cls, shape: Shape, indices: torch.Tensor, indptr: torch.Tensor,
                    values: torch.Tensor) -> "Mask":
        """CSR form: ``indptr`` (rows + 1), column ``indices`` and ``values`` (nnz).

        Rows are the ``b*h*q`` (batch, head, query) triples in row-major order. Each row's
        indices must be sorted and duplicate-free; zeros in ``values`` are dropped.
        """
        rows = shape[0] * shape[1] * shape[2]
        n = int(shape[3])
        if indptr.numel() != rows + 1:
            raise ValueError(f"Mask.from_sparse: indptr has {indptr.numel()} entries; expected rows + 1 = {rows + 1}")
        if indices.numel() != values.numel():
            raise ValueError("Mask.from_sparse: indices and values differ in length")
        if indices.is_floating_point() or indptr.is_floating_point():
            raise ValueError("Mask.from_sparse: indices and indptr must be integer tensors")
        indptr = indptr.long()
        if int(indptr[0]) != 0 or int(indptr[-1]) != indices.numel() or bool((indptr[1:] < indptr[:-1]).any()):
            raise ValueError(f"Mask.from_sparse: indptr must start at 0, never decrease and end at "
                             f"nnz = {indices.numel()}")
        if indices.numel():
            low, high = int(indices.min()), int(indices.max())
            if low < 0 or high >= n:
                bad = low if low < 0 else high
                raise ValueError(f"Mask.from_sparse: column index {bad} is outside the {n} keys "
                                 f"[0, {n - 1}] of shape {tuple(shape)}")
            row_of = _row_ids(indptr, indices.numel())
            same_row = row_of[1:] == row_of[:-1]
            if bool((same_row & (indices[1:] <= indices[:-1])).any()):
                raise ValueError("Mask.from_sparse: column indices must be sorted and duplicate-free "
                                 "within each row")
        values = values.to(torch.float32)
        _check_probabilities("Mask.from_sparse", values, None)
        keep = values > 0
        if not bool(keep.all()):
            row_of = _row_ids(indptr, indices.numel())
            indices, values, row_of = indices[keep], values[keep], row_of[keep]
            indptr = _indptr_from_rows(row_of, rows)
        return cls(shape, sparse=(indices.long(), indptr.long(), values))

    # ------------------------------------------------------------------ flags and forms
    @property
    def device(self) -> torch.device:
        return self._device

    def is_full(self) -> bool:
        return self._full

    def is_empty(self, scan: bool = True) -> bool:
        """True when nothing is active. ``scan=False`` only reads the flag (no pass over a
        dense mask; a dense mask of zeros then answers False)."""
        if self._empty:
            return True
        if self._full or not scan:
            return False
        if self._values is not None:
            return self._values.numel() == 0
        return not bool(compact(self.active()).any())

    # seed-compatible names
    is_full_mask = is_full
    is_empty_mask = is_empty

    @property
    def has_dense(self) -> bool:
        return self._dense is not None

    def is_binary(self) -> bool:
        """True when every active position has weight 1.0 (kept as booleans, or as a CSR form
        whose values are all 1.0)."""
        return self._binary

    def to_dense(self) -> torch.Tensor:
        """Dense ``(b, h, q, n)`` float32 weights. A full mask is all ones (the estimator
        and densities intersect it with the allowed positions)."""
        if self._dense is None:
            if self._full:
                self._dense = torch.ones(self.shape, dtype=torch.float32, device=self._device)
            elif self._empty:
                self._dense = torch.zeros(self.shape, dtype=torch.float32, device=self._device)
            elif self._binary and self._active is not None:
                self._dense = self._active.to(torch.float32)
            else:
                dense = torch.zeros(self.numel(), dtype=torch.float32, device=self._device)
                dense[self._stored_positions()] = self._values
                self._dense = dense.view(self.shape)
        return self._dense

    get_dense_mask = to_dense

    def to_sparse(self) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """CSR ``(indices, indptr, values)``; a full mask lists every position."""
        if self._indices is None:
            b, h, q, n = self.shape
            if self._binary and self._dense is None and compact(self._active).numel() < self._active.numel():
                self._indices, self._indptr = _broadcast_csr(self._active)
                self._values = torch.ones(self._indices.numel(), dtype=torch.float32,
                                          device=self._indices.device)
                return self._indices, self._indptr, self._values
            row_of, col = self.active().reshape(b * h * q, n).nonzero(as_tuple=True)  # sorted per row
            self._indices = col
            if self._binary:
                self._values = torch.ones(col.numel(), dtype=torch.float32, device=col.device)
            else:
                self._values = self.to_dense().reshape(-1).index_select(0, row_of * n + col)
            self._indptr = _indptr_from_rows(row_of, b * h * q)
        return self._indices, self._indptr, self._values

    def _stored_positions(self) -> torch.Tensor:
        """The flat ``(b*h*q*n)`` position of each entry of the CSR form (which must exist)."""
        return _row_ids(self._indptr, self._indices.numel()) * self.shape[3] + self._indices

    def active(self) -> torch.Tensor:
        """Boolean ``(b, h, q, n)`` of active positions (computed once)."""
        if self._active is None:
            if self._binary and self._dense is None:  # a CSR form of ones: mark its keys
                active = torch.zeros(self.numel(), dtype=torch.bool, device=self._device)
                active.index_fill_(0, self._stored_positions(), True)
                self._active = active.view(self.shape)
            else:
                self._active = self.to_dense() > 0
        return self._active

    # ------------------------------------------------------------------ algebra
    def merge(self, other: "Mask") -> "Mask":
        """``clamp(self + other, 0, 1)``: a deterministic pick always wins over a sample.
        Full absorbs everything; empty is the identity. Inputs are not modified."""
        if self.shape != other.shape:
            raise ValueError(f"Mask.merge: shapes differ, {self.shape} vs {other.shape}")
        if self._full or other._full:
            return Mask.create_full(self.shape, self._device)
        if self._empty:
            return other
        if other._empty:
            return self
        if self._binary and other._binary:
            # OR the un-broadcast forms: picks that are the same for every head (or query)
            # stay one row, expanded as a view (no (b, h, q, n) tensor for sink + local)
            merged = compact(self.active()) | compact(other.active())
            return Mask(self.shape, binary=merged.expand(self.shape))
        if self._binary or other._binary:  # a deterministic pick wins: weight 1 there
            picks, rest = (self, other) if self._binary else (other, self)
            return Mask(self.shape, dense=torch.where(picks.active(), 1.0, rest.to_dense()))
        if self._dense is None and other._dense is None:
            return self._merge_sparse(other)
        return Mask(self.shape, dense=(self.to_dense() + other.to_dense()).clamp_(0.0, 1.0))

    def merge_mask(self, other: "Mask", inplace: bool = False) -> "Mask":
        """Seed-compatible name of :meth:`merge`. ``inplace`` is accepted and ignored: masks
        are values and are never mutated."""
        return self.merge(other)

    def with_row_picks(self, keys: torch.Tensor) -> Optional["Mask"]:
        """This binary mask plus ``keys`` (``(b, h, q, k)`` key indices, ascending per row,
        none of them active here) at weight 1, built in CSR form: no ``(b, h, q, n)``
        tensor and no scan of one. None when this mask is not a binary mask that
        broadcasts over some of batch, heads and queries (sink, local): the caller then
        merges boolean picks.

        Each pick's place in its merged row is its rank among the picks plus the active
        keys below it (a prefix count of the broadcast rows); this mask's own keys fill
        the remaining places in order."""
        if not self._binary or self._active is None:
            return None
        base = compact(self._active)
        if base.numel() == self._active.numel():
            return None
        b, h, q, n = self.shape
        rows = b * h * q
        k = keys.shape[-1]
        device = keys.device
        below = base.view(torch.uint8).cumsum(-1, dtype=torch.int32)  # active keys <= j
        own = below[..., -1].expand(b, h, q).reshape(rows).long()  # this mask's keys per row
        indptr = torch.nn.functional.pad((own + k).cumsum(0), (1, 0))
        place = torch.gather(below.expand(b, h, q, n), -1, keys).view(rows, k).long()
        place += indptr[:-1].unsqueeze(1) + torch.arange(k, device=device)
        total = int(indptr[-1])
        indices = torch.empty(total, dtype=torch.long, device=device)
        indices.index_copy_(0, place.view(-1), keys.reshape(-1))
        free = torch.ones(total, dtype=torch.uint8, device=device)
        free.index_fill_(0, place.view(-1), 0)
        own_indices, _ = _broadcast_csr(self._active)
        indices.index_copy_(0, free.nonzero().squeeze(1), own_indices)
        values = torch.ones(total, dtype=torch.float32, device=device)
        mask = Mask(self.shape, sparse=(indices, indptr, values))
        mask._binary = True
        return mask

    def _merge_sparse(self, other: "Mask") -> "Mask":
        b, h, q, n = self.shape
        rows = b * h * q
        keys = []
        vals = []
        for m in (self, other):
            vals.append(m.to_sparse()[2])
            keys.append(m._stored_positions())
        flat_keys = torch.cat(keys)
        uniq, inverse = torch.unique(flat_keys, sorted=True, return_inverse=True)
        summed = torch.zeros(uniq.numel(), dtype=torch.float32, device=flat_keys.device)
        summed.index_add_(0, inverse, torch.cat(vals))
        row_of = torch.div(uniq, n, rounding_mode="floor")
        return Mask(self.shape, sparse=(uniq - row_of * n, _indptr_from_rows(row_of, rows),
                                        summed.clamp_(0.0, 1.0)))

    # ------------------------------------------------------------------ measures
    def density(self, allowed: Optional[torch.Tensor] = None) -> float:
        """Active allowed positions / allowed positions, over the whole mask.

        ``allowed`` is a boolean tensor broadcastable to the mask shape (None: every
        position is allowed). Full masks have density 1, empty masks 0.
        """
        if self._full:
            return 1.0
        if self._empty:
            return 0.0
        active = self.active()
        if allowed is None:
            return float(active.float().mean())
        allowed_b = allowed.expand(self.shape)
        total = int(allowed_b.sum())
        if total == 0:
            return 0.0
        return int((active & allowed_b).sum()) / total

    get_density = density

    def density_rect(self, allowed: Optional[torch.Tensor] = None) -> float:
        """Active positions over the whole ``q * n`` rectangle (the prior work's figure)."""
        if self._empty:
            return 0.0
        if self._full:
            if allowed is None:
                return 1.0
            return float(allowed.expand(self.shape).float().mean())
        return float(self.active().float().mean())

    def per_head_density(self, allowed: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Density per query head, shape ``(h,)`` (summed over batch and queries)."""
        h = self.shape[1]
        if self._full:
            return torch.ones(h)
        if self._empty:
            return torch.zeros(h)
        active = self.active()
        if allowed is None:
            return active.float().mean(dim=(0, 2, 3)).cpu()
        allowed_b = allowed.expand(self.shape)
        num = (active & allowed_b).sum(dim=(0, 2, 3)).float()
        den = allowed_b.sum(dim=(0, 2, 3)).float().clamp_min(1)
        return (num / den).cpu()

    def num_active(self) -> int:
        if self._full:
            return self.shape[0] * self.shape[1] * self.shape[2] * self.shape[3]
        if self._empty:
            return 0
        if self._values is not None:
            return int(self._values.numel())
        base = compact(self.active())  # a broadcast mask: count its distinct rows once
        return int(torch.count_nonzero(base)) * (self.numel() // base.numel())

    def numel(self) -> int:
        return self.shape[0] * self.shape[1] * self.shape[2] * self.shape[3]

    def __repr__(self) -> str:
        kind = "full" if self._full else "empty" if self._empty else (
            "dense" if self._dense is not None else "sparse")
        return f"Mask(shape={self.shape}, {kind}, device={self._device})"
