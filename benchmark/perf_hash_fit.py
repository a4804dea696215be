"""HashAttention fitting: time per layer with 1 and with N torch threads, interleaved.

    python benchmark/perf_hash_fit.py [--recording prose] [--layers 0,10,20] [--steps 40]
                                      [--threads 1,2] [--repeats 5]

Fits the default study's hashes (``fit_hash_attention: {bits: 32, hat_mlp_layers: 1,
hat_mlp_hidden_size: 32, steps: 40}``) on a few layers of an embedded recording, once per
thread count in each round (rounds interleave the variants, so load from other jobs hits
them alike), and prints the median seconds per layer and the ratio to the first variant.
The study runner fits with ``sah.tuning.steps.hash_fit.FIT_THREADS`` threads.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recording", default="prose")
    parser.add_argument("--layers", default="0,10,20")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    import torch

    from sah.maskers.hash_attention_fit import fit_hash_attention
    from sah.recording.embedded import resolve_recording
    from sah.recording.format import load_recording

    rec = load_recording(resolve_recording(args.recording))
    layers = [int(x) for x in args.layers.split(",")]
    variants = [int(x) for x in args.threads.split(",")]
    options = dict(hat_bits=32, hat_mlp_layers=1, hat_mlp_hidden_size=32, steps=args.steps,
                   layers=layers)
    fit_hash_attention(rec, **{**options, "steps": 1, "layers": layers[:1]})  # warm-up
    times = {v: [] for v in variants}
    for _ in range(args.repeats):
        for threads in variants:
            torch.set_num_threads(threads)
            start = time.perf_counter()
            fit_hash_attention(rec, **options)
            times[threads].append((time.perf_counter() - start) / len(layers))
    load = os.getloadavg()[0]
    print(f"HashAttention fit on {args.recording} ({rec.num_keys} keys), layers {layers}, "
          f"{args.steps} steps, {args.repeats} rounds; load average at the end {load:.1f} "
          f"on {os.cpu_count()} CPUs\n")
    print("| torch threads | s per layer (median) | min | max | vs first |")
    print("|---|---|---|---|---|")
    base = statistics.median(times[variants[0]])
    for threads in variants:
        t = times[threads]
        med = statistics.median(t)
        print(f"| {threads} | {med:.3f} | {min(t):.3f} | {max(t):.3f} | {med / base:.2f}x |")


if __name__ == "__main__":
    main()
