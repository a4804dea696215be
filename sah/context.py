"""AttentionContext: the tensors of one attention call and what every masker derives from them.

Everything here depends only on the inputs (never on a masker's parameters), so it is
computed once, lazily, and shared by every masker of a chain and by every trial that
scores a chain on the same recorded layer: the GQA-expanded float32 logits, the allowed
(causal and user) positions, the row maxima, the exponentiated scores and the dense
attention output.

Shapes: queries ``(b, h, q, d)``; keys and values ``(b, hk, n, d)`` with ``h % hk == 0``;
query ``i`` sits at absolute key position ``query_positions[i]`` (default ``n - q + i``)
and may see keys ``j <= query_positions[i]`` that its layer type allows
(:mod:`sah.layer_types`: full, sliding window, chunked; full by default).
"""

from __future__ import annotations

import math
import threading
import warnings
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Optional, Tuple

import torch

from sah.layer_types import FULL, LayerType


@dataclass(frozen=True)
class AttentionTensorDimensions:
    batch_size: int
    num_heads: int
    num_kv_heads: int
    seq_len_queries: int
    seq_len_keys: int
    head_dim: int

    @property
    def group_size(self) -> int:
        return self.num_heads // self.num_kv_heads

    @property
    def mask_shape(self) -> tuple:
        return (self.batch_size, self.num_heads, self.seq_len_queries, self.seq_len_keys)


def tensor_dimensions(keys: torch.Tensor, queries: torch.Tensor) -> AttentionTensorDimensions:
    """Check the shapes of an attention call and return its dimensions."""
    if not isinstance(queries, torch.Tensor) or not isinstance(keys, torch.Tensor):
        raise ValueError(f"queries and keys must be torch tensors; got {type(queries).__name__} "
                         f"and {type(keys).__name__}")
    if queries.dim() != 4 or keys.dim() != 4:
        raise ValueError(
            f"queries must be (b, h, q, d) and keys (b, hk, n, d); got {tuple(queries.shape)} "
            f"and {tuple(keys.shape)}")
    b, h, q, d = queries.shape
    bk, hk, n, dk = keys.shape
    if bk != b:
        raise ValueError(f"batch sizes differ: queries {b}, keys {bk}")
    if dk != d:
        raise ValueError(f"head dims differ: queries {d}, keys {dk}")
    if hk == 0 or h % hk != 0:
        raise ValueError(
            f"query heads ({h}) must be a multiple of key/value heads ({hk}) for grouped-query "
            f"attention")
    return AttentionTensorDimensions(b, h, hk, q, n, d)


def check_attention_inputs(queries: torch.Tensor, keys: torch.Tensor,
                           values: torch.Tensor) -> AttentionTensorDimensions:
    """Check an attention call's tensors: shapes (via :func:`tensor_dimensions`), values
    ``(b, hk, n, dv)`` (``dv`` may differ from the keys' head dim), floating-point dtypes
    and no empty dimension. Raises ``ValueError`` naming the tensor, its shape or dtype and
    the fix."""
    dims = tensor_dimensions(keys, queries)
    if not isinstance(values, torch.Tensor) or values.dim() != 4:
        raise ValueError(f"values must be a (b, hk, n, dv) tensor; got "
                         f"{tuple(values.shape) if isinstance(values, torch.Tensor) else type(values).__name__}")
    if tuple(values.shape[:3]) != tuple(keys.shape[:3]):
        raise ValueError(f"values {tuple(values.shape)} do not match keys {tuple(keys.shape)} in "
                         f"(batch, KV heads, keys)")
    for name, t in (("queries", queries), ("keys", keys), ("values", values)):
        if not t.is_floating_point():
            raise ValueError(f"{name}: dtype {t.dtype} is not a floating-point type; attention "
                             f"needs float16, bfloat16, float32 or float64 tensors (convert with .float())")
        if t.numel() == 0:
            raise ValueError(f"{name}: shape {tuple(t.shape)} has a zero-size dimension; attention "
                             f"needs at least one batch entry, head, query, key and channel")
    return dims


def default_query_positions(num_queries: int, num_keys: int,
                            device: Optional[torch.device] = None) -> torch.Tensor:
    """Decode-style positions of a plain call: query ``i`` sits at ``n - q + i``."""
    return torch.arange(num_keys - num_queries, num_keys, device=device)


