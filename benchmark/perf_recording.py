"""Timings of the recording side: synthetic generation, save/load, and scoring on the default;
with ``--long``, time and peak memory of ``sah record`` at 2048 and 8192 tokens instead.

Run: ``python benchmark/perf_recording.py [--threads 2]``. Prints one line per figure.

``python benchmark/perf_recording.py --long [--repeats 1]`` runs every variant below in a
FRESH process (so its peak RSS, from ``resource.getrusage``, is its own), the variants
interleaved in each repeat, and prints a table of medians (the model load's transient peak
is reported apart from the recording phase's, see ``_CHILD``): ``sah record`` of the embedded
model on the ``docs`` text (all 30 layers, 32 queries, float16) in one pass or as a chunked
prefill, sdpa attention; the same with eager attention on layer 0 only (where the n x n
scores show); and a process that only loads the model (the baseline every row includes).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: (label, tokens, attention, chunk size, layers); tokens 0 = load the model only
LONG_VARIANTS = [
    ("model load only", 0, "sdpa", 0, ""),
    ("2048 tokens, one pass", 2048, "sdpa", 2048, "all"),
    ("2048 tokens, chunks of 512", 2048, "sdpa", 512, "all"),
    ("8192 tokens, one pass", 8192, "sdpa", 8192, "all"),
    ("8192 tokens, chunks of 2048 (default)", 8192, "sdpa", 2048, "all"),
    ("8192 tokens, chunks of 512", 8192, "sdpa", 512, "all"),
    ("eager, layer 0: 2048 tokens, one pass", 2048, "eager", 2048, "0"),
    ("eager, layer 0: 8192 tokens, one pass", 8192, "eager", 8192, "0"),
    ("eager, layer 0: 8192 tokens, chunks of 2048", 8192, "eager", 2048, "0"),
]

#: Runs in a fresh process: `sah record` (or only the model load), then prints JSON. The
#: model loader is wrapped to note the resident memory after loading and to reset the
#: kernel's peak-RSS mark (``/proc/self/clear_refs``), so the peak of the recording phase
#: itself is seen apart from the model load's own (higher) transient peak.
_CHILD = """
import json, sys, time
import torch
torch.set_num_threads(int(sys.argv[1]))

def status(key):
    with open("/proc/self/status") as fh:
        return next(int(l.split()[1]) / 1024 for l in fh if l.startswith(key + ":"))

from sah.recording import default_model
after_load = {}
real_load = default_model.load_model
def load_model(*a, **kw):
    out = real_load(*a, **kw)
    after_load["rss"] = status("VmRSS")
    after_load["load_peak"] = status("VmHWM")
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    return out
default_model.load_model = load_model
start = time.perf_counter()
argv = sys.argv[2:]
if argv:
    from sah.cli import main
    assert main(argv) == 0
    from safetensors import safe_open
    with safe_open(argv[argv.index("--out") + 1], "pt") as fh:
        meta = json.loads(fh.metadata()["sah"])
    record = meta["record_seconds"]
else:
    load_model("default")
    record = 0.0
# clear_refs also resets getrusage's ru_maxrss: the process peak is the larger of the two
print(json.dumps({"seconds": time.perf_counter() - start, "record_seconds": record,
                  "process_peak_mib": max(after_load["load_peak"], status("VmHWM")),
                  "rss_after_load_mib": after_load["rss"],
                  "recording_peak_mib": status("VmHWM") if argv else 0.0}))
"""


def run_child(threads: int, argv: list) -> dict:
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run([sys.executable, "-c", _CHILD, str(threads), *argv], env=env,
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{argv}: exit {done.returncode}\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def long_context(threads: int, repeats: int) -> None:
    """Time and peak RSS of `sah record` per variant (fresh processes, interleaved)."""
    results = {label: [] for label, *_ in LONG_VARIANTS}
    with tempfile.TemporaryDirectory() as d:
        for r in range(repeats):
            for label, tokens, attn, chunk, layers in LONG_VARIANTS:
                argv = [] if not tokens else [
                    "record", "--text", "docs", "--tokens", str(tokens), "--layers", layers,
                    "--attn", attn, "--chunk-size", str(chunk), "--no-progress",
                    "--out", os.path.join(d, "r.safetensors")]
                results[label].append(run_child(threads, argv))
                print(f"  repeat {r}: {label}: {results[label][-1]}", file=sys.stderr, flush=True)
    print("| variant | wall s (process) | forward + capture s | process peak RSS MiB | "
          "RSS after model load MiB | peak RSS while recording MiB | recording's own peak MiB |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label, runs in results.items():
        med = {k: statistics.median(run[k] for run in runs) for k in runs[0]}
        own = med["recording_peak_mib"] - med["rss_after_load_mib"]
        recording = (f"{med['recording_peak_mib']:.0f} | {own:.0f}" if med["record_seconds"]
                     else "- | -")
        print(f"| {label} | {med['seconds']:.0f} | {med['record_seconds']:.0f} | "
              f"{med['process_peak_mib']:.0f} | {med['rss_after_load_mib']:.0f} | {recording} |")
    print(f"(medians of {repeats} repeat(s), {threads} threads)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--long", action="store_true",
                    help="time and peak memory of sah record at 2048 and 8192 tokens")
    args = ap.parse_args()
    if args.long:
        long_context(args.threads, args.repeats)
        return
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
