"""``sah allocate`` on a finished run, for several chains, per layer and per head.

For each chain: the run's best uniform config at density <= ``--density`` against the
allocated one (``sah.runs.allocate``): density and output error on the run's scored
recordings (the allocation's) and on a held-out recording (default: ``manual``, a text the
default run neither scored nor fitted on), the in-model KL of both (``sah validate``'s
protocol, one model load for all), and the wall time of each allocation (curves included,
torch on ``--threads`` threads). Optionally draws the per-layer plot of one chain.

    python benchmark/run_optimize_configs.py --results-dir /tmp/r      # the default run
    python benchmark/perf_allocate_run.py /tmp/r/default [--density 0.10] \\
        [--chains sink_local_oracle_top_k sink_local_quest sink_local sink_local_oracle_top_p] \\
        [--plot docs/images/allocation_default.png] [--no-validate] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from sah.runs import allocation_report as report  # noqa: E402
from sah.runs.allocate import allocate_run_chain, load_heldout, open_run, score_heldout

CHAINS = ["sink_local_oracle_top_k", "sink_local_quest", "sink_local", "sink_local_oracle_top_p"]


def pct(u: float, a: float) -> str:
    return f"{100 * (a / u - 1):+.1f}%"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--density", type=float, default=0.10)
    parser.add_argument("--chains", nargs="+", default=CHAINS)
    parser.add_argument("--heldout", default="manual")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--positions", type=int, default=128)
    parser.add_argument("--no-validate", action="store_true")
    parser.add_argument("--plot", type=Path, help="per-head plot of the first chain")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} CPUs, "
          f"load average at start {os.getloadavg()[0]:.1f} (other jobs may share the cores); "
          f"torch threads {args.threads} for curves and scoring")
    ctx = open_run(args.run)
    ctx.load_recordings()
    held = load_heldout(ctx, args.heldout)
    results = []
    torch.set_num_threads(args.threads)
    for chain in args.chains:
        for per_head in (False, True):
            r = allocate_run_chain(ctx, chain, args.density, per_head)
            score_heldout(ctx, r, args.heldout, held)
            results.append(r)
            print(f"# {chain} {'per head' if per_head else 'per layer'}: {r.seconds:.1f} s "
                  f"(curves {r.curve_seconds:.1f} s; {r.points['run']} run sizes, "
                  f"{r.points['measured']} evaluated)", flush=True)
    torch.set_num_threads(os.cpu_count() or 1)
    if not args.no_validate:
        start = time.perf_counter()
        report.validate(ctx, results, args.heldout, args.tokens, args.positions)
        print(f"# in-model check ({len(results) * 2} configs, {args.tokens} tokens, "
              f"{args.positions} positions): {time.perf_counter() - start:.0f} s")
    scored = "+".join(ctx.labels)
    print(f"\n| chain | allocated | {scored}: uniform error | allocated | change | density "
          f"(uniform / allocated) | {args.heldout} (held out): uniform error | allocated | change "
          f"| KL uniform | KL allocated | seconds |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        hu, ha = r.heldout_figures["uniform"], r.heldout_figures["allocated"]
        print(f"| {r.chain} | {'per head' if r.per_head else 'per layer'} | "
              f"{r.uniform.output_error:.4g} | {r.allocated.output_error:.4g} | "
              f"{pct(r.uniform.output_error, r.allocated.output_error)} | "
              f"{r.uniform.density:.4f} / {r.allocated.density:.4f} | {hu.output_error:.4g} | "
              f"{ha.output_error:.4g} | {pct(hu.output_error, ha.output_error)} | "
              f"{r.kl.get('uniform', float('nan')):.4g} | {r.kl.get('allocated', float('nan')):.4g} | "
              f"{r.seconds:.1f} |")
    if args.plot:
        first = next(r for r in results if r.per_head)
        report.write_plot(first, args.plot)
        print(f"# wrote {args.plot}")
    if args.json:
        args.json.write_text(json.dumps([report.to_dict(r) for r in results], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
