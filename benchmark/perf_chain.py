"""Benchmark 1: chain latency on the long-context decode case.

batch 1, 32 query heads (and a GQA variant with 8 KV heads), 1 query, 32768 keys, head dim
128. For each chain: mask time (the chain's maskers, logits included), estimator time
(the sparse output), total, and the ratio of the total to one dense attention call
(torch ``scaled_dot_product_attention``) on the same tensors, timed side by side in the
same run. Figures are medians over ``--repeats`` runs after a warm-up.

    python benchmark/perf_chain.py                       # CPU, fp32, 2 threads
    python benchmark/perf_chain.py --device cuda --dtype bfloat16
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from sah import AttentionContext, ResearchAttention, ResearchAttentionConfig  # noqa: E402
from sah.estimator import sparse_attention  # noqa: E402

SINK_LOCAL = [{"type": "SinkMaskerConfig", "sink_size": 128},
              {"type": "LocalMaskerConfig", "window_size": 128}]
CHAINS = {
    "sink+local": SINK_LOCAL,
    "+oracle_top_k(0.05)": SINK_LOCAL + [{"type": "OracleTopKConfig", "heavy_size": 0.05}],
    "+oracle_top_p(0.9)": SINK_LOCAL + [{"type": "OracleTopPMaskerConfig", "top_p": 0.9}],
    "+top_k+adaptive": SINK_LOCAL + [
        {"type": "OracleTopKConfig", "heavy_size": 0.05},
        {"type": "AdaptiveSamplingMaskerConfig", "base_rate_sampling": 0.05, "epsilon": 0.25,
         "delta": 0.25, "init_offset": 128, "local_offset": 128}],
    "+magic_pig(8,8)": SINK_LOCAL + [{"type": "MagicPigConfig", "lsh_l": 8, "lsh_k": 8}],
    "quest(0.05,16)": [{"type": "QuestTopKMaskerConfig", "heavy_size": 0.05, "page_size": 16}],
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device):
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - start, out


def median_ms(values):
    return 1000.0 * statistics.median(values)


def make_tensors(heads, kv_heads, keys, head_dim, dtype, device, seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    q = torch.randn(1, heads, 1, head_dim, generator=g)
    k = torch.randn(1, kv_heads, keys, head_dim, generator=g)
    v = torch.randn(1, kv_heads, keys, head_dim, generator=g)
    # a few attention sinks and heavy hitters so top-k has something to find
    k[:, :, :4] += 2.0 * q.view(1, -1, head_dim)[:, :kv_heads].unsqueeze(2) / head_dim ** 0.5
    return (t.to(device=device, dtype=dtype) for t in (q, k, v))


def bench_case(heads, kv_heads, args, device, dtype):
    q, k, v = make_tensors(heads, kv_heads, args.keys, args.head_dim, dtype, device)

    def dense():
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, enable_gqa=kv_heads != heads)

    for _ in range(2):
        dense()
    dense_times = [timed(dense, device)[0] for _ in range(args.repeats)]
    dense_ms = median_ms(dense_times)
    rows = []
    for name, chain in CHAINS.items():
        try:
            attn = ResearchAttention.create_from_config(ResearchAttentionConfig.from_dict(chain))
        except ValueError as exc:
            rows.append((name, None, None, None, None, f"not available ({exc})"))
            continue

        def mask_only():
            ctx = AttentionContext(q, k, v)
            return ctx, attn.compute_mask(ctx, layer_idx=0)

        def run_once():
            t_mask, (ctx, mask) = timed(mask_only, device)
            t_est, _ = timed(lambda: sparse_attention(ctx, mask), device)
            return t_mask, t_est, mask.density(ctx.allowed)

        run_once()
        samples = [run_once() for _ in range(args.repeats)]
        mask_ms = median_ms([s[0] for s in samples])
        est_ms = median_ms([s[1] for s in samples])
        total_ms = median_ms([s[0] + s[1] for s in samples])
        rows.append((name, mask_ms, est_ms, total_ms, total_ms / dense_ms, f"density {samples[-1][2]:.4f}"))
    return dense_ms, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=32768)
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--gqa-kv-heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None, help="default float32 on CPU, bfloat16 on CUDA")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    print(f"# chain latency: 1 query, {args.keys} keys, head dim {args.head_dim}, {dtype}, "
          f"{device}{f', {args.threads} threads' if device.type == 'cpu' else ''}, "
          f"median of {args.repeats}")
    for kv_heads in (args.heads, args.gqa_kv_heads):
        dense_ms, rows = bench_case(args.heads, kv_heads, args, device, dtype)
        print(f"\n## {args.heads} heads, {kv_heads} KV heads: dense SDPA {dense_ms:.2f} ms")
        print("| chain | mask ms | estimator ms | total ms | total / dense | note |")
        print("|---|---|---|---|---|---|")
        for name, mask_ms, est_ms, total_ms, ratio, note in rows:
            if mask_ms is None:
                print(f"| {name} | - | - | - | - | {note} |")
            else:
                print(f"| {name} | {mask_ms:.2f} | {est_ms:.2f} | {total_ms:.2f} | {ratio:.2f}x | {note} |")


if __name__ == "__main__":
    main()
