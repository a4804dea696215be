"""Helpers for the tests: brute-force references (plain loops or plain float64 formulas,
obviously correct, slow on purpose: attention, the Horvitz-Thompson estimate, sink + local
on a recording, the Pareto front), random inputs, and a chain built from configs."""

import math
from typing import List, Sequence, Tuple

import torch


def allowed_ref(b, h, q, n, positions):
    out = torch.zeros(b, h, q, n, dtype=torch.bool)
    for bi in range(b):
        for hi in range(h):
            for qi in range(q):
                for j in range(n):
                    out[bi, hi, qi, j] = j <= int(positions[qi])
    return out


def logits_ref(queries, keys, scaling):
    b, h, q, d = queries.shape
    hk = keys.shape[1]
    g = h // hk
    out = torch.zeros(b, h, q, keys.shape[2], dtype=torch.float64)
    for bi in range(b):
        for hi in range(h):
            for qi in range(q):
                for j in range(keys.shape[2]):
                    out[bi, hi, qi, j] = scaling * sum(
                        float(queries[bi, hi, qi, c]) * float(keys[bi, hi // g, j, c]) for c in range(d))
    return out


def sparse_attention_ref(queries, keys, values, scaling, positions, weights=None):
    """Dense attention (weights None) or the Horvitz-Thompson estimate with mask ``weights``,
    with loops over every row. Returns (output float64, empty_rows)."""
    b, h, q, d = queries.shape
    hk = keys.shape[1]
    g = h // hk
    n = keys.shape[2]
    logits = logits_ref(queries, keys, scaling)
    out = torch.zeros(b, h, q, d, dtype=torch.float64)
    empty = 0
    for bi in range(b):
        for hi in range(h):
            for qi in range(q):
                allowed = [j for j in range(n) if j <= int(positions[qi])]
                m = max(float(logits[bi, hi, qi, j]) for j in allowed)
                num = [0.0] * d
                den = 0.0
                for j in allowed:
                    w = 1.0 if weights is None else float(weights[bi, hi, qi, j])
                    if w <= 0:
                        continue
                    u = math.exp(float(logits[bi, hi, qi, j]) - m) / w
                    den += u
                    for c in range(d):
                        num[c] += u * float(values[bi, hi // g, j, c])
                if den == 0:
                    empty += 1
                    continue
                for c in range(d):
                    out[bi, hi, qi, c] = num[c] / den
    return out, empty


def chain(*configs):
    """The ResearchAttention of a chain of masker configs."""
    from sah import ResearchAttention, ResearchAttentionConfig
    return ResearchAttention.create_from_config(ResearchAttentionConfig(list(configs)))


def call(attention, queries, keys, values, **kwargs):
    """``attention.custom_attention`` as a model calls it (layer 0, no module, no mask)."""
    return attention.custom_attention(None, queries, keys, values, None, None, 0.0, {},
                                      layer_idx=0, **kwargs)


def estimate_ref(q, k, v, pos, w, scaling=None, allowed_extra=None):
    """Plain float64 Horvitz-Thompson estimate, GQA by repetition, shift by the active max."""
    g = q.shape[1] // k.shape[1]
    kk, vv = k.double().repeat_interleave(g, 1), v.double().repeat_interleave(g, 1)
    scale = scaling if scaling is not None else q.shape[-1] ** -0.5
    logits = q.double() @ kk.transpose(-1, -2) * scale
    allowed = torch.arange(k.shape[2]).view(1, -1) <= pos.view(-1, 1)
    if allowed_extra is not None:
        allowed = allowed & allowed_extra
    active = allowed & (w > 0)
    m = logits.masked_fill(~active, float("-inf")).amax(-1, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    u = torch.where(active, torch.exp(logits - m) / w.double(), torch.zeros(()).double())
    den = u.sum(-1, keepdim=True)
    return (u @ vv) / torch.where(den > 0, den, torch.ones_like(den))


def random_qkv(b=2, h=6, hk=2, q=5, n=23, d=8, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    queries = torch.randn(b, h, q, d, generator=g).to(dtype)
    keys = torch.randn(b, hk, n, d, generator=g).to(dtype)
    values = torch.randn(b, hk, n, d, generator=g).to(dtype)
    return queries, keys, values


def sink_local_error_ref(rec, index: int, sink: int, window: int) -> Tuple[float, float]:
    """(output_error, density) of sink+local on one layer, by plain loops over rows."""
    lr = rec.layers[index]
    b, h, q, d = lr.queries.shape
    hk, n = lr.keys.shape[1], lr.keys.shape[2]
    num = den = 0.0
    active = allowed = 0
    for hi in range(h):
        k, v = lr.keys[0, hi // (h // hk)].double(), lr.values[0, hi // (h // hk)].double()
        for qi in range(q):
            t = int(rec.query_positions[qi])
            logits = [rec.scaling * float(lr.queries[0, hi, qi].double() @ k[j]) for j in range(t + 1)]
            m = max(logits)
            w = [math.exp(x - m) for x in logits]
            dense = sum(w[j] * v[j] for j in range(t + 1)) / sum(w)
            keep = [j for j in range(t + 1) if j < sink or j > t - window]
            sparse = sum(w[j] * v[j] for j in keep) / sum(w[j] for j in keep)
            num += float(((dense - sparse) ** 2).sum())
            den += float((dense ** 2).sum())
            active += len(keep)
            allowed += t + 1
    return math.sqrt(num / den), active / allowed


def brute_force_front(points: Sequence[Tuple[float, float]]) -> List[int]:
    """Indices of the finite (density, error) points that no other finite point dominates
    (exact duplicates do not dominate each other: all are kept; NaN and inf points are never
    on the front), sorted by (density, error, index)."""
    finite = [i for i, (d, e) in enumerate(points) if math.isfinite(d) and math.isfinite(e)]
    keep = [i for i in finite if not any(
        points[j][0] <= points[i][0] and points[j][1] <= points[i][1]
        and (points[j][0] < points[i][0] or points[j][1] < points[i][1]) for j in finite)]
    return sorted(keep, key=lambda i: (points[i][0], points[i][1], i))
