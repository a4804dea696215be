"""``sah speed``: one chain config's whole ``custom_attention`` call on a decoding shape,
timed interleaved with dense SDPA (medians; :mod:`sah.speed.timing`).

    sah speed --config C.yaml --keys 32768 --heads 32 --kv-heads 8 --head-dim 128 \\
              [--queries 1] [--repeats 9] [--device cpu|cuda] [--dtype float32|bfloat16] \\
              [--json OUT.json]
    sah speed --config C.yaml --model default --keys 8192     # the model's heads and head dim

Prints the chain's ms, dense ms, the ratio and the machine; ``--json`` writes ``ms``,
``dense_ms``, ``ratio``, ``shape`` and ``machine`` (and every sample). Every input is
checked before anything runs: a bad one is one line and exit status 2, nothing written.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Dict

DEVICES = ("cpu", "cuda")
DTYPE_NAMES = ("float32", "bfloat16")
SHAPE_FLAGS = {"keys": "--keys", "heads": "--heads", "kv_heads": "--kv-heads",
               "head_dim": "--head-dim", "queries": "--queries"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, metavar="C.yaml",
                        help="chain config (YAML or JSON, e.g. results/<run>/tuned/<chain>.yaml)")
    parser.add_argument("--keys", type=int, default=32768, help="keys in the KV cache (default 32768)")
    parser.add_argument("--heads", type=int, help="query heads")
    parser.add_argument("--kv-heads", type=int, help="KV heads (a divisor of --heads)")
    parser.add_argument("--head-dim", type=int, help="head dimension")
    parser.add_argument("--model", metavar="default|PATH",
                        help="take heads, KV heads and head dim from a model's config: 'default' "
                             "(the embedded SmolLM2-135M) or a Hugging Face model folder")
    parser.add_argument("--queries", type=int, default=1, help="query rows per call (default 1)")
    parser.add_argument("--repeats", type=int, default=9,
                        help="interleaved rounds (chain, dense); medians (default 9)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--dtype", default="float32", help="float32 or bfloat16 (default float32)")
    parser.add_argument("--layer", type=int, default=0,
                        help="layer id the chain runs as (HashAttention weights, seeds; default 0)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--json", metavar="OUT.json", help="write the figures as JSON")


def model_shape(model: str) -> Dict[str, int]:
    """``{"heads", "kv_heads", "head_dim"}`` of ``default`` or a Hugging Face model folder's
    ``config.json`` (no weights are loaded)."""
    if model == "default":
        from sah.recording.default_model import DEFAULT_MODEL_SHAPE as s
        return {"heads": s["num_heads"], "kv_heads": s["num_kv_heads"], "head_dim": s["head_dim"]}
    path = Path(model)
    config = path / "config.json" if path.is_dir() else path
    if not config.is_file() or config.suffix != ".json":
        raise ValueError(f"--model {model}: no config.json there; give 'default' or a Hugging "
                         f"Face model folder holding config.json")
    from sah.infra.safe_yaml import load_json, read_text
    data = load_json(read_text(config), str(config))
    if isinstance(data, dict) and isinstance(data.get("text_config"), dict):
        data = {**data, **data["text_config"]}
    heads = data.get("num_attention_heads") if isinstance(data, dict) else None
    if not isinstance(heads, int) or heads < 1:
        raise ValueError(f"--model {model}: {config} has no num_attention_heads; give the shape "
                         f"with --heads, --kv-heads and --head-dim instead")
    kv = data.get("num_key_value_heads") or heads
    dim = data.get("head_dim") or (data.get("hidden_size", 0) // heads)
    return {"heads": heads, "kv_heads": int(kv), "head_dim": int(dim)}


def _shape(args: argparse.Namespace):
    from sah.speed.timing import DecodeShape
    given = {k: getattr(args, k) for k in ("heads", "kv_heads", "head_dim")}
    if args.model is not None:
        named = [SHAPE_FLAGS[k] for k, v in given.items() if v is not None]
        if named:
            raise ValueError(f"--model {args.model} sets the heads and head dim; drop "
                             f"{', '.join(named)} or drop --model")
        given = model_shape(args.model)
    missing = [SHAPE_FLAGS[k] for k, v in given.items() if v is None]
    if missing:
        raise ValueError(f"{', '.join(missing)} missing: give --heads, --kv-heads and --head-dim, "
                         f"or --model default|PATH")
    shape = DecodeShape(args.keys, given["heads"], given["kv_heads"], given["head_dim"],
                        args.queries)
    shape.check(SHAPE_FLAGS)
    return shape


def _check(args: argparse.Namespace) -> None:
    if args.dtype not in DTYPE_NAMES:
        raise ValueError(f"--dtype {args.dtype}: unknown dtype; use {' or '.join(DTYPE_NAMES)}")
    if args.device not in DEVICES:
        raise ValueError(f"--device {args.device}: unknown device; use cpu or cuda")
    if args.repeats < 1:
        raise ValueError(f"--repeats {args.repeats}: expected an int >= 1")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads {args.threads}: expected an int >= 1")
    if args.layer < 0:
        raise ValueError(f"--layer {args.layer}: expected a layer id >= 0")
    if not Path(args.config).is_file():
        raise FileNotFoundError(f"--config {args.config}: no such file; give a chain config "
                                f"(YAML or JSON, e.g. results/<run>/tuned/<chain>.yaml)")
    if args.json:
        out = Path(args.json)
        if out.is_dir():
            raise ValueError(f"--json {args.json} is a directory; give a file name (e.g. "
                             f"{out / 'speed.json'})")
        if not out.parent.is_dir():
            raise FileNotFoundError(f"--json {args.json}: folder {out.parent} does not exist; "
                                    f"create it or write elsewhere")


def run(args: argparse.Namespace) -> int:
    _check(args)
    shape = _shape(args)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: torch sees no CUDA GPU on this machine; use --device cpu")
    from sah.attention import ResearchAttention, ResearchAttentionConfig
    from sah.speed import DTYPES, decode_tensors, describe_machine, machine_line, time_chain
    config = ResearchAttentionConfig.from_file(args.config)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    attention = ResearchAttention.create_from_config(config)
    tensors = decode_tensors(shape, DTYPES[args.dtype], args.device, layer=args.layer)
    timing = time_chain(attention, tensors, args.repeats)
    machine = describe_machine(args.device)
    print(f"{args.config}: {shape.keys} keys, {shape.heads} heads / {shape.kv_heads} KV heads, "
          f"head dim {shape.head_dim}, {shape.queries} quer{'y' if shape.queries == 1 else 'ies'}, "
          f"{args.dtype}, {args.device}; median of {args.repeats} interleaved rounds")
    print(f"chain {timing.ms:.3f} ms, dense SDPA {timing.dense_ms:.3f} ms, ratio {timing.ratio:.3f}x")
    print(f"machine: {machine_line(machine)}")
    if args.json:
        from sah.infra.files import atomic_write_text
        doc = {"config": str(args.config), "ms": timing.ms, "dense_ms": timing.dense_ms,
               "ratio": timing.ratio, "shape": shape.to_dict(), "machine": machine,
               "device": args.device, "dtype": args.dtype, "repeats": args.repeats,
               "layer": args.layer, "chain_samples_ms": timing.chain_samples,
               "dense_samples_ms": timing.dense_samples}
        atomic_write_text(Path(args.json), json.dumps(doc, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0
