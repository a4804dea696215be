"""What a chain's mask costs a kernel: block density and the bytes read per decoded token.

**Block density** (:func:`block_density`): keys are cut into blocks of ``block`` consecutive
positions; per (batch, head, query block) the share of the causally allowed key blocks
(those holding at least one allowed position) that hold at least one active position;
the mean over every (batch, head, query block) with an allowed block. This is what a
block-sparse kernel (FlexAttention's ``BlockMask``) computes: a block with one active
position costs as much as a full one. ``query_block`` query rows form a query block; the
default, 1, is a decoding step (one query per call), as the recordings' decode-style
queries are.

**Bytes ratio** (:func:`bytes_ratio`): the bytes a decode kernel must read for one
decoded token (a query row and its KV heads), over what dense attention reads (the keys
and values of every allowed position, once). Per KV head, the query heads sharing it
(GQA) read the union of their active positions' values; keys are read as the chain's
maskers select them (:func:`key_reading`):

- positional and sampling maskers (sink, local, causal, patterns, random sampling) decide
  without looking at keys: only the active keys are read;
- maskers that score every key from its key vector (oracle top-k, oracle top-p, any
  score-based masker) read every allowed key;
- maskers that score every key from auxiliary data (Quest's page bounds, MagicPig's
  codes, HashAttention's signatures) read that data for every allowed key
  (``aux_bits_per_token`` per KV head) and then only the active keys;
- adaptive sampling also reads its base sample's keys (``n_b`` per row, counted as if it
  overlapped no active key: an upper bound).

A masker class sah does not know is counted as reading every key (an upper bound). Keys
and values are counted at ``kv_bits`` bits per element (16: a bfloat16/float16 KV cache).
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import torch

from sah.maskers.adaptive_sampling import AdaptiveSamplingMasker
from sah.maskers.causal import CausalMasker
from sah.maskers.hash_attention import HashAttentionTopKMasker
from sah.maskers.local import LocalMasker
from sah.maskers.magic_pig import MagicPig
from sah.maskers.quest import QuestTopKMasker
from sah.maskers.random_sampling import RandomSamplingMasker
from sah.maskers.sink import SinkMasker
from sah.maskers.structured import PatternMasker
from sah.maskers.top_k import ScoreSelectionMasker
from sah.infra.checks import resolve_size

ACTIVE_KEYS = "active keys"        # reads the active keys only
AUX_THEN_ACTIVE = "aux data"       # every key's auxiliary data, then the active keys
EVERY_KEY = "every key"            # every allowed key's key vector
BASE_SAMPLE = "base sample"        # the active keys and a base sample of keys
#: How each built-in masker selects its keys (most specific class first).
KEY_READING = (
    (QuestTopKMasker, AUX_THEN_ACTIVE), (MagicPig, AUX_THEN_ACTIVE),
    (HashAttentionTopKMasker, AUX_THEN_ACTIVE), (ScoreSelectionMasker, EVERY_KEY),
    (AdaptiveSamplingMasker, BASE_SAMPLE), (SinkMasker, ACTIVE_KEYS), (LocalMasker, ACTIVE_KEYS),
    (CausalMasker, ACTIVE_KEYS), (PatternMasker, ACTIVE_KEYS), (RandomSamplingMasker, ACTIVE_KEYS),
)
BLOCKS = (64, 128)
KV_BITS = 16


def masker_class(masker: Any) -> type:
    """The masker class behind a masker (a per-head override wrapper names its own)."""
    return getattr(masker, "masker_class", type(masker))


def key_reading(masker: Any) -> Optional[str]:
    """How ``masker`` selects keys (one of the constants above); None for a class sah does
    not know (then counted as :data:`EVERY_KEY`)."""
    cls = masker_class(masker)
    for known, reading in KEY_READING:
        if issubclass(cls, known):
            return reading
    return None


# ---------------------------------------------------------------------- block density
def _pad_last(x: torch.Tensor, size: int, dim: int) -> torch.Tensor:
    extra = -x.shape[dim] % size
    if not extra:
        return x
    pad_shape = list(x.shape)
    pad_shape[dim] = extra
    return torch.cat([x, torch.zeros(pad_shape, dtype=x.dtype, device=x.device)], dim=dim)


def _count(x: torch.Tensor) -> torch.Tensor:
    """Nonzero entries along the last dim of a 0/1 bool or uint8 tensor (a byte sum, which
    torch vectorises)."""
    return (x.view(torch.uint8) if x.dtype == torch.bool else x).sum(-1, dtype=torch.int32)


def _block_any(x: torch.Tensor, block: int, query_block: int) -> torch.Tensor:
    """``(b, h, q, n)`` bool -> ``(b, h, q_blocks, n_blocks)`` bool: any True in each tile.
    Reduced as bytes (and as 8-byte words when the block is a multiple of 8), which torch
    vectorises, not as booleans."""
    b, h, q, n = x.shape
    x = _pad_last(x.contiguous().view(torch.uint8), block, 3)
    if block % 8 == 0:
        x = x.view(torch.int64).view(b, h, q, -1, block // 8)  # 0/1 bytes: words are >= 0
    else:
        x = x.view(b, h, q, -1, block)
    x = x.amax(-1) > 0
    if query_block == 1:
        return x
    x = _pad_last(x.view(torch.uint8), query_block, 2)
    return x.view(b, h, -1, query_block, x.shape[-1]).amax(3) > 0


def block_density(active: torch.Tensor, allowed: torch.Tensor, block: int,
                  query_block: int = 1) -> float:
    """Mean over (batch, head, query block) of the share of allowed key blocks of ``block``
    positions holding an active position. ``active``: ``(b, h, q, n)`` bool; ``allowed``:
    bool, broadcastable to it. NaN when nothing is allowed."""
    if block < 1 or query_block < 1:
        raise ValueError(f"block {block}, query_block {query_block}: expected ints >= 1")
    allowed = allowed.view((1,) * (4 - allowed.dim()) + tuple(allowed.shape))
    allowed_blocks = _block_any(allowed, block, query_block)  # un-broadcast: small
    active_blocks = _block_any(active & allowed, block, query_block)
    per_row_allowed = _count(allowed_blocks).expand(active_blocks.shape[:3])
    rows = per_row_allowed > 0
    if not bool(rows.any()):
        return float("nan")
    share = _count(active_blocks).double() / per_row_allowed.clamp_min(1).double()
    return float(share[rows].mean())


def _allowed_per_kv_head(allowed: torch.Tensor, shape: tuple, kv_heads: int) -> torch.Tensor:
    """Allowed keys per (batch, KV head, query) ``(b, hk, q)`` float64."""
    b, h, q, n = shape
    if allowed.shape[1] == 1:
        count = _count(allowed)  # (b|1, 1, q)
    else:  # a per-head user mask: the group's first query head
        count = _count(allowed.expand(shape).reshape(b, kv_heads, h // kv_heads, q, n)[:, :, 0])
    return count.expand(b, kv_heads, q).double()


# ---------------------------------------------------------------------- bytes
def bytes_ratio(active: torch.Tensor, allowed: torch.Tensor, kv_heads: int, readings: list,
                aux_bits_per_token: float, key_dim: int, value_dim: int,
                base_sample: Optional[torch.Tensor] = None, kv_bits: int = KV_BITS) -> float:
    """Bytes read per decoded token over dense attention's (keys and values once), over
    every (batch, query row): ``active`` ``(b, h, q, n)`` bool, ``allowed`` broadcastable,
    ``readings`` the chain's :func:`key_reading` values, ``aux_bits_per_token`` per key and
    KV head, ``base_sample`` ``(b, h, q)`` extra keys read per row (adaptive sampling)."""
    b, h, q, n = active.shape
    g = h // kv_heads
    allowed = allowed.view((1,) * (4 - allowed.dim()) + tuple(allowed.shape))
    union = (active & allowed).contiguous().view(torch.uint8).view(b, kv_heads, g, q, n).amax(2)
    allowed_count = _allowed_per_kv_head(allowed, active.shape, kv_heads)  # (b, hk, q)
    values_read = _count(union).double()
    if EVERY_KEY in readings or any(r is None for r in readings):
        keys_read = allowed_count
    else:
        keys_read = values_read
        if base_sample is not None:  # each query head draws its own base sample
            extra = base_sample.view(b, kv_heads, g, q).double().sum(2)
            keys_read = torch.minimum(keys_read + extra, allowed_count)
    element = kv_bits / 8.0
    read = (keys_read * key_dim + values_read * value_dim) * element \
        + allowed_count * aux_bits_per_token / 8.0
    dense = allowed_count * (key_dim + value_dim) * element
    total = float(dense.sum())
    return float(read.sum()) / total if total > 0 else float("nan")


def adaptive_base_sample(masker: Any, allowed_count: torch.Tensor, num_keys: int) -> torch.Tensor:
    """Keys adaptive sampling's base sample reads per row: ``n_b = max(2, eff(rate of N))``
    capped at ``N``, with ``N`` the row's allowed keys less the init and local offsets."""
    cfg = masker.config
    window = (allowed_count - resolve_size(cfg.init_offset, num_keys)
              - resolve_size(cfg.local_offset, num_keys)).clamp_min(0)
    rate = cfg.base_rate_sampling
    if isinstance(rate, float):
        base = (rate * window.double()).floor().long()
    else:
        base = torch.full_like(window, int(rate))
    if rate == 0:
        return torch.zeros_like(window)
    return torch.minimum(base.clamp_min(2), window)


