"""MagicPig: locality-sensitive-hashing sampling (SimHash over a maximum-inner-product map).

``MagicPigConfig(lsh_l, lsh_k, center=True, packing="int64", seed=42)``:

- if ``center``: keys and queries are centred by the mean of the call's keys (per batch and
  KV head; a query uses the mean of its KV head's keys);
- MIPS map to unit vectors: ``q^ = [q/|q|, 0]``, ``k^ = [k/M, sqrt(M^2-|k|^2)/M]`` with ``M``
  the largest key norm per batch and KV head;
- ``L = lsh_l`` tables of ``K = lsh_k`` random hyperplanes: a ``(d+1, K*L)`` standard normal
  matrix from a generator seeded ``seed + layer_idx`` (or the call's ``generator``); a key's
  code in a table is the ``K`` sign bits, packed into one int64 (``K <= 63``);
- a key is a candidate iff it is allowed, not yet active and shares the full ``K``-bit code
  with the query in at least one table; its weight is its exact collision probability
  ``P = 1 - (1 - (1 - theta/pi)^K)^L``, ``theta = arccos(q^ . k^)`` (a candidate's weight
  is kept >= the smallest normal float32 so it stays active).

Auxiliary memory: ``K * L`` bits per token (the keys' codes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

import torch

from sah.context import AttentionContext, row_matrix, sampled_dot_products
from sah.mask import Mask, _indptr_from_rows
from sah.maskers.base import MaskerConfig, MaskerRegistry, SamplingMasker
from sah.maskers.kept import kept_store, probe_keys, same_sequence, with_capacity
from sah.maskers.top_k import candidate_positions
from sah.infra.checks import ConfigError, check_choice, check_int, short_repr


@dataclass
class MagicPigConfig(MaskerConfig):
    """``lsh_l``: number of hash tables (>= 1); ``lsh_k``: bits per table, in [1, 63];
    ``center``: centre by the keys' mean; ``packing``: code packing ("int64");
    ``seed``: base seed of the hyperplanes (plus ``layer_idx``), default 42."""

    lsh_l: int = 8
    lsh_k: int = 8
    center: bool = True
    packing: str = "int64"
    seed: int = 42
    search_space: Dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        owner = type(self).__name__
        check_int(owner, "lsh_l", self.lsh_l, 1)
        check_int(owner, "lsh_k", self.lsh_k, 1, 63)
        if not isinstance(self.center, bool):
            raise ConfigError(f"{owner}.center: got {short_repr(self.center)}; must be true or false")
        check_choice(owner, "packing", self.packing, ("int64",))
        check_int(owner, "seed", self.seed, 0)


def mips_parts(queries: torch.Tensor, keys: torch.Tensor, center: bool):
    """The pieces of the MIPS map, without building ``(d+1)``-vectors: centred queries
    ``(b, h, q, d)`` and their norms, centred keys ``(b, hk, n, d)``, the extra coordinate
    ``sqrt(M^2-|k|^2)`` ``(b, hk, n, 1)`` and ``M`` ``(b, hk, 1, 1)`` (float32)."""
    q = queries.float()
    k = keys.float()
    b, h, nq, d = q.shape
    hk = k.shape[1]
    if center:
        mean = k.mean(dim=2, keepdim=True)  # (b, hk, 1, d)
        k = k - mean
        q = (q.reshape(b, hk, h // hk, nq, d) - mean.unsqueeze(2)).reshape(b, h, nq, d)
    key_norm = torch.linalg.vector_norm(k, dim=-1, keepdim=True)
    big = key_norm.amax(dim=2, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
    extra = (big * big - key_norm * key_norm).clamp_min(0).sqrt()
    q_norm = torch.linalg.vector_norm(q, dim=-1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
    return q, q_norm, k, extra, big


def mips_transform(queries: torch.Tensor, keys: torch.Tensor, center: bool
                   ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Unit vectors ``q^`` ``(b, h, q, d+1)`` and ``k^`` ``(b, hk, n, d+1)`` (float32) whose
    dot product is monotone in ``q . k`` for each query."""
    q, q_norm, k, extra, big = mips_parts(queries, keys, center)
    k_hat = torch.cat([k / big, extra / big], dim=-1)
    q_hat = torch.cat([q / q_norm, torch.zeros_like(q_norm)], dim=-1)
    return q_hat, k_hat


def collision_probability(cosine: torch.Tensor, bits: int, tables: int) -> torch.Tensor:
    """``1 - (1 - (1 - theta/pi)^K)^L`` with ``theta = arccos(cosine)``."""
    theta = torch.arccos(cosine.clamp(-1.0, 1.0))
    per_table = (1.0 - theta / math.pi) ** bits
    return -torch.expm1(tables * torch.log1p(-per_table.clamp_max(1.0)))


