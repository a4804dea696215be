"""Check ``sah speed`` against an independent timing of the same call.

Runs ``sah speed --json`` (a subprocess, as a user runs it), then times the same call
here with a plain loop of its own: the same chain config, the same tensors
(:func:`sah.speed.decode_tensors` with the same shape and seed), the chain's
``sparse_meta_data`` kept across calls, interleaved with its own dense
``scaled_dot_product_attention`` call, one warm-up call each, medians. Prints both ratios
and their quotient; they should agree within about 30% (the two runs are not
simultaneous, so a busy machine moves them apart).

    python benchmark/perf_speed_check.py                        # sink+local+top-k 0.05, 32768 keys
    python benchmark/perf_speed_check.py --config C.yaml --keys 8192 --heads 9 --kv-heads 3 --head-dim 64
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from sah import ResearchAttention, ResearchAttentionConfig  # noqa: E402
from sah.speed import DecodeShape, cpu_model, decode_tensors  # noqa: E402

DEFAULT_CHAIN = """masker_configs:
  - {type: SinkMaskerConfig, sink_size: 128}
  - {type: LocalMaskerConfig, window_size: 128}
  - {type: OracleTopKConfig, heavy_size: 0.05}
"""


def own_timing(config_path: str, shape: DecodeShape, repeats: int, threads: int):
    torch.set_num_threads(threads)
    t = decode_tensors(shape)  # the same tensors sah speed makes (seed 0, float32, cpu)
    attention = ResearchAttention.create_from_config(ResearchAttentionConfig.from_file(config_path))
    kept = {}
    gqa = shape.kv_heads != shape.heads
    chain_ms, dense_ms = [], []
    with torch.inference_mode():
        for i in range(repeats + 1):  # round 0 warms both up and is not counted
            start = time.perf_counter()
            attention.custom_attention(None, t.queries, t.keys, t.values, None, t.scaling, 0.0,
                                       kept, layer_idx=0)
            middle = time.perf_counter()
            torch.nn.functional.scaled_dot_product_attention(t.queries, t.keys, t.values,
                                                             scale=t.scaling, enable_gqa=gqa)
            end = time.perf_counter()
            if i:
                chain_ms.append(1000 * (middle - start))
                dense_ms.append(1000 * (end - middle))
    return statistics.median(chain_ms), statistics.median(dense_ms)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="chain config (default: sink 128 + local 128 + oracle top-k 0.05)")
    parser.add_argument("--keys", type=int, default=32768)
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--kv-heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    shape = DecodeShape(args.keys, args.heads, args.kv_heads, args.head_dim)
    with tempfile.TemporaryDirectory() as tmp:
        config = args.config or str(Path(tmp) / "chain.yaml")
        if not args.config:
            Path(config).write_text(DEFAULT_CHAIN)
        out = Path(tmp) / "speed.json"
        cmd = [sys.executable, "-m", "sah.cli", "speed", "--config", config, "--keys", str(args.keys),
               "--heads", str(args.heads), "--kv-heads", str(args.kv_heads), "--head-dim",
               str(args.head_dim), "--repeats", str(args.repeats), "--threads", str(args.threads),
               "--json", str(out)]
        subprocess.run(cmd, check=True, cwd=ROOT, env={**__import__("os").environ, "PYTHONPATH": str(ROOT)},
                       stdout=subprocess.DEVNULL)
        cli = json.loads(out.read_text())
        chain, dense = own_timing(config, shape, args.repeats, args.threads)
    own_ratio = chain / dense
    print(f"# {cpu_model()}, torch {torch.__version__}, {args.threads} threads; {shape.keys} keys, "
          f"{shape.heads}/{shape.kv_heads} heads, head dim {shape.head_dim}, 1 query, float32; "
          f"median of {args.repeats}")
    print(f"sah speed:   chain {cli['ms']:.2f} ms, dense {cli['dense_ms']:.2f} ms, ratio {cli['ratio']:.3f}x")
    print(f"plain loop:  chain {chain:.2f} ms, dense {dense:.2f} ms, ratio {own_ratio:.3f}x")
    print(f"sah speed ratio / plain-loop ratio: {cli['ratio'] / own_ratio:.3f} "
          f"({'within' if abs(cli['ratio'] / own_ratio - 1) <= 0.3 else 'OUTSIDE'} 30%)")


if __name__ == "__main__":
    main()