def check_query_positions(query_positions, dims: AttentionTensorDimensions,
                          device: torch.device) -> torch.Tensor:
    """The call's query positions as an int64 tensor ``(q,)`` or ``(b|1, q)``: the default
    decode-style ``n - q + i`` when None; refused (``ValueError``) when not integers, of the
    wrong shape, negative or beyond the last key."""
    q, n = dims.seq_len_queries, dims.seq_len_keys
    if query_positions is None:
        if q > n:
            raise ValueError(
                f"more queries ({q}) than keys ({n}): with the default positions (query i at "
                f"n - q + i) the first {q - n} queries would sit before the first key; pass "
                f"query_positions (one key index per query) or at least as many keys as queries")
        return default_query_positions(q, n, device)
    pos = torch.as_tensor(query_positions, device=device)
    if pos.dtype == torch.bool or pos.is_floating_point() or pos.is_complex():
        raise ValueError(f"query_positions: got dtype {pos.dtype}; positions are integer key "
                         f"indices (e.g. torch.long); convert them explicitly, nothing is rounded")
    if pos.dim() not in (1, 2) or pos.shape[-1] != q or (
            pos.dim() == 2 and pos.shape[0] not in (1, dims.batch_size)):
        raise ValueError(
            f"query_positions has shape {tuple(pos.shape)}; expected ({q},) or "
            f"({dims.batch_size}, {q}): one key index per query")
    pos = pos.long()
    if pos.numel():
        low, high = int(pos.min()), int(pos.max())
        if low < 0:
            raise ValueError(f"query position {low} is negative; positions are key indices in "
                             f"[0, {n - 1}]")
        if high >= n:
            raise ValueError(f"query position {high} lies beyond the last key ({n - 1})")
    return pos


