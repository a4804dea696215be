"""Uniform draws without replacement, per row, from a counter-based random stream.

A sampling masker draws ``B`` of a row's ``N`` candidates (allowed, not-yet-active keys)
uniformly without replacement. Row ``r`` (the flat index over batch, head and query) of a
draw with key ``s`` proposes keys from its own stream: proposal ``i = 0, 1, 2, ...`` is

    z_i = splitmix64(s + (r * 2^32 + i) * 0x9E3779B97F4A7C15)     (mod 2^64)
    key_i = lo_r + min(floor(u_i * (hi_r - lo_r)), hi_r - lo_r - 1),  u_i = (z_i >> 11) / 2^53

with ``[lo_r, hi_r)`` the span from the row's first to its last candidate. A proposal is
accepted when it is a candidate not accepted before; the first ``B`` accepted keys are the
sample. Rejecting non-candidates keeps each proposal uniform over the candidates, and the
first ``B`` distinct values of an i.i.d. uniform sequence are a uniform ``B``-subset, so
every subset of size ``B`` is equally likely and each candidate is drawn with probability
exactly ``B / N``. A row with ``2B > N`` draws the ``N - B`` keys it leaves out instead (the
complement of a uniform subset is uniform; this bounds the proposals per row by about
``0.7 (hi - lo)``).

The stream is a pure function of ``(s, r, i)``: the result does not depend on how many
proposals each vectorised round makes, and a plain loop reproduces it exactly
(``tests/test_sampling_draws.py``). ``s`` is one draw of the call's generator (seeded
``seed + layer_idx``), so a fixed seed gives a fixed mask. Cost: a few elementwise
operations per proposal (about ``B`` of them per row) and one pass over the candidates for
``lo`` and ``hi``, where one uniform noise per position of the row (``n`` serial generator
calls) and a sort of the smallest ones did the same job before.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch

GAMMA = 0x9E3779B97F4A7C15
MIX1 = 0xBF58476D1CE4E5B9
MIX2 = 0x94D049BB133111EB
MASK64 = (1 << 64) - 1
#: proposals of a round: the expected number needed times this, plus a margin
ROUND_FACTOR = 1.1
ROUND_MARGIN = 16


def _signed(value: int) -> int:
    """A 64-bit pattern as the int64 holding it (torch multiplies int64 modulo 2^64)."""
    value &= MASK64
    return value - (1 << 64) if value >= 1 << 63 else value


def _shift_right(z: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 bit patterns."""
    return torch.bitwise_and(torch.bitwise_right_shift(z, bits), (1 << (64 - bits)) - 1)


def stream_uniforms(key: int, rows: torch.Tensor, counters: torch.Tensor) -> torch.Tensor:
    """``u`` in [0, 1) (float64, 53 bits) for each (row, counter) pair (broadcasting)."""
    z = (rows.long() * (1 << 32) + counters.long()) * _signed(GAMMA) + _signed(key)
    z = torch.bitwise_xor(z, _shift_right(z, 30)) * _signed(MIX1)
    z = torch.bitwise_xor(z, _shift_right(z, 27)) * _signed(MIX2)
    z = torch.bitwise_xor(z, _shift_right(z, 31))
    return _shift_right(z, 11).double() * (2.0 ** -53)


def stream_key(generator: torch.Generator, device: torch.device) -> int:
    """One draw of ``generator``: the key of a stream."""
    return int(torch.randint(0, 1 << 62, (1,), generator=generator, device=device))


