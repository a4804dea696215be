"""Budget allocation across layers and heads: error at one mean density, and its cost.

For sink 4 + local 32 + oracle top-k on the default recording (``docs``), this script
measures the chain's error-versus-``heavy_size`` curves (16 sizes, every layer and head),
finds the best uniform config at mean density <= ``--density`` (bisection on the size),
allocates per layer and per head at THAT config's density, and prints, side by side, the
uniform and the allocated configs' output error and density on the allocation recording
and on recordings of other texts (``--heldout``, default ``code``) that the allocation did
not see. It also times the curves and the allocations (median of ``--repeats``), and shows
what a per-head allocation that minimises the MEAN OF HEAD ERRORS (instead of the layers'
true errors) gives.

    python benchmark/perf_allocation.py [--density 0.10] [--heldout code prose]
        [--threads 2] [--repeats 3] [--layers-table] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from sah import (LocalMaskerConfig, OracleTopKConfig, ResearchAttentionConfig,  # noqa: E402
                 SinkMaskerConfig)
from sah.allocation import (Allocation, allocate_heads, allocate_layers,  # noqa: E402
                            allocated_config, evaluate_figures, measure_curves, refine_uniform)
from sah.allocation import solver  # noqa: E402
from sah.evaluate import ContextCache, evaluate_config  # noqa: E402
from sah.recording.embedded import resolve_recording  # noqa: E402
from sah.recording.format import load_recording  # noqa: E402

SIZES = [0, 8, 16, 24, 32, 48, 64, 96, 128, 160, 192, 256, 384, 512, 1024, 2048]


def mean_head_error_allocation(curves, density):
    """The naive per-head objective: every (layer, head) a unit, cost its own relative error."""
    R, S, L, H = curves.head_error.shape
    cost = curves.head_error.mean(0)                                        # (S, L, H)
    weight = (curves.head_share[:, None] * curves.head_density).mean(0)     # (S, L, H)
    units = [(l, h) for l in range(L) for h in range(H)]
    choice = solver.solve([cost[:, l, h] for l, h in units], [weight[:, l, h] for l, h in units],
                          density * L)
    index = np.array(choice).reshape(L, H)
    heads = np.arange(H)
    sq = curves.head_weight[:, None] * curves.head_error ** 2
    layer_error = np.stack([np.sqrt(sq[:, index[l], l, heads].sum(-1)) for l in range(L)], 1)
    share = curves.head_share[:, None] * curves.head_density
    layer_density = np.stack([share[:, index[l], l, heads].sum(-1) for l in range(L)], 1)
    return Allocation(True, density, "dp, mean of head errors", index,
                      [[curves.sizes[i] for i in row] for row in index], list(curves.layers),
                      float(layer_error.mean()), float(layer_density.mean()), layer_error,
                      layer_density)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--density", type=float, default=0.10)
    parser.add_argument("--recording", default="default", help="recording to allocate on")
    parser.add_argument("--heldout", nargs="+", default=["code"], help="recordings not seen")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--layers-table", action="store_true", help="print sizes per layer")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"# torch threads {args.threads}, load average at start {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} CPUs (other jobs may share them)")

    fit = load_recording(resolve_recording(args.recording))
    held = [(name, load_recording(resolve_recording(name))) for name in args.heldout]
    chain = ResearchAttentionConfig([SinkMaskerConfig(4), LocalMaskerConfig(32),
                                     OracleTopKConfig(heavy_size=128)])
    cache = ContextCache(max_recordings=1 + len(held))

    start, cpu = time.perf_counter(), time.process_time()
    curves = measure_curves(chain, [fit], sizes=SIZES, names=[args.recording], cache=cache)
    curve_seconds, curve_cpu = time.perf_counter() - start, time.process_time() - cpu
    start = time.perf_counter()
    size, uniform_config, uniform = refine_uniform(curves, [fit], args.density, cache=cache)
    refine_seconds = time.perf_counter() - start
    target = uniform.density
    print(f"# curves: {len(SIZES)} sizes x {len(curves.layers)} layers x {curves.num_heads} heads "
          f"on {args.recording}: {curve_seconds:.1f} s wall, {curve_cpu:.1f} s CPU; uniform baseline (bisection): "
          f"heavy_size={size}, {refine_seconds:.1f} s; allocation target = its density {target:.5f}")

    variants = [("uniform (best at <= %.2f)" % args.density, None, uniform_config, 0.0)]
    for name, fn, method in [("per layer, dp", allocate_layers, "dp"),
                             ("per layer, lagrangian+fill", allocate_layers, "lagrangian"),
                             ("per head, dp", allocate_heads, "dp"),
                             ("per head, lagrangian+fill", allocate_heads, "lagrangian")]:
        times, alloc = [], None
        for _ in range(args.repeats):
            t = time.perf_counter()
            alloc = fn(curves, target, method)
            times.append(time.perf_counter() - t)
        variants.append((name, alloc, allocated_config(curves, alloc), statistics.median(times)))
    naive = mean_head_error_allocation(curves, target)
    variants.append(("per head, mean-of-head-errors objective", naive,
                     allocated_config(curves, naive), float("nan")))

    rows = []
    for name, alloc, cfg, seconds in variants:
        fit_fig = evaluate_figures(cfg, [fit], [args.recording], cache=cache)
        row = {"variant": name, "fit_error": fit_fig.output_error, "fit_density": fit_fig.density,
               "predicted_error": alloc.error if alloc else None, "allocation_seconds": seconds}
        for hname, rec in held:
            fig = evaluate_figures(cfg, [rec], [hname], cache=cache)
            row[f"{hname}_error"], row[f"{hname}_density"] = fig.output_error, fig.density
        rows.append(row)
    base = rows[0]
    head = f"| variant | {args.recording} error | density | vs uniform |"
    sep = "|---|---|---|---|"
    for hname, _ in held:
        head += f" {hname} error | density | vs uniform |"
        sep += "---|---|---|"
    print(head + " allocation s (median) |\n" + sep + "---|")
    for row in rows:
        line = (f"| {row['variant']} | {row['fit_error']:.4f} | {row['fit_density']:.4f} | "
                f"{100 * (row['fit_error'] / base['fit_error'] - 1):+.1f}% |")
        for hname, _ in held:
            e, d = row[f"{hname}_error"], row[f"{hname}_density"]
            line += (f" {e:.4f} | {d:.4f} | {100 * (e / base[f'{hname}_error'] - 1):+.1f}% "
                     f"(density {100 * (d / base[f'{hname}_density'] - 1):+.1f}%) |")
        seconds = row["allocation_seconds"]
        line += f" {seconds:.3f} |" if seconds == seconds and seconds else " - |"
        print(line)
    per_head_seconds = next(r["allocation_seconds"] for r in rows if r["variant"] == "per head, dp")
    print(f"\none chain, per head, on {args.recording}: curves {curve_seconds:.1f} s + allocation "
          f"{per_head_seconds:.2f} s = {curve_seconds + per_head_seconds:.1f} s wall; the curves took "
          f"{curve_cpu:.1f} s of CPU time (all threads), a bound on the wall time of an idle "
          f"machine with these threads (load average now {os.getloadavg()[0]:.1f})")

    if args.layers_table:
        by_layer, by_head = variants[1][1], variants[3][1]
        uniform_layers = evaluate_config(uniform_config, fit, cache=cache).layers
        print("\n| layer | uniform error | per-layer size | error | per-head sizes | error |\n"
              "|---|---|---|---|---|---|")
        for i, (layer, lf) in enumerate(zip(curves.layers, uniform_layers)):
            print(f"| {layer} | {lf.output_error:.4f} | {by_layer.sizes[i]} | "
                  f"{by_layer.layer_error[0, i]:.4f} | {by_head.sizes[i]} | "
                  f"{by_head.layer_error[0, i]:.4f} |")
    if args.json:
        out = {"density_target": target, "uniform_size": size, "curve_seconds": curve_seconds,
               "curve_cpu_seconds": curve_cpu,
               "rows": rows, "sizes": SIZES,
               "per_layer_sizes": variants[1][1].sizes, "per_head_sizes": variants[3][1].sizes,
               "uniform_layer_error": curves.error[0].tolist()}
        args.json.write_text(json.dumps(out, indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