def mask_traffic(attention: Any, ctx: Any, layer: Optional[int], mask: Any,
                 kv_bits: int = KV_BITS) -> Dict[str, float]:
    """``block_density_64``, ``block_density_128`` and ``bytes_ratio`` of ``mask``, the mask
    ``attention`` (a :class:`~sah.attention.ResearchAttention`) made on the call ``ctx`` in
    layer ``layer``."""
    allowed = ctx.allowed
    active = allowed.expand(ctx.mask_shape) if mask.is_full() else mask.active() & allowed
    maskers = attention.maskers_for(layer)
    readings = [key_reading(m) for m in maskers]
    base = None
    for m in maskers:
        if key_reading(m) == BASE_SAMPLE:
            counts = _count(allowed).long().expand(ctx.mask_shape[:3])
            part = adaptive_base_sample(m, counts, ctx.dims.seq_len_keys)
            base = part if base is None else base + part
    out = {f"block_density_{size}": block_density(active, allowed, size) for size in BLOCKS}
    out["bytes_ratio"] = bytes_ratio(active, allowed, ctx.dims.num_kv_heads, readings,
                                     attention.aux_bits_per_token(ctx.dims.head_dim, layer),
                                     ctx.dims.head_dim, ctx.value_dim, base, kv_bits)
    return out