def row_matrix(t: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Keys or values ``(b, hk, n, c)`` as one matrix of rows ``(R, c)`` and the row of key 0
    of each (batch, KV head), ``(b*hk,)``: key ``j`` of KV row ``r`` is ``matrix[start[r] + j]``.

    No copy when each (batch, KV head) block is a row-contiguous ``(n, c)`` matrix, which
    includes a slice of a larger preallocated KV cache; other layouts (a transposed view)
    are copied once."""
    b, hk, n, c = t.shape
    s0, s1, s2, s3 = t.stride()
    device = t.device
    if s3 == 1 and s2 == c and s1 % c == 0 and s0 % c == 0 and s0 >= 0 and s1 >= 0:
        rows = ((b - 1) * s0 + (hk - 1) * s1) // c + n
        matrix = t.as_strided((rows, c), (c, 1))
        start = (torch.arange(b, device=device).view(-1, 1) * (s0 // c)
                 + torch.arange(hk, device=device).view(1, -1) * (s1 // c)).view(-1)
        return matrix, start
    return t.reshape(-1, c), torch.arange(b * hk, device=device) * n


#: ``warnings.catch_warnings`` swaps process-wide state: one thread at a time (query chunks
#: run on several threads, :mod:`sah.infra.threads`).
_WARNINGS_LOCK = threading.Lock()


def csr_matrix(ptr: torch.Tensor, columns: torch.Tensor, values: torch.Tensor, size) -> torch.Tensor:
    """A sparse CSR tensor without invariant checks or the "beta" warning."""
    with _WARNINGS_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.sparse_csr_tensor(ptr, columns, values, size=size, check_invariants=False)


def sampled_dot_products(left: torch.Tensor, matrix: torch.Tensor, ptr: torch.Tensor,
                         row_of: torch.Tensor, lin: torch.Tensor) -> torch.Tensor:
    """``left[row_of[i]] . matrix[lin[i]]`` (float32, ``(nnz,)``) for ``left`` ``(rows, d)``
    and a key matrix from :func:`row_matrix`; ``(ptr, lin)`` is the CSR structure of the
    positions (``row_of``: the row of each). float32 keys: one sampled dense-dense product
    (``nnz * d`` work, each key row read in place); other dtypes gather the rows and
    convert them."""
    rows = left.shape[0]
    if matrix.dtype == torch.float32:
        ones = torch.ones(lin.numel(), dtype=torch.float32, device=matrix.device)
        pattern = csr_matrix(ptr, lin, ones, (rows, matrix.shape[0]))
        return torch.sparse.sampled_addmm(pattern, left.float(), matrix.t(), beta=0.0).values()
    return (left[row_of].float() * matrix.index_select(0, lin).float()).sum(-1)


#: Up to this many query rows per KV head (group size x queries) count as "few" (decoding):
#: the logits of 2 or more such rows are computed as K q^T, and Quest scores its page
#: bounds against the positive and negative parts of the query.
FEW_QUERY_ROWS = 16

#: Keys per block when converting half-precision keys/values to float32 on the fly.
KEY_BLOCK = 8192


def hide_disallowed(logits: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """``logits`` (``(b, h, q, n)``) with ``-inf`` where ``allowed`` (broadcastable) is False,
    in place. Only the span of key columns holding a disallowed position is touched: for
    causal queries at the end of the keys that is the last few columns, not a pass over
    every logit."""
    blocked = ~allowed
    if blocked.shape[-1] == 1:  # a mask broadcast over the keys: every column
        return logits.masked_fill_(blocked, float("-inf"))
    columns = blocked.reshape(-1, blocked.shape[-1]).any(0).nonzero()
    if columns.numel() == 0:
        return logits
    low, high = int(columns[0]), int(columns[-1]) + 1
    logits[..., low:high].masked_fill_(blocked[..., low:high], float("-inf"))
    return logits


def check_scaling(scaling: Any) -> float:
    """The softmax scale of a call: a finite number > 0 (0 gives uniform weights, a negative
    one inverts the softmax, NaN makes every output NaN); ``ValueError`` otherwise."""
    try:
        value = float(scaling)
    except (TypeError, ValueError):
        value = math.nan
    if isinstance(scaling, (bool, str, bytes)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"scaling: got {scaling!r}; expected a finite number > 0 (the "
                         f"softmax scale, default 1/sqrt(head_dim)), or None for the default")
    return value


class AttentionContext:
    """One attention call: inputs plus cached, parameter-free derived tensors."""

    def __init__(self, queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                 scaling: Optional[float] = None,
                 query_positions: Optional[torch.Tensor] = None,
                 attention_mask: Optional[torch.Tensor] = None,
                 layer_type: Optional[LayerType] = None) -> None:
        self.dims = check_attention_inputs(queries, keys, values)
        #: which keys a query may see in this layer (full causal, sliding window, chunked)
        self.layer_type = layer_type if layer_type is not None else FULL
        self.queries = queries
        self.keys = keys
        self.values = values
        #: the values' head dim (may differ from the queries' and keys' ``dims.head_dim``)
        self.value_dim = int(values.shape[-1])
        self.scaling = (check_scaling(scaling) if scaling is not None
                        else 1.0 / math.sqrt(self.dims.head_dim))
        self.query_positions = check_query_positions(query_positions, self.dims, keys.device)
        self.attention_mask = attention_mask
        #: True when this context serves many chains (a trial cache sets it): maskers may
        #: then build parameter-free precomputations that pay off only when reused.
        self.shared = False

    # ------------------------------------------------------------------ shapes
    @property
    def mask_shape(self) -> tuple:
        return self.dims.mask_shape

    @property
    def device(self) -> torch.device:
        return self.keys.device

    @cached_property
    def key_index(self) -> torch.Tensor:
        """``(n,)`` key positions."""
        return torch.arange(self.dims.seq_len_keys, device=self.device)

    @cached_property
    def positions_4d(self) -> torch.Tensor:
        """Query positions shaped to broadcast against ``(b, h, q, n)``: ``(b|1, 1, q, 1)``."""
        pos = self.query_positions
        if pos.dim() == 1:
            return pos.view(1, 1, -1, 1)
        return pos.view(pos.shape[0], 1, pos.shape[1], 1)

    @property
    def size_keys(self) -> int:
        """The key count sizes given as fractions resolve against: the most keys one query
        of this layer may see (``n``; ``min(W, n)`` in a sliding layer of window ``W``)."""
        return self.layer_type.keys_allowed(self.dims.seq_len_keys)

    # ------------------------------------------------------------------ allowed
    @cached_property
    def allowed(self) -> torch.Tensor:
        """Boolean, broadcastable to ``(b, h, q, n)``: causal (within the layer type's
        window or chunk) and user attention mask."""
        allowed = self.layer_type.allowed(self.key_index.view(1, 1, 1, -1), self.positions_4d)
        am = self.attention_mask
        if am is not None:
            if am.dtype == torch.bool:
                user = am
            else:
                user = am == 0
            try:
                torch.broadcast_shapes(user.shape, self.mask_shape)
            except RuntimeError:
                raise ValueError(
                    f"attention_mask of shape {tuple(user.shape)} does not broadcast to "
                    f"(b, h, q, n) = {self.mask_shape}; slice it to the keys and queries of "
                    f"this call") from None
            allowed = allowed & user
        return allowed

    @cached_property
    def every_key_allowed(self) -> bool:
        """True when every query may see every key: no user mask, every query at the last
        key (a decoding step) and a layer whose window or chunk holds every key, so
        :attr:`allowed` holds no False."""
        pos = self.query_positions
        n = self.dims.seq_len_keys
        return self.attention_mask is None and self.layer_type.keys_allowed(n) >= n and (
            pos.numel() == 0 or int(pos.min()) >= n - 1)

    @cached_property
    def allowed_full(self) -> torch.Tensor:
        return self.allowed.expand(self.mask_shape)

    @cached_property
    def allowed_per_head(self) -> torch.Tensor:
        """Allowed positions per query head, ``(h,)`` float64 on the CPU."""
        per_head = torch.count_nonzero(self.allowed_full, dim=(0, 2, 3))
        return per_head.to(torch.float64).cpu()

    @cached_property
    def logits(self) -> torch.Tensor:
        """``s * Q K^T`` in float32, ``(b, h, q, n)``; ``-inf`` where not allowed."""
        d = self.dims
        # fold the query-head group into the query axis: one (g*q, d) x (d, n) product per KV
        # head, reading each key once (no expanded copy of K). One query row per KV head
        # (decoding without GQA) and many rows: query rows times a transposed view of K,
        # which streams K at memory speed, where K q^T ran 1.7-2x slower (MKL, AVX-512
        # Xeon). A few rows (GQA decoding, 2..FEW_QUERY_ROWS): K q^T, 1.5x faster than
        # q K^T on that CPU (benchmark/perf_chain.py --limits times both).
        q = self.queries.float().reshape(d.batch_size, d.num_kv_heads, d.group_size * d.seq_len_queries,
                                         d.head_dim)
        few_rows = 1 < q.shape[2] <= FEW_QUERY_ROWS

        def product(block):
            if few_rows:
                return torch.matmul(block, q.transpose(-1, -2)).transpose(-1, -2)
            return torch.matmul(q, block.transpose(-1, -2))

        if self.keys.dtype == torch.float32:
            logits = product(self.keys).contiguous()
        else:  # convert keys block by block: no full float32 copy of K
            logits = torch.empty(q.shape[:-1] + (d.seq_len_keys,), dtype=torch.float32, device=self.device)
            for start in range(0, d.seq_len_keys, KEY_BLOCK):
                logits[..., start:start + KEY_BLOCK] = product(self.keys[:, :, start:start + KEY_BLOCK].float())
        logits = logits.view(d.mask_shape)
        logits.mul_(self.scaling)
        if self.every_key_allowed:  # decoding: nothing to hide (no pass over the logits)
            return logits
        return hide_disallowed(logits, self.allowed)

    @cached_property
    def logits_sorted(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(values, indices)`` of each row's logits in descending order, equal logits from
        the most recent key down (the tie rule of every top-k path). Shared by every
        oracle top-k / top-p trial on this call."""
        n = self.dims.seq_len_keys
        values, flipped = torch.sort(self.logits.flip(-1), dim=-1, descending=True, stable=True)
        return values, flipped.neg_().add_(n - 1)

    @cached_property
    def row_max(self) -> torch.Tensor:
        """``(b, h, q, 1)`` row maxima over allowed keys (0 for a row with none)."""
        m = self.logits.amax(dim=-1, keepdim=True)
        return torch.where(torch.isfinite(m), m, torch.zeros_like(m))

    @cached_property
    def exp_scores(self) -> torch.Tensor:
        """``exp(L - m)``, ``(b, h, q, n)`` float32, exactly 0 where not allowed."""
        return torch.exp(self.logits - self.row_max)

    @cached_property
    def row_sum(self) -> torch.Tensor:
        return self.exp_scores.sum(-1, keepdim=True)

    @cached_property
    def probabilities(self) -> torch.Tensor:
        """Dense softmax over allowed keys, float32."""
        return self.exp_scores / self.row_sum.clamp_min(torch.finfo(torch.float32).tiny)

    def weighted_values(self, weights: torch.Tensor) -> torch.Tensor:
        """``sum_j weights[..., j] V_j`` for ``(b, h, q, n)`` weights -> ``(b, h, q, d)``."""
        d = self.dims
        w = weights.reshape(d.batch_size, d.num_kv_heads, d.group_size * d.seq_len_queries,
                            d.seq_len_keys)
        if self.values.dtype == torch.float32:
            out = torch.matmul(w, self.values)
        else:  # convert values block by block: no full float32 copy of V
            out = None
            for start in range(0, d.seq_len_keys, KEY_BLOCK):
                part = torch.matmul(w[..., start:start + KEY_BLOCK],
                                    self.values[:, :, start:start + KEY_BLOCK].float())
                out = part if out is None else out.add_(part)
        return out.view(d.batch_size, d.num_heads, d.seq_len_queries, self.value_dim)

    @cached_property
    def dense_output(self) -> torch.Tensor:
        """Dense attention output ``(b, h, q, d)`` in float32."""
        out = self.weighted_values(self.exp_scores)
        return out / self.row_sum.clamp_min(torch.finfo(torch.float32).tiny)
