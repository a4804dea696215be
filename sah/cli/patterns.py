"""``sah patterns``: the seed's pattern figures and sparsity lines, and the masks a chain
produces on a recording.

    sah patterns --size 1024 --window_size 32 --stride 32 [--sample_size 128 | --full_png]
    sah patterns --no_graphic --skip_pattern_print        # the seed's sparsity lines only
    sah patterns --recording rec.safetensors --config best.yaml --layer 3 --heads 0,1
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional, TextIO

from sah.patterns import PATTERN_NAMES, square_mask
from sah.resources.calculator import check_analysis_parameters, pattern_num_active, pattern_points
from sah.resources.memory import BYTES_PER_DENSE_CELL, analysis_bytes, check_memory

SPARSITY_TITLES = {"normal": "Normal", "strided": "Strided", "fixed": "Fixed",
                   "sliding_window": "Sliding Window", "dilated_sliding_window": "Dilated Sliding Window"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size", type=int, default=1024, help="Size of the square mask matrix (default: 1024)")
    parser.add_argument("--window_size", type=int, default=32, help="Size of the local attention window (default: 32)")
    parser.add_argument("--stride", type=int, default=32, help="Stride between attention points (default: 32)")
    parser.add_argument("--dilation", type=int, default=2, help="Dilation of the dilated window (default: 2)")
    parser.add_argument("--sample_size", type=int, default=128, help="Size of the sample to visualize (default: 128)")
    parser.add_argument("--full_png", action="store_true", help="Save full-size PNG images instead of samples")
    parser.add_argument("--no_graphic", action="store_true", help="Bypass graphics and only print sparsity patterns")
    parser.add_argument("--order", choices=("row_first", "column_first"), default="row_first",
                        help="Order of non-zero elements in the mask (default: row_first)")
    parser.add_argument("--skip_pattern_print", action="store_true", help="Skip printing non-zero elements of the mask")
    parser.add_argument("--output_dir", default="generated/patterns", help="Folder for PNGs (default: generated/patterns)")
    parser.add_argument("--recording", metavar="RECORDING",
                        help="draw a chain's masks on this recording (a file or an embedded "
                             "recording name: default, docs, code, prose, docs-8192...) instead")
    parser.add_argument("--config", metavar="FILE", help="chain config (YAML/JSON) for --recording")
    parser.add_argument("--layer", type=int, help="recorded layer id for --recording")
    parser.add_argument("--heads", default="0", help="comma-separated heads or 'all' (default: 0)")
    parser.add_argument("--batch", type=int, default=0, help="batch item of the recording (default: 0)")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="let a HashAttention config load .pkl weights (unpickling runs code: "
                             "only for files you trust); also SAH_ALLOW_PICKLE=1")


def sparsity_lines(size: int, window_size: int, stride: int, dilation: int) -> List[str]:
    """The seed's ``Sparsity of each mask:`` block (1 - density over the full square)."""
    lines = ["Sparsity of each mask:"]
    for name in PATTERN_NAMES:
        active = pattern_num_active(name, size, window_size, stride, dilation)
        lines.append(f"{SPARSITY_TITLES[name]} Mask Sparsity: {1.0 - active / (size * size):.4%}")
    return lines


def print_nonzero(name: str, size: int, args: argparse.Namespace, out: TextIO) -> None:
    """The non-zero elements of a pattern, one line per row (or column) in ``args.order``."""
    points = pattern_points(name, size, args.window_size, args.stride, args.dilation)
    column_first = args.order == "column_first"
    if column_first:
        points = points.transpose()
    axis, other = ("column", "rows") if column_first else ("row", "columns")
    out.write(f"Non-zero elements of the {SPARSITY_TITLES[name]} mask ({args.order}):\n")
    indptr, cols = points.indptr, points.cols
    for r in range(points.shape[0]):
        out.write(f"{axis} {r} {other}: {' '.join(map(str, cols[indptr[r]:indptr[r + 1]].tolist()))}\n")


