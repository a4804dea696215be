"""Timings of the recording side: synthetic generation, save/load, and scoring on the default.

Run: ``python benchmark/perf_recording.py [--threads 2]``. Prints one line per figure.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from sah.attention import ResearchAttention, ResearchAttentionConfig
    from sah.maskers.local import LocalMaskerConfig
    from sah.maskers.sink import SinkMaskerConfig
    from sah.recording import load_recording, make_synthetic_recording, save_recording
    from sah.recording.default import ensure_default_recording

    rec, s = timed(lambda: make_synthetic_recording(num_layers=1, num_heads=8, num_kv_heads=2,
                                                    num_keys=131072, num_queries=16))
    print(f"synthetic 131072 keys, 1 layer, 8/2 heads, dim 64: generated in {s:.2f} s")
    with tempfile.TemporaryDirectory() as d:
        path, s = timed(lambda: save_recording(rec, os.path.join(d, "big.safetensors")))
        print(f"  saved in {s:.2f} s ({os.path.getsize(path) / 2 ** 20:.1f} MiB)")
        _, s = timed(lambda: load_recording(path))
        print(f"  loaded and verified in {s:.2f} s")

    path, s = timed(lambda: ensure_default_recording(progress=False))
    print(f"default recording {path.name}: ensure (cached) {s:.2f} s, "
          f"{os.path.getsize(path) / 2 ** 20:.1f} MiB")
    rec = load_recording(path)
    chain = ResearchAttention.create_from_config(ResearchAttentionConfig(
        [SinkMaskerConfig(sink_size=128), LocalMaskerConfig(window_size=256)]))
    for r in range(args.repeats):
        ctxs, s_ctx = timed(lambda: [rec.context(i) for i in range(len(rec.layers))])
        _, s_dense = timed(lambda: [c.dense_output for c in ctxs])
        _, s_eval = timed(lambda: [chain.evaluate(c) for c in ctxs])
        _, s_eval2 = timed(lambda: [chain.evaluate(c) for c in ctxs])
        print(f"  repeat {r}: {len(ctxs)} layers: contexts {s_ctx:.2f} s, dense outputs "
              f"{s_dense:.2f} s, sink+local chain {s_eval:.2f} s (again {s_eval2:.2f} s)")


if __name__ == "__main__":
    main()
