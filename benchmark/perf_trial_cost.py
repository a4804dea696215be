"""Trial cost: one chain evaluation on the default recording, against one dense attention pass.

A tuning trial scores a chain on the recorded layers. Everything parameter-free (logits,
row maxima, exponentiated scores, dense outputs, sorted logits) lives in per-layer
contexts built once per recording and shared by all trials (``sah.evaluate.ContextCache``),
so a trial costs only its masks, the sparse estimate and the comparison. This script
prints, for one representative config of each default chain, the median time of one
trial (cached contexts) and its ratio to one dense attention pass over the same layers
(logits, softmax and weighted values: what a trial would cost if nothing were shared).

    python benchmark/perf_trial_cost.py [--layers 0 3 6 ...] [--threads 1] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from sah import AttentionContext, ResearchAttentionConfig  # noqa: E402
from sah.evaluate import ContextCache, evaluate_config  # noqa: E402
from sah.recording import load_recording  # noqa: E402
from sah.recording.default import ensure_default_recording  # noqa: E402

SINK_LOCAL = [{"type": "SinkMaskerConfig", "sink_size": 16},
              {"type": "LocalMaskerConfig", "window_size": 64}]
CHAINS = {
    "sink_local": SINK_LOCAL,
    "+oracle_top_k(0.05)": SINK_LOCAL + [{"type": "OracleTopKConfig", "heavy_size": 0.05}],
    "+oracle_top_p(0.9)": SINK_LOCAL + [{"type": "OracleTopPMaskerConfig", "top_p": 0.9}],
    "+random(0.1)": SINK_LOCAL + [{"type": "RandomSamplingMaskerConfig", "sampling_rate": 0.1}],
    "+magic_pig(20,6)": SINK_LOCAL + [{"type": "MagicPigConfig", "lsh_l": 20, "lsh_k": 6}],
    "+top_k+adaptive": SINK_LOCAL + [
        {"type": "OracleTopKConfig", "heavy_size": 0.02},
        {"type": "AdaptiveSamplingMaskerConfig", "base_rate_sampling": 0.05, "epsilon": 0.2,
         "delta": 0.2, "init_offset": 16, "local_offset": 64}],
    "+quest(0.05,16)": SINK_LOCAL + [{"type": "QuestTopKMaskerConfig", "heavy_size": 0.05,
                                      "page_size": 16}],
    "strided(32,32)": [{"type": "StridedPatternConfig", "window_size": 32, "stride": 32}],
}


def median_seconds(fn, repeats):
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, nargs="+", default=[0, 3, 6, 9, 12, 15, 18, 21, 24, 27])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a trial's CPUs)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    recording = load_recording(ensure_default_recording())
    indices = [recording.layer_ids.index(layer) for layer in args.layers]

    def dense_pass():  # a fresh context per layer: nothing shared
        for index in indices:
            lr = recording.layers[index]
            AttentionContext(lr.queries.float(), lr.keys.float(), lr.values.float(),
                             scaling=recording.scaling,
                             query_positions=recording.query_positions).dense_output

    dense_s = median_seconds(dense_pass, args.repeats)
    cache = ContextCache()
    print(f"# trial cost on the default recording: {len(indices)} layers, "
          f"{recording.num_heads} heads, {recording.num_queries} queries, {recording.num_keys} keys; "
          f"{args.threads} thread(s), median of {args.repeats}")
    print(f"dense attention pass over these layers: {1000 * dense_s:.1f} ms\n")
    print("| chain | trial ms | trial / dense pass | output_error | density |")
    print("|---|---|---|---|---|")
    for name, chain in CHAINS.items():
        config = ResearchAttentionConfig.from_dict(chain)
        result = {}

        def trial():
            result["eval"] = evaluate_config(config, recording, args.layers, cache)

        seconds = median_seconds(trial, args.repeats)
        ev = result["eval"]
        print(f"| {name} | {1000 * seconds:.1f} | {seconds / dense_s:.2f}x | "
              f"{ev.output_error:.4f} | {ev.density:.4f} |", flush=True)


if __name__ == "__main__":
    main()
