"""Decode-style query positions: where recorded queries sit in a sequence of keys."""

from __future__ import annotations

import torch


def decode_query_positions(num_tokens: int, num_queries: int,
                           final_fraction: float = 0.25) -> torch.Tensor:
    """``num_queries`` strictly increasing positions spread evenly over the final part.

    The span is the last ``max(num_queries, round(final_fraction * num_tokens))`` tokens and
    the last position is always ``num_tokens - 1``, so a recording keeps all ``num_tokens``
    keys. Each query at position ``t`` is what a decoder computes at generation step ``t``
    with a dense KV cache of keys ``[0, t]``. Returns an int64 tensor of shape
    ``(num_queries,)``.
    """
    if num_tokens < 1 or num_queries < 1:
        raise ValueError(f"num_tokens ({num_tokens}) and num_queries ({num_queries}) must be >= 1")
    if num_queries > num_tokens:
        raise ValueError(f"num_queries ({num_queries}) cannot exceed num_tokens ({num_tokens}); "
                         f"lower --queries or raise --tokens")
    if not 0.0 < final_fraction <= 1.0:
        raise ValueError(f"final_fraction must be in (0, 1]; got {final_fraction}")
    span = min(num_tokens, max(num_queries, round(final_fraction * num_tokens)))
    start = num_tokens - span
    if num_queries == 1:
        return torch.tensor([num_tokens - 1], dtype=torch.int64)
    # evenly spaced from start to num_tokens-1; rounding keeps them distinct since span >= q
    pos = torch.linspace(start, num_tokens - 1, num_queries, dtype=torch.float64).round().long()
    return pos