def candidate_span(flat: torch.Tensor, count: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(lo, hi)`` per row of a boolean ``(rows, n)`` with ``count`` candidates per row:
    first candidate, last candidate + 1 (``(0, 1)`` for a row without candidates: it never
    draws). ``argmax`` returns the first maximal index."""
    rows, n = flat.shape
    if flat.dtype == torch.bool and flat.is_contiguous() and n % 8 == 0 and n >= 64:
        # scan 8 flags at a time (as int64 words), then the 8 bytes of the first and last
        # non-zero word: 8x fewer elements than argmax over every flag
        octets = flat.view(torch.uint8).view(rows, n // 8, 8)
        nonzero = (octets.view(torch.int64).squeeze(-1) != 0).to(torch.uint8)
        first = nonzero.argmax(-1)
        last = n // 8 - 1 - nonzero.flip(-1).argmax(-1)
        at = torch.stack([first, last], 1).unsqueeze(-1).expand(rows, 2, 8)
        edge = octets.gather(1, at)  # (rows, 2, 8): the first and the last non-zero word
        lo = first * 8 + edge[:, 0].argmax(-1)
        hi = last * 8 + 8 - edge[:, 1].flip(-1).argmax(-1)
    else:
        as_bytes = flat.to(torch.uint8)
        lo = as_bytes.argmax(-1)
        hi = n - as_bytes.flip(-1).argmax(-1)
    none = count == 0
    return torch.where(none, 0, lo), torch.where(none, 1, hi)


def first_distinct(flat: torch.Tensor, target: torch.Tensor, count: torch.Tensor,
                   key: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per row of the boolean candidates ``flat`` ``(rows, n)``, the first ``target[r]``
    distinct candidates of the row's stream, in draw order: ``(keys, keep)``, both
    ``(rows, width)`` with ``width = max(target)``, ``keep`` flagging the first
    ``target[r]`` entries (the rest is padding). ``count``: candidates per row."""
    rows, n = flat.shape
    device = flat.device
    width = int(target.max()) if rows else 0
    if width <= 0:
        empty = torch.zeros((rows, 0), dtype=torch.long, device=device)
        return empty, empty.bool()
    lo, hi = candidate_span(flat, count)
    span = (hi - lo).double()
    acceptance = count.double().clamp_min(1.0) / span
    row_ids = torch.arange(rows, device=device)
    big = torch.iinfo(torch.int32).max
    first_seen = torch.full((rows, n), big, dtype=torch.int32, device=device)
    have = torch.zeros(rows, dtype=torch.long, device=device)
    keys_parts, take_parts = [], []
    offset = 0
    while True:
        need = target - have
        if not bool((need > 0).any()):
            break
        # accepted proposals expected to go from `have` distinct keys to `target`
        held = count.double() - have.double()
        left = (count.double() - target.double()).clamp_min(0.5)
        expected = torch.where(need > 0, count.double() * torch.log(held.clamp_min(1.0) / left),
                               torch.zeros_like(held)) / acceptance
        proposals = int(math.ceil(float((expected * ROUND_FACTOR + 4.0 * expected.sqrt()).max())))
        proposals += ROUND_MARGIN
        counters = torch.arange(offset, offset + proposals, device=device)
        u = stream_uniforms(key, row_ids.unsqueeze(1), counters.unsqueeze(0))
        step = torch.minimum((u * span.unsqueeze(1)).floor().long(), (hi - lo - 1).unsqueeze(1))
        proposed = lo.unsqueeze(1) + step
        ok = flat.gather(1, proposed) & (need > 0).unsqueeze(1)
        order = counters.to(torch.int32).unsqueeze(0).expand(rows, -1)
        first_seen.scatter_reduce_(1, proposed, torch.where(ok, order, big), reduce="amin")
        new = ok & (first_seen.gather(1, proposed) == order)
        total = have.unsqueeze(1) + new.cumsum(1)
        take = new & (total <= target.unsqueeze(1))
        keys_parts.append(proposed)
        take_parts.append(take)
        have = have + take.sum(1)
        offset += proposals
    keys = torch.cat(keys_parts, 1) if len(keys_parts) > 1 else keys_parts[0]
    take = torch.cat(take_parts, 1) if len(take_parts) > 1 else take_parts[0]
    slot = torch.where(take, take.cumsum(1) - 1, width)
    out = torch.zeros((rows, width + 1), dtype=torch.long, device=device)
    out.scatter_(1, slot, keys)
    chosen = out[:, :width]
    keep = torch.arange(width, device=device).unsqueeze(0) < target.unsqueeze(1)
    return chosen, keep


def uniform_subsets(candidates: torch.Tensor, budget: torch.Tensor, key: int,
                    count: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per row of ``candidates`` (boolean ``(..., n)``, any layout), ``min(budget, N)``
    candidates drawn uniformly without replacement (the rule in the module docstring), as
    ``(chosen, keep)``: key indices ``(rows, width)`` and a flag per entry, the first
    ``B`` of each row kept (the rest padding, pointing at key 0). ``budget`` and ``count``
    (the candidates per row, when the caller has them) broadcast to ``(..., 1)``."""
    n = candidates.shape[-1]
    flat = candidates.reshape(-1, n)
    rows = flat.shape[0]
    device = candidates.device
    if count is None:
        count = candidates.sum(-1, keepdim=True)
    count = count.expand(*candidates.shape[:-1], 1).reshape(rows).long()
    budget = torch.as_tensor(budget, device=device).expand(*candidates.shape[:-1], 1)
    budget = torch.minimum(budget.reshape(rows).long(), count).clamp_min(0)
    if rows == 0 or int(budget.max()) <= 0:
        empty = torch.zeros((rows, 0), dtype=torch.long, device=device)
        return empty, empty.bool()
    leave_out = 2 * budget > count
    target = torch.where(leave_out, count - budget, budget)
    drawn, keep = first_distinct(flat, target, count, key)
    if not bool(leave_out.any()):
        return drawn, keep
    # rows that drew the keys they leave out: the sample is the rest of their candidates
    marked = torch.zeros((rows, n + 1), dtype=torch.bool, device=device)
    marked.scatter_(1, torch.where(keep, drawn, n), True)  # padding lands in column n
    marked = marked[:, :n]
    picks = torch.where(leave_out.unsqueeze(1), flat & ~marked, marked)
    row_of, key_of = picks.nonzero(as_tuple=True)
    width = int(budget.max())
    ptr = torch.nn.functional.pad(budget.cumsum(0), (1, 0))
    slot = torch.arange(key_of.numel(), device=device) - ptr[row_of]
    chosen = torch.zeros((rows, width), dtype=torch.long, device=device)
    chosen[row_of, slot] = key_of
    keep = torch.arange(width, device=device).unsqueeze(0) < budget.unsqueeze(1)
    return chosen, keep
