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
from typing import Any, Dict, Tuple

import torch

from sah.context import AttentionContext
from sah.mask import Mask
from sah.maskers.base import MaskerConfig, MaskerRegistry, SamplingMasker
from sah.maskers.top_k import candidate_positions
from sah.validation import ConfigError, check_choice, check_int, short_repr


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
        q = (q.view(b, hk, h // hk, nq, d) - mean.unsqueeze(2)).view(b, h, nq, d)
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


@MaskerRegistry.register(MagicPigConfig)
class MagicPig(SamplingMasker):
    """LSH sampling with exact collision probabilities as weights."""

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

    def add_mask(self, keys, queries, values, attention_mask, scaling, dropout,
                 sparse_meta_data, previous_mask: Mask, **kwargs: Any) -> Mask:
        if previous_mask.is_full():
            return previous_mask
        cfg = self.config
        ctx = self.context(keys, queries, values, attention_mask, scaling, kwargs)
        d = ctx.dims
        q, q_norm, k, extra, big = mips_parts(ctx.queries, ctx.keys, cfg.center)
        planes = self.hyperplanes(ctx, kwargs)
        # Codes of q^ = [q/|q|, 0] and k^ = [k/M, extra/M]: positive scalings keep the signs.
        q_codes = pack_codes(q @ planes[:-1], cfg.lsh_k, cfg.lsh_l)  # (b, h, q, L)
        k_codes = pack_codes(k @ planes[:-1] + extra * planes[-1], cfg.lsh_k, cfg.lsh_l)
        g = d.group_size
        q_codes = q_codes.view(d.batch_size, d.num_kv_heads, g, d.seq_len_queries, 1, cfg.lsh_l)
        k_codes = k_codes.view(d.batch_size, d.num_kv_heads, 1, 1, d.seq_len_keys, cfg.lsh_l)
        match = torch.zeros(d.batch_size, d.num_kv_heads, g, d.seq_len_queries, d.seq_len_keys,
                            dtype=torch.bool, device=ctx.device)
        for table in range(cfg.lsh_l):  # one (b, h, q, n) comparison per table bounds memory
            match |= q_codes[..., table] == k_codes[..., table]
        match = match.view(d.mask_shape) & candidate_positions(ctx, previous_mask)
        unit_q = (q / q_norm).reshape(d.batch_size, d.num_kv_heads, g * d.seq_len_queries, -1)
        cosine = (torch.matmul(unit_q, k.transpose(-1, -2)) / big).view(d.mask_shape)  # q^ . k^
        probability = collision_probability(cosine, cfg.lsh_k, cfg.lsh_l)
        probability = probability.clamp_min(torch.finfo(torch.float32).tiny)
        weights = torch.where(match, probability, torch.zeros((), device=ctx.device))
        return previous_mask.merge(Mask.from_dense(weights))
