"""Benchmark 3: chain evaluation time and peak memory at 4K, 16K, 64K and 128K keys.

A synthetic recording (seeded sinks, recency and heavy hitters; one layer; 32 query heads,
8 KV heads, head dim 128, 1 decode query, float16 storage) is made at each size, and a
chain is evaluated on it: mask, sparse output, and the output error against dense
attention. Each size runs in a fresh process so its peak memory is its own. Reported:
median time over repeats, and the peak resident memory the evaluation adds on top of the
loaded tensors, as a multiple of the bytes of the keys and values it reads.

    python benchmark/perf_scaling.py [--sizes 4096 16384 65536 131072] [--chain topk]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CHAINS = {
    "topk": [{"type": "SinkMaskerConfig", "sink_size": 128},
             {"type": "LocalMaskerConfig", "window_size": 128},
             {"type": "OracleTopKConfig", "heavy_size": 0.05}],
    "topk+adaptive": [{"type": "SinkMaskerConfig", "sink_size": 128},
                      {"type": "LocalMaskerConfig", "window_size": 128},
                      {"type": "OracleTopKConfig", "heavy_size": 0.05},
                      {"type": "AdaptiveSamplingMaskerConfig", "base_rate_sampling": 0.05,
                       "epsilon": 0.25, "delta": 0.25, "init_offset": 128, "local_offset": 128}],
}


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def measure_one(num_keys: int, chain: str, repeats: int, threads: int) -> dict:
    import torch

    from sah import ResearchAttention, ResearchAttentionConfig
    from sah.recording.synthetic import make_synthetic_recording

    torch.set_num_threads(threads)
    rec = make_synthetic_recording(num_layers=1, num_heads=32, num_kv_heads=8, head_dim=128,
                                   num_keys=num_keys, num_queries=1, seed=0, dtype=torch.float16)
    layer = rec.layers[0]
    kv_bytes = layer.keys.numel() * layer.keys.element_size() * 2
    attn = ResearchAttention.create_from_config(ResearchAttentionConfig.from_dict(CHAINS[chain]))

    def evaluate():
        ctx = rec.context(0, dtype=None)
        evaluation, _ = attn.evaluate(ctx, layer_idx=0)
        return evaluation

    evaluate()  # warm-up (allocator, kernels)
    import gc
    gc.collect()
    base = _rss_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        evaluation = evaluate()
        times.append(time.perf_counter() - start)
    peak = _rss_kib("VmHWM")
    return {"num_keys": num_keys, "chain": chain, "median_ms": 1000 * statistics.median(times),
            "kv_mib": kv_bytes / 2**20, "extra_peak_mib": (peak - base) / 1024,
            "ratio": (peak - base) * 1024 / kv_bytes, "density": evaluation.density,
            "output_error": evaluation.output_error}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[4096, 16384, 65536, 131072])
    parser.add_argument("--chain", choices=sorted(CHAINS), default="topk")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure_one(args.one, args.chain, args.repeats, args.threads)))
        return
    print(f"# chain '{args.chain}' on synthetic decode data (32 heads, 8 KV heads, d 128, "
          f"1 query, float16 K/V), CPU {args.threads} threads, median of {args.repeats}")
    print("| keys | time ms | K+V MiB | extra peak MiB | peak / (K+V) | density | output_error |")
    print("|---|---|---|---|---|---|---|")
    for size in args.sizes:
        out = subprocess.run([sys.executable, __file__, "--one", str(size), "--chain", args.chain,
                              "--repeats", str(args.repeats), "--threads", str(args.threads)],
                             capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"| {r['num_keys']} | {r['median_ms']:.1f} | {r['kv_mib']:.0f} | "
              f"{r['extra_peak_mib']:.0f} | {r['ratio']:.2f}x | {r['density']:.4f} | "
              f"{r['output_error']:.4f} |", flush=True)


if __name__ == "__main__":
    main()