def pack_codes(projections: torch.Tensor, bits: int, tables: int) -> torch.Tensor:
    """Sign bits of ``(..., K*L)`` projections packed per table into int64 ``(..., L)``."""
    signs = (projections > 0).view(*projections.shape[:-1], tables, bits)
    weights = torch.bitwise_left_shift(torch.ones((), dtype=torch.long, device=projections.device),
                                       torch.arange(bits, device=projections.device))
    if bits <= 24:  # exact in float32: one small product instead of int64 arithmetic
        return (signs.float() @ weights.float()).long()
    return (signs.long() * weights).sum(-1)


def lsh_codes(vectors: torch.Tensor, planes: torch.Tensor, bits: int, tables: int) -> torch.Tensor:
    """Packed SimHash codes ``(..., L)`` int64 of ``vectors`` ``(..., d+1)``."""
    return pack_codes(vectors @ planes, bits, tables)


#: ``sparse_meta_data`` key under which MagicPig keeps each layer's key codes.
KEPT_CODES_KEY = "magic_pig_codes"
#: Keys hashed per block (bounds the float32 temporaries of a long call).
HASH_BLOCK = 8192


@dataclass
class KeptCodes:
    """One layer's hashed keys, kept between calls as a decoder keeps them.

    The statistics are frozen at the call that filled the codes: ``mean`` (centring,
    ``(b, hk, 1, d)``, None without centring), ``big`` (the largest centred key norm ``M``,
    ``(b, hk, 1, 1)``) and the hyperplanes. ``codes`` is ``(b, hk, L, capacity)`` int64 with
    the first ``count`` keys filled; ``probe`` (see :mod:`sah.maskers.kept`) recognises
    the same sequence on the next call."""

    mean: Optional[torch.Tensor]
    big: torch.Tensor
    planes: torch.Tensor
    codes: torch.Tensor
    count: int
    probe: torch.Tensor

    def matches(self, keys: torch.Tensor) -> bool:
        return (self.planes.shape[0] == keys.shape[-1] + 1
                and same_sequence(self.probe, self.count, keys))


def centred_keys(keys: torch.Tensor, mean: Optional[torch.Tensor]) -> torch.Tensor:
    k = keys.float()
    return k - mean if mean is not None else k


def key_codes(centred: torch.Tensor, big: torch.Tensor, planes: torch.Tensor, bits: int,
              tables: int) -> torch.Tensor:
    """Codes ``(b, hk, L, m)`` of centred keys ``(b, hk, m, d)`` under the map with max norm
    ``big``: the signs of ``k^ = [k/M, sqrt(M^2-|k|^2)/M]`` (positive scaling by ``1/M``
    dropped; a key longer than ``M``, possible only for keys added after the statistics
    were frozen, gets extra coordinate 0)."""
    norm = torch.linalg.vector_norm(centred, dim=-1, keepdim=True)
    extra = (big * big - norm * norm).clamp_min(0).sqrt()
    codes = pack_codes(centred @ planes[:-1] + extra * planes[-1], bits, tables)
    return codes.transpose(-1, -2)


def hash_keys(keys: torch.Tensor, mean: Optional[torch.Tensor], big: torch.Tensor,
              planes: torch.Tensor, bits: int, tables: int) -> torch.Tensor:
    """:func:`key_codes` of ``keys`` ``(b, hk, m, d)``, :data:`HASH_BLOCK` keys at a time."""
    m = keys.shape[2]
    parts = [key_codes(centred_keys(keys[:, :, start:start + HASH_BLOCK], mean), big, planes,
                       bits, tables) for start in range(0, m, HASH_BLOCK)]
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)


def key_statistics(keys: torch.Tensor, center: bool):
    """``(mean or None, M)`` of a call's keys: the centring mean ``(b, hk, 1, d)`` and the
    largest centred key norm ``(b, hk, 1, 1)`` (at least the smallest normal float32)."""
    mean = keys.float().mean(dim=2, keepdim=True) if center else None
    big = None
    for start in range(0, keys.shape[2], HASH_BLOCK):
        block = centred_keys(keys[:, :, start:start + HASH_BLOCK], mean)
        top = torch.linalg.vector_norm(block, dim=-1, keepdim=True).amax(dim=2, keepdim=True)
        big = top if big is None else torch.maximum(big, top)
    return mean, big.clamp_min(torch.finfo(torch.float32).tiny)


