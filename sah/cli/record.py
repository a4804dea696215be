"""`sah record`: record Q, K, V from a Hugging Face causal LM into a recording file."""

from __future__ import annotations

import argparse
import sys
import time


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="default",
                        help="'default' (embedded SmolLM2-135M-Instruct), a local Hugging Face "
                             "model directory, or a .gguf file")
    parser.add_argument("--text", default=None,
                        help="UTF-8 text file to record on (default: the default corpus, "
                             "pydoc_data.topics)")
    parser.add_argument("--tokens", type=int, default=2048, help="tokens of text (keys), default 2048")
    parser.add_argument("--queries", type=int, default=32,
                        help="decode-style queries kept per layer, spread over the final part "
                             "of the text (default 32)")
    parser.add_argument("--query-fraction", type=float, default=0.25,
                        help="final fraction of the text the queries are spread over (default 0.25)")
    parser.add_argument("--layers", default="all",
                        help="layers to record: 'all', '0,5,10' or '0-3,8' (default all)")
    parser.add_argument("--out", required=True, help="output recording file (.safetensors)")
    parser.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"],
                        help="storage dtype (default float16)")
    parser.add_argument("--device", default=None,
                        help="torch device for the model (default: cuda if available, else cpu)")
    parser.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"],
                        help="attention the recorder delegates to (default sdpa)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    import os

    import torch

    from sah.recording.corpus import read_text, text_sha256, tokenize
    from sah.recording.default_model import load_model
    from sah.recording.format import save_recording
    from sah.recording.recorder import record_attention

    if args.tokens < 1 or args.queries < 1:
        raise ValueError(f"--tokens ({args.tokens}) and --queries ({args.queries}) must be >= 1")
    if args.queries > args.tokens:
        raise ValueError(f"--queries ({args.queries}) cannot exceed --tokens ({args.tokens})")
    out_dir = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(out_dir):
        raise FileNotFoundError(f"--out: directory {out_dir} does not exist")
    text, source = read_text(args.text)  # read before the slow model load, to fail fast
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    start = time.perf_counter()
    model, tokenizer = load_model(args.model, device=device, attn_implementation=args.attn)
    loaded = time.perf_counter()
    ids = tokenize(tokenizer, text, args.tokens, f"--text {source}")
    rec = record_attention(model, ids, layers=args.layers, num_queries=args.queries,
                           query_fraction=args.query_fraction, dtype=args.dtype,
                           progress=not args.no_progress,
                           metadata={"text_source": source, "text_sha256": text_sha256(text)})
    path = save_recording(rec, args.out)
    size_mib = os.path.getsize(path) / 2 ** 20
    print(f"wrote {path}: {len(rec.layers)} layers, {rec.num_heads} heads ({rec.num_kv_heads} KV), "
          f"{rec.num_keys} keys, {rec.num_queries} queries, {args.dtype}, {size_mib:.1f} MiB "
          f"(model load {loaded - start:.1f} s, recording {time.perf_counter() - loaded:.1f} s "
          f"on {device})", file=sys.stderr)
    return 0