def check_patterns_memory(args: argparse.Namespace) -> None:
    """Refuse, before any work, what would not fit in memory: the points of each pattern
    (to print them) and the dense squares drawn with --full_png."""
    if not args.no_graphic and args.full_png:
        check_memory(BYTES_PER_DENSE_CELL * args.size ** 2,
                     f"--size {args.size} --full_png: drawing {args.size}x{args.size} squares",
                     "drop --full_png (a --sample_size corner is drawn) or add --no_graphic")
    if not args.skip_pattern_print:
        for name in PATTERN_NAMES:
            active = pattern_num_active(name, args.size, args.window_size, args.stride, args.dilation)
            check_memory(analysis_bytes(active, args.size, order=args.order),
                         f"--size {args.size}: printing the {name} pattern's {active:,} active "
                         f"positions", "add --skip_pattern_print or use a smaller --size")


def draw_patterns(args: argparse.Namespace) -> List[Path]:
    from sah.plotting import PATTERN_TITLES, plot_comparison, plot_pattern
    side = args.size if args.full_png else min(args.sample_size, args.size)
    out = Path(args.output_dir)
    labels, sparsities, paths = {}, {}, []
    for name in PATTERN_NAMES:
        # patterns are functions of (i, j): the top-left sample equals the small square
        labels[name] = square_mask(name, side, args.window_size, args.stride, args.dilation).numpy()
        active = pattern_num_active(name, args.size, args.window_size, args.stride, args.dilation)
        sparsities[name] = 1.0 - active / (args.size * args.size)
        paths.append(plot_pattern(labels[name], PATTERN_TITLES[name], out / f"{name}_mask_{side}x{side}.png",
                                  sparsity=sparsities[name]))
    paths.append(plot_comparison(labels, out / f"mask_comparison_{side}x{side}.png", sparsities))
    return paths


def run_patterns(args: argparse.Namespace, out: Optional[TextIO] = None) -> int:
    out = out or sys.stdout
    check_analysis_parameters(size=args.size, window_size=args.window_size, stride=args.stride,
                              dilation=args.dilation)
    if args.sample_size < 1:
        raise ValueError(f"--sample_size: got {args.sample_size}; must be an int >= 1")
    check_patterns_memory(args)
    if not args.skip_pattern_print:
        for name in PATTERN_NAMES:
            print_nonzero(name, args.size, args, out)
    out.write("\n".join(sparsity_lines(args.size, args.window_size, args.stride, args.dilation)) + "\n")
    if not args.no_graphic:
        for path in draw_patterns(args):
            out.write(f"Saved {path}\n")
    return 0


def run_chain(args: argparse.Namespace, out: Optional[TextIO] = None) -> int:
    out = out or sys.stdout
    from sah.attention import ResearchAttention, ResearchAttentionConfig
    from sah.plotting import chain_contributions, masker_names, plot_chain_masks
    from sah.recording import load_recording
    from sah.recording.embedded import resolve_recording
    from sah.cli.resources import parse_heads
    from sah.infra.checks import ConfigError
    if not args.config or args.layer is None:
        raise ConfigError("--recording needs --config FILE and --layer ID")
    recording = load_recording(resolve_recording(args.recording, "--recording"))
    if args.layer not in recording.layer_ids:
        raise ConfigError(f"--layer: got {args.layer}; the recording holds layers {recording.layer_ids}")
    attention = ResearchAttention.create_from_config(ResearchAttentionConfig.from_file(args.config))
    ctx = recording.context(recording.layer_ids.index(args.layer))
    heads = parse_heads(args.heads, recording.num_heads)
    labels = chain_contributions(attention, ctx, layer_idx=args.layer)
    path = Path(args.output_dir) / f"{Path(args.config).stem}_layer{args.layer}.png"
    plot_chain_masks(labels, masker_names(attention), heads, path,
                     title=f"{Path(args.config).stem}, layer {args.layer}", batch=args.batch)
    out.write(f"Saved {path}\n")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.allow_pickle:  # the person's opt-in, never the config's
        from sah.infra.pickle_opt_in import set_pickle_allowed
        set_pickle_allowed(True)
    return run_chain(args) if args.recording else run_patterns(args)


__all__ = ["add_arguments", "run", "run_patterns", "run_chain", "sparsity_lines"]
