"""``sah allocate RUN_DIR --chain CHAIN --density T [--per-head] [-o OUT.yaml]``: spend one
mean density across the layers (or heads) of a run's chain where it lowers the error most.

Prints the run's best uniform config of the chain at density <= T and the allocated one
side by side: density and output error on the run's scored recordings (the allocation's),
on a held-out recording (``--heldout``, default: a recording of the first named text the
run did not see) and the in-model KL of ``sah validate`` (``--no-validate`` skips it).
Writes the allocated config (``layer_overrides``) with ``-o``; without it the config is
printed after the table. See :mod:`sah.runs.allocate`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="a finished run folder (results/<run>)")
    parser.add_argument("--chain", required=True, help="chain to allocate (see summary.md)")
    parser.add_argument("--density", type=float, required=True, metavar="T",
                        help="mean density target (fraction of the allowed keys, in (0, 1])")
    parser.add_argument("--per-head", action="store_true",
                        help="a size per attention head (default: per layer)")
    parser.add_argument("--output", "-o", metavar="OUT.yaml",
                        help="write the allocated config here (weight files it needs beside it)")
    parser.add_argument("--heldout", metavar="RECORDING",
                        help="recording the allocation does not use: an embedded name or a file "
                             "(default: the first of manual, prose, code, docs whose text the run "
                             "did not see)")
    parser.add_argument("--validate-text", metavar="TEXT",
                        help="text for the in-model KL (default: the held-out recording's text)")
    parser.add_argument("--tokens", type=int, default=2048, help="in-model window, default 2048")
    parser.add_argument("--positions", type=int, default=128,
                        help="in-model sparse positions, default 128")
    parser.add_argument("--no-validate", action="store_true", help="skip the in-model KL")
    parser.add_argument("--json", metavar="OUT.json", help="write every figure as JSON")
    parser.add_argument("--plot", metavar="OUT.png",
                        help="plot size and error per layer, uniform vs allocated")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads while measuring curves and scoring (default 1: "
                             "these small tensor ops are fastest on one thread, and far slower "
                             "with more threads than free cores); the in-model check keeps "
                             "torch's default")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    parser.add_argument("--partial", action="store_true",
                        help="allow a run that did not finish (allocates from the trials that "
                             "finished)")


def _check_outputs(args: argparse.Namespace) -> None:
    for flag, value, suffix in (("--output", args.output, ".yaml"), ("--json", args.json, ".json"),
                                ("--plot", args.plot, ".png")):
        if value is not None and Path(value).is_dir():
            raise ValueError(f"{flag} {value}: is a folder; give a file name, e.g. "
                             f"{Path(value) / ('allocated' + suffix)}")


def run(args: argparse.Namespace) -> int:
    from sah.runs.allocate import (allocate_run_chain, default_heldout, load_heldout, open_run, score_heldout)
    from sah.runs import allocation_report as report
    from sah.infra.checks import ConfigError
    from sah.recording.format import RecordingError

    say = (lambda m: None) if args.quiet else (
        lambda m: print(f"sah allocate: {m}", file=sys.stderr, flush=True))
    try:
        _check_outputs(args)
        if not 0 < args.density <= 1:
            raise ConfigError(f"--density: got {args.density:g}; expected a mean density in (0, 1]")
        ctx = open_run(Path(args.run))
        ctx.study.chain(args.chain)
        from sah.runs.folder import check_finished
        if args.chain in check_finished(ctx.run_dir, ctx.study, args.partial, "allocating"):
            say(f"the run did not finish (--partial): chain {args.chain} allocates from the "
                f"trials that finished")
        heldout = args.heldout or default_heldout(ctx.meta)
        text = None
        if not args.no_validate:
            from sah.inmodel.protocol import check_protocol
            from sah.recording.embedded import MAX_TOKENS, parse_embedded
            from sah.recording.texts import load_text, parse_text_spec
            item = parse_embedded(heldout, "--heldout")
            text = args.validate_text or (f"{item.text}@{item.start}" if item and item.start
                                          else item.text if item else "manual")
            load_text(parse_text_spec(text, "--validate-text").text, "--validate-text")
            check_protocol(args.tokens, args.positions, MAX_TOKENS, ("--tokens", "--positions"),
                           "the embedded model")
        from sah.runs.allocate import allocatable
        allocatable(ctx.study, args.chain)
        written = _written_config(ctx, args.chain)
        if written is not None and ctx.artefacts.needed(written) and not args.output:
            raise ConfigError(f"chain {args.chain!r} needs a weight file, which a printed config "
                              f"cannot carry; pass -o OUT.yaml")
        rec = load_heldout(ctx, heldout)
        if text is not None and args.per_head:
            from sah.recording.default_model import DEFAULT_MODEL_SHAPE
            heads = DEFAULT_MODEL_SHAPE["num_heads"]
            if ctx.recordings[0].num_heads != heads:
                raise ConfigError(f"--per-head: the run's recordings have "
                                  f"{ctx.recordings[0].num_heads} query heads but the embedded "
                                  f"model the in-model check runs has {heads}; pass --no-validate "
                                  f"(or allocate per layer)")
        if args.threads < 1:
            raise ConfigError(f"--threads: got {args.threads}; expected an int >= 1")
        say(f"allocating {args.chain} at density <= {args.density:g} "
            f"({'per head' if args.per_head else 'per layer'})")
        from sah.infra.threads import torch_threads
        with torch_threads(args.threads, at_most_current=False):
            result = allocate_run_chain(ctx, args.chain, args.density, args.per_head)
            score_heldout(ctx, result, heldout, rec)
        say(f"curves and allocation {result.seconds:.1f} s (curves {result.curve_seconds:.1f} s)")
        if text is not None:
            say(f"in-model KL on {text} ({args.tokens} tokens, {args.positions} positions)")
            report.validate(ctx, [result], text, args.tokens, args.positions,
                            progress=None if args.quiet else say)
    except (ConfigError, RecordingError) as exc:
        print(f"sah allocate: error: {exc}", file=sys.stderr)
        return 2
    print(report.describe(result))
    print()
    print(report.table(result))
    if args.output:
        for path in report.write_config(ctx, result, Path(args.output)):
            print(f"sah allocate: wrote {path}", file=sys.stderr)
    else:
        print()
        print(report.config_text(result), end="")
    if args.json:
        from sah.infra.files import atomic_write_text
        atomic_write_text(Path(args.json), json.dumps(report.to_dict(result), indent=1) + "\n")
        print(f"sah allocate: wrote {args.json}", file=sys.stderr)
    if args.plot:
        report.write_plot(result, Path(args.plot))
        print(f"sah allocate: wrote {args.plot}", file=sys.stderr)
    return 0


def _written_config(ctx, chain: str):
    from sah.runs.outputs.picks import best_row
    from sah.runs.outputs.trials import row_config
    row = best_row(ctx.rows, chain)
    return row_config(ctx.study.chain(chain), row) if row is not None else None