@MaskerRegistry.register(MagicPigConfig)
class MagicPig(SamplingMasker):
    """LSH sampling with exact collision probabilities as weights.

    The keys' codes are kept in ``sparse_meta_data`` (per layer and config), so a decoding
    loop that passes the same dict hashes only the keys added since the last call; the
    centring mean, the max key norm ``M`` and the hyperplanes stay those of the call that
    first filled the codes (see :class:`KeptCodes`). A call with a ``generator`` keyword
    draws its hyperplanes from it and keeps nothing."""

    def aux_bits_per_token(self, head_dim: int) -> float:
        return float(self.config.lsh_k * self.config.lsh_l)

    def hyperplanes(self, ctx: AttentionContext, kwargs: Dict[str, Any]) -> torch.Tensor:
        """The ``(d+1, K*L)`` standard normal projection of this call (float32)."""
        cfg = self.config
        given = kwargs.get("generator")
        device = given.device if isinstance(given, torch.Generator) else torch.device("cpu")
        generator = self.generator(kwargs, cfg.seed, device)
        planes = torch.randn(ctx.dims.head_dim + 1, cfg.lsh_k * cfg.lsh_l,
                             generator=generator, device=device)
        return planes.to(ctx.device)

    def kept_codes(self, ctx: AttentionContext, sparse_meta_data: Optional[Dict[Any, Any]],
                   kwargs: Dict[str, Any]) -> KeptCodes:
        """This layer's codes for every key of the call: reused from ``sparse_meta_data``
        when they were filled for the same sequence (only new keys are hashed), else
        computed from scratch (and kept there)."""
        cfg = self.config
        keys = ctx.keys
        n = ctx.dims.seq_len_keys
        slot = (kwargs.get("layer_idx"), cfg.lsh_l, cfg.lsh_k, cfg.center, cfg.seed)
        store = kept_store(sparse_meta_data, KEPT_CODES_KEY, kwargs)
        kept = store.get(slot) if store is not None else None
        if isinstance(kept, KeptCodes) and kept.matches(keys):
            if kept.count < n:  # hash the keys added since the last call
                new = hash_keys(keys[:, :, kept.count:], kept.mean, kept.big, kept.planes,
                                cfg.lsh_k, cfg.lsh_l)
                kept.codes = with_capacity(kept.codes, kept.count, n)
                kept.codes[..., kept.count:n] = new
                kept.count = n
                kept.probe = probe_keys(keys, n)
            return kept
        mean, big = key_statistics(keys, cfg.center)
        planes = self.hyperplanes(ctx, kwargs)
        codes = hash_keys(keys, mean, big, planes, cfg.lsh_k, cfg.lsh_l)
        kept = KeptCodes(mean, big, planes, codes, n, probe_keys(keys, n))
        if store is not None:
            store[slot] = kept
        return kept

    def add_mask(self, keys, queries, values, attention_mask, scaling, dropout,
                 sparse_meta_data, previous_mask: Mask, **kwargs: Any) -> Mask:
        if previous_mask.is_full():
            return previous_mask
        cfg = self.config
        ctx = self.context(keys, queries, values, attention_mask, scaling, kwargs)
        d = ctx.dims
        kept = self.kept_codes(ctx, sparse_meta_data, kwargs)
        g = d.group_size
        # Codes of q^ = [q/|q|, 0]: positive scalings keep the signs.
        q = ctx.queries.float().reshape(d.batch_size, d.num_kv_heads, g, d.seq_len_queries, d.head_dim)
        if kept.mean is not None:
            q = q - kept.mean.unsqueeze(2)
        q_codes = pack_codes(q @ kept.planes[:-1], cfg.lsh_k, cfg.lsh_l)  # (b, hk, g, q, L)
        k_codes = kept.codes[..., :d.seq_len_keys].unsqueeze(2).unsqueeze(2)  # (b, hk, 1, 1, L, n)
        match = torch.zeros(d.batch_size, d.num_kv_heads, g, d.seq_len_queries, d.seq_len_keys,
                            dtype=torch.bool, device=ctx.device)
        for table in range(cfg.lsh_l):  # one (b, h, q, n) comparison per table bounds memory
            match |= k_codes[..., table, :] == q_codes[..., table:table + 1]
        match = match.view(d.mask_shape) & candidate_positions(ctx, previous_mask)
        # q^ . k^ = (q - mean) . (k - mean) / (|q - mean| M), for the candidates only
        rows = d.batch_size * d.num_heads * d.seq_len_queries
        row_of, key = match.view(rows, d.seq_len_keys).nonzero(as_tuple=True)
        unit_q = q / torch.linalg.vector_norm(q, dim=-1, keepdim=True).clamp_min(
            torch.finfo(torch.float32).tiny)
        unit_q = unit_q.reshape(rows, d.head_dim)
        kv_row = torch.div(row_of, g * d.seq_len_queries, rounding_mode="floor")
        ptr = _indptr_from_rows(row_of, rows)
        key_matrix, key_start = row_matrix(ctx.keys)
        dots = sampled_dot_products(unit_q, key_matrix, ptr, row_of, key_start[kv_row] + key)
        if kept.mean is not None:  # (k - mean) . u = k . u - mean . u
            mean_dot = (unit_q.view(d.batch_size, d.num_kv_heads, -1, d.head_dim)
                        @ kept.mean.transpose(-1, -2)).reshape(rows)
            dots = dots - mean_dot[row_of]
        cosine = dots / kept.big.reshape(-1)[kv_row]
        probability = collision_probability(cosine, cfg.lsh_k, cfg.lsh_l)
        probability = probability.clamp_min(torch.finfo(torch.float32).tiny)
        weights = torch.zeros(rows * d.seq_len_keys, device=ctx.device)
        weights[row_of * d.seq_len_keys + key] = probability
        return previous_mask.merge(Mask.from_dense(weights.view(d.mask_shape), check=False))
