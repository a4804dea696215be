"""Per-layer state a decoding masker keeps between calls in ``sparse_meta_data``.

A decoder passes the same ``sparse_meta_data`` dict at every step while its KV cache grows
by a token; a masker that derives something from every key (MagicPig's key codes, Quest's
page bounds) keeps it there and extends it to the new keys only. The state records how
many keys it covers and a *probe* (the keys at positions 0 and ``count - 1`` as they were
then), so a call on another sequence (or a shorter one) is recognised and recomputed."""

from __future__ import annotations

from typing import Any, Dict, Hashable, Optional

import torch


def probe_keys(keys: torch.Tensor, count: int) -> torch.Tensor:
    """Keys 0 and ``count - 1`` of every (batch, KV head), ``(b, hk, 2, d)``, copied."""
    return keys[:, :, [0, count - 1]].clone()


def same_sequence(probe: torch.Tensor, count: int, keys: torch.Tensor) -> bool:
    """True when ``keys`` (``(b, hk, n, d)``) extend the ``count`` keys the probe was taken
    from: same batch, KV heads, head dim, dtype and device, ``n >= count``, and the same
    first and last covered keys."""
    b, hk, n, d = keys.shape
    if (tuple(probe.shape) != (b, hk, 2, d) or probe.dtype != keys.dtype
            or probe.device != keys.device or n < count):
        return False
    return torch.equal(keys[:, :, [0, count - 1]], probe)


def kept_store(sparse_meta_data: Optional[Dict[Any, Any]], key: str,
               kwargs: Dict[str, Any]) -> Optional[Dict[Hashable, Any]]:
    """The dict under ``sparse_meta_data[key]`` (created on first use), or None when nothing
    may be kept: no ``sparse_meta_data``, or a ``generator`` keyword (fresh draws per call)."""
    if sparse_meta_data is None or isinstance(kwargs.get("generator"), torch.Generator):
        return None
    return sparse_meta_data.setdefault(key, {})


def with_capacity(buffer: torch.Tensor, filled: int, needed: int, dim: int = -1) -> torch.Tensor:
    """``buffer`` (positions along ``dim``, the first ``filled`` in use) with room for
    ``needed`` positions: the same tensor, or a larger copy (about 1/8 spare, as a KV
    cache grows)."""
    if buffer.shape[dim] >= needed:
        return buffer
    shape = list(buffer.shape)
    shape[dim] = needed + needed // 8 + 16
    grown = buffer.new_zeros(shape)
    grown.narrow(dim, 0, filled).copy_(buffer.narrow(dim, 0, filled))
    return grown
