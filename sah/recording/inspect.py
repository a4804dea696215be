"""What a recording holds and what its attention looks like (library side of `sah inspect`).

Per layer, averaged over batch, heads and queries, from the dense softmax
(:attr:`AttentionContext.probabilities`, float32, causal):

* ``first_mass``: softmax mass on the first ``edge_keys`` keys (attention sinks);
* ``last_mass``: mass on the last ``edge_keys`` keys each query may see (recency);
* ``top_mass``: mass on the top ``top_fraction`` of each query's visible keys (how
  concentrated attention is; 1.0 would mean perfectly sparse);
* ``entropy_bits``: mean entropy of the attention rows in bits.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Dict, List, Union

import torch

from sah.recording.format import Recording, load_recording


def layer_statistics(rec: Recording, index: int, edge_keys: int = 128,
                     top_fraction: float = 0.05) -> Dict[str, float]:
    """The statistics above for the ``index``-th recorded layer."""
    ctx = rec.context(index)
    p = ctx.probabilities  # (b, h, q, n)
    n = ctx.dims.seq_len_keys
    keys = ctx.key_index.view(1, 1, 1, -1)
    pos = ctx.positions_4d
    first = p[..., :edge_keys].sum(-1)
    last = (p * (keys > pos - edge_keys)).sum(-1)  # p is 0 beyond each query's position
    visible = ctx.allowed_full.sum(-1)  # keys each query may see (its window in window layers)
    k_top = torch.clamp((visible.float() * top_fraction).ceil().long(), min=1)
    kmax = int(k_top.max())
    top_sorted = p.topk(min(kmax, n), dim=-1).values
    take = torch.arange(top_sorted.shape[-1]).view(1, 1, 1, -1) < k_top.unsqueeze(-1)
    top = (top_sorted * take).sum(-1)
    ent = -(p * torch.log2(p.clamp_min(1e-30))).sum(-1)
    return {"layer": rec.layers[index].layer, "type": rec.layer_type(index).describe(),
            "first_mass": float(first.mean()),
            "last_mass": float(last.mean()), "top_mass": float(top.mean()),
            "entropy_bits": float(ent.mean())}


def summarize(recording: Union[str, Path, Recording], edge_keys: int = 128,
              top_fraction: float = 0.05) -> Dict[str, Any]:
    """Summary fields and per-layer statistics of a recording (path or loaded)."""
    path = None
    if not isinstance(recording, Recording):
        path = Path(recording)
        recording = load_recording(path)
    rec = recording
    meta = rec.metadata
    summary = {
        "path": str(path) if path else None,
        "size_bytes": os.path.getsize(path) if path else None,
        "model": rec.model_id, "text": rec.text_source,
        "text_name": meta.get("text_name"), "text_sha256": meta.get("text_sha256"),
        "token_start": meta.get("token_start"), "token_end": meta.get("token_end"),
        "num_tokens": meta.get("num_tokens"), "format_version": meta.get("format_version"),
        "prefill_chunks": meta.get("prefill_chunks"),
        "layers": rec.layer_ids, "num_heads": rec.num_heads, "num_kv_heads": rec.num_kv_heads,
        "head_dim": rec.head_dim, "num_keys": rec.num_keys, "num_queries": rec.num_queries,
        "query_positions": rec.query_positions.tolist(), "dtype": str(rec.dtype).replace("torch.", ""),
        "scaling": rec.scaling, "sah_version": meta.get("sah_version"),
        "content_hash": meta.get("content_hash"),
    }
    stats: List[Dict[str, float]] = [layer_statistics(rec, i, edge_keys, top_fraction)
                                     for i in range(len(rec.layers))]
    return {"summary": summary, "layers": stats, "edge_keys": edge_keys,
            "top_fraction": top_fraction}


def _size(num_bytes: Any) -> str:
    if num_bytes is None:
        return "-"
    return f"{num_bytes / 2 ** 20:.1f} MiB ({num_bytes} bytes)"


def _text_line(s: Dict[str, Any]) -> str:
    """``docs tokens [0, 2048)``, or what is known of a recording that predates spans."""
    start, end = s.get("token_start"), s.get("token_end")
    name = s.get("text_name")
    if isinstance(start, int) and isinstance(end, int):
        return f"{name or 'text'} tokens [{start}, {end}) ({end - start} tokens)"
    return f"{name or 'unknown'} (no token span stored; {s.get('num_tokens')} tokens)"


def _format_line(s: Dict[str, Any]) -> str:
    version = s.get("format_version")
    if version == 1:
        return "version 1 (its content hash does not cover scaling; re-make it to have it covered)"
    return f"version {version}"


def format_summary(info: Dict[str, Any]) -> str:
    """A plain-text report: the summary table, then one row of statistics per layer."""
    s = info["summary"]
    layers = s["layers"]
    layer_text = (f"{len(layers)} ({layers[0]}..{layers[-1]})" if layers == list(
        range(layers[0], layers[-1] + 1)) and len(layers) > 3 else ", ".join(map(str, layers)))
    pos = s["query_positions"]
    rows = [("file", s["path"] or "-"), ("size on disk", _size(s["size_bytes"])),
            ("model", s["model"]), ("text", _text_line(s)), ("text source", s["text"]),
            ("text sha256", str(s["text_sha256"] or "-")), ("layers", layer_text),
            ("heads", f"{s['num_heads']} query, {s['num_kv_heads']} KV "
                      f"(group {s['num_heads'] // s['num_kv_heads']})"),
            ("head dim", str(s["head_dim"])), ("keys", str(s["num_keys"]) + (f" (recorded as a prefill in {s['prefill_chunks']} chunks)"
                                    if (s.get("prefill_chunks") or 1) > 1 else "")),
            ("queries", f"{s['num_queries']} at positions {pos[0]}..{pos[-1]}"),
            ("dtype", s["dtype"]), ("scaling", f"{s['scaling']:.6g}"),
            ("content hash", str(s["content_hash"])[:23] + "..."),
            ("format", _format_line(s))]
    width = max(len(k) for k, _ in rows)
    lines = [f"{k:<{width}}  {v}" for k, v in rows]
    e, t = info["edge_keys"], info["top_fraction"]
    lines += ["", "softmax mass per layer (mean over heads and queries):",
              f"{'layer':>5}  {'first ' + str(e):>10}  {'last ' + str(e):>10}  "
              f"{'top ' + format(t * 100, 'g') + '%':>8}  {'entropy':>8}  type"]
    for st in info["layers"]:
        lines.append(f"{st['layer']:>5}  {st['first_mass']:>10.3f}  {st['last_mass']:>10.3f}  "
                     f"{st['top_mass']:>8.3f}  {st['entropy_bits']:>6.2f} b  {st['type']}")
    uniform = min(1.0, e / max(1, s["num_keys"]))
    lines.append(f"(uniform attention would give about {uniform:.3f} to the first/last {e} "
                 f"keys and {t:.3f} to the top {t * 100:g}%; entropy at most "
                 f"{math.log2(max(2, s['num_keys'])):.1f} b)")
    return "\n".join(lines)
