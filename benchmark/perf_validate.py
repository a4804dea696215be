"""Cost of in-model validation (``sah validate``) per config, beside the cost of a trial.

For one representative config of each chain of the default study (``configs/default.yaml``;
HashAttention with randomly initialised hash functions of the study's shape, which cost
the same as fitted ones), measured in one interleaved loop (medians over ``--repeats``):

- *dense pass*: prefill of ``tokens - positions`` positions plus the dense chunk, once per
  text and shared by every config of a ``sah validate`` call;
- *dense chunk*: the ``positions``-token chunk alone with the model's own attention (the
  model's share of a validated config);
- *validate*: one validated config = the chunk with the chain in every layer, its per-layer
  figures and the KL / top-1 / perplexity figures (``InModelValidator.sparse``);
- *trial*: one ``evaluate_config`` on the default recording, all 30 layers, on cached
  layer contexts (what one configuration of the default study costs inside its trial;
  ``benchmark/perf_trial_cost.py`` times 10 layers the same way).

    python benchmark/perf_validate.py [--tokens 2048] [--positions 128] [--text docs]
                                      [--threads 1] [--repeats 3] [--chains sink_local ...]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from sah import ResearchAttention, ResearchAttentionConfig  # noqa: E402
from sah.evaluate import ContextCache, evaluate_config  # noqa: E402
from sah.inmodel import InModelValidator  # noqa: E402
from sah.recording import load_recording  # noqa: E402
from sah.recording.default import ensure_default_recording  # noqa: E402
from sah.recording.default_model import load_default_model  # noqa: E402

SINK_LOCAL = [{"type": "SinkMaskerConfig", "sink_size": 16},
              {"type": "LocalMaskerConfig", "window_size": 64}]
#: One representative config per chain of the default study.
CHAINS = {
    "sink_local": SINK_LOCAL,
    "sink_local_oracle_top_k": SINK_LOCAL + [{"type": "OracleTopKConfig", "heavy_size": 0.05}],
    "sink_local_oracle_top_p": SINK_LOCAL + [{"type": "OracleTopPMaskerConfig", "top_p": 0.9}],
    "sink_local_random_sampling": SINK_LOCAL + [{"type": "RandomSamplingMaskerConfig",
                                                 "sampling_rate": 0.1}],
    "sink_local_magic_pig": SINK_LOCAL + [{"type": "MagicPigConfig", "lsh_l": 20, "lsh_k": 6}],
    "sink_local_oracle_top_k_adaptive": SINK_LOCAL + [
        {"type": "OracleTopKConfig", "heavy_size": 0.02},
        {"type": "AdaptiveSamplingMaskerConfig", "base_rate_sampling": 0.05, "epsilon": 0.2,
         "delta": 0.2, "init_offset": 16, "local_offset": 64}],
    "sink_local_quest": SINK_LOCAL + [{"type": "QuestTopKMaskerConfig", "heavy_size": 0.05,
                                       "page_size": 16}],
    "sink_local_hash_attention": SINK_LOCAL + [
        {"type": "HashAttentionTopKMaskerConfig", "heavy_size": 0.05, "hat_bits": 32,
         "hat_mlp_layers": 1, "hat_mlp_hidden_size": 32}],
    "strided": [{"type": "StridedPatternConfig", "window_size": 32, "stride": 32}],
}


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--positions", type=int, default=128)
    parser.add_argument("--text", default="docs")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a trial's CPUs)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chains", nargs="+", choices=sorted(CHAINS), default=list(CHAINS))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    load_s, (model, tokenizer) = timed(lambda: load_default_model(attn_implementation="sdpa"))
    recording = load_recording(ensure_default_recording())
    validator = InModelValidator(model, tokenizer, args.tokens, args.positions)
    window = validator.window(args.text)
    configs = {name: ResearchAttentionConfig.from_dict(CHAINS[name]) for name in args.chains}
    attentions = {name: ResearchAttention.create_from_config(c) for name, c in configs.items()}
    cache = ContextCache()
    for config in configs.values():  # warm the shared layer contexts, as a worker has them
        evaluate_config(config, recording, cache=cache)

    times = {key: [] for key in ["dense pass", "dense chunk"]
             + [f"{n}/{kind}" for n in configs for kind in ("validate", "trial")]}
    figures, trials = {}, {}
    for _ in range(args.repeats):
        seconds, reference = timed(lambda: validator.dense(window))
        times["dense pass"].append(seconds)

        def dense_chunk():
            validator.forward(validator.chunk_ids(window), reference.cache)
            validator._crop(reference.cache)
        times["dense chunk"].append(timed(dense_chunk)[0])
        for name in configs:
            seconds, figures[name] = timed(lambda: validator.sparse(reference, attentions[name]))
            times[f"{name}/validate"].append(seconds)
            seconds, trials[name] = timed(lambda: evaluate_config(configs[name], recording,
                                                                  cache=cache))
            times[f"{name}/trial"].append(seconds)
    med = {key: statistics.median(values) for key, values in times.items()}

    print(f"# in-model validation cost: {args.tokens} tokens, last {args.positions} sparse, "
          f"text {args.text}, SmolLM2-135M float32 on CPU, {args.threads} thread(s), median of "
          f"{args.repeats}; {platform.node()}, {time.strftime('%Y-%m-%d')}")
    print(f"model load {load_s:.1f} s (once per `sah validate` call); dense pass (prefill "
          f"{args.tokens - args.positions} + dense chunk {args.positions}, once per text): "
          f"{med['dense pass']:.2f} s; dense chunk alone: {med['dense chunk']:.3f} s\n")
    print("| chain | validate s | validate / dense chunk | trial s (30 layers) | "
          "validate / trial | in-model kl | in-model density | offline density |")
    print("|---|---|---|---|---|---|---|---|")
    for name in configs:
        v, t = med[f"{name}/validate"], med[f"{name}/trial"]
        f = figures[name]
        print(f"| {name} | {v:.3f} | {v / med['dense chunk']:.2f}x | {t:.3f} | {v / t:.1f}x | "
              f"{f.kl:.4g} | {f.density:.4f} | {trials[name].density:.4f} |", flush=True)
    total_v = sum(med[f"{n}/validate"] for n in configs)
    total_t = sum(med[f"{n}/trial"] for n in configs)
    print(f"\nall {len(configs)} configs: validate {total_v:.2f} s + dense pass "
          f"{med['dense pass']:.2f} s (+ model load {load_s:.0f} s); trials {total_t:.2f} s")


if __name__ == "__main__":
    main()
