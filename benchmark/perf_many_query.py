"""Many-query calls: each fast path of the chunked ``custom_attention`` switched off, side by side.

The many-query row of ``perf_chain.py`` (sink 128 + local 128 + oracle top-k 0.05; 256
queries at the end of 8192 keys; 32 query heads, 8 KV heads, head dim 128; fp32) timed
against causal SDPA in one interleaved loop, medians, with:

- ``all on``: the code as it is;
- ``chunks one by one``: the query chunks in a plain loop instead of
  ``sah.infra.threads.map_in_threads``;
- ``boolean top-k merge``: top-k picks as a ``(b, h, q, n)`` boolean merged with sink +
  local, the mask's CSR form then taken by a scan (``TopKMasker.select_keys`` off);
- ``whole-row causal fill``: the causal ``-inf`` written with one ``masked_fill_`` over
  every logit instead of the columns holding a disallowed position.

Every variant's output is checked against ``all on`` first (within 1e-4). Prints the CPU model with the
figures.

    python benchmark/perf_many_query.py [--repeats 15] [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from torch.nn.attention.bias import causal_lower_right  # noqa: E402

import sah.attention as attention_module  # noqa: E402
import sah.context as context_module  # noqa: E402
from sah import ResearchAttention, ResearchAttentionConfig  # noqa: E402
from sah.maskers.top_k import TopKMasker  # noqa: E402
from perf_chain import (MANY_QUERY_CHAIN, cpu_description, describe_machine, make_tensors,  # noqa: E402
                        run_loop)


def plain_loop(fn, items, device):
    return [fn(item) for item in items]


def whole_row_fill(logits, allowed):
    return logits.masked_fill_(~allowed, float("-inf"))


def no_key_lists(self, ctx, scores, candidates):
    return None


SWITCHES = {
    "all on": [],
    "chunks one by one": [(attention_module, "map_in_threads", plain_loop)],
    "boolean top-k merge": [(TopKMasker, "select_keys", no_key_lists)],
    "whole-row causal fill": [(context_module, "hide_disallowed", whole_row_fill)],
}


def switched(call, changes):
    def run():
        saved = [(owner, name, getattr(owner, name)) for owner, name, _ in changes]
        for owner, name, value in changes:
            setattr(owner, name, value)
        try:
            return call()
        finally:
            for owner, name, value in saved:
                setattr(owner, name, value)
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=256)
    parser.add_argument("--keys", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(describe_machine(cpu_description()))
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; command: python3 "
          f"benchmark/perf_many_query.py {' '.join(sys.argv[1:])}")
    q, k, v = make_tensors(32, 8, args.queries, args.keys, 128, torch.float32, torch.device("cpu"), seed=1)
    positions = torch.arange(args.keys - args.queries, args.keys)
    attention = ResearchAttention.create_from_config(ResearchAttentionConfig.from_dict(MANY_QUERY_CHAIN))
    causal = causal_lower_right(args.queries, args.keys)

    def chain():
        return attention.custom_attention(None, q, k, v, None, None, query_positions=positions)[0]

    variants = {name: switched(chain, changes) for name, changes in SWITCHES.items()}
    reference = variants["all on"]()
    for name, run in variants.items():
        # not bit-equal: two calls of the same code differed by up to ~2e-5 on the Xeon, in
        # one thread's half of the heads, before this round too: MKL's float32 results depend
        # on the alignment of their inputs unless MKL_CBWR=AUTO,STRICT is set
        if not torch.allclose(run(), reference, atol=1e-4):
            raise SystemExit(f"perf_many_query: {name!r} gives another output than 'all on'")

    def causal_sdpa():
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=causal,
                                                                enable_gqa=True)

    dense, median = run_loop(list(variants.items()), causal_sdpa, args.repeats, torch.device("cpu"))
    print(f"# {args.queries} queries at the end of {args.keys} keys, 32 query heads, 8 KV heads, "
          f"head dim 128, fp32, {args.threads} threads, median of {args.repeats} interleaved rounds\n")
    print("| variant | ms | vs causal SDPA | vs all on |")
    print("|---|---|---|---|")
    for name, ms in [*median.items(), ("causal SDPA", dense)]:
        print(f"| {name} | {ms:.1f} | {ms / dense:.2f}x | {ms / median['all on']:.2f}x |")
    print("\n" + describe_machine(cpu_description()).replace("# CPU", "# after: CPU", 1))


if __name__ == "__main__":
    main()
