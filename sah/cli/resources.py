"""``sah resources``: the resource analysis of a structured pattern, a saved mask, or the
per-head masks of a chain (a tuned config) on one layer of a recording.

    sah resources --pattern strided --mask_size 4096 --num_multiplications 256 --read_limit 300
    sah resources --mask saved.npy [--tensor NAME] --num_multiplications 64 --read_limit 1000
    sah resources --recording rec.safetensors --config best.yaml --layer 3 --heads 0,1
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

from sah.attention import ResearchAttention, ResearchAttentionConfig
from sah.recording import Recording
from sah.resources.calculator import (ORDERS, PATTERN_NAMES, ResourceAnalysis, analyse_mask, analyse_pattern,
                           check_analysis_parameters)
from sah.resources.text import analysis_lines, write_text_outputs
from sah.infra.checks import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--pattern", choices=PATTERN_NAMES, help="a structured pattern")
    src.add_argument("--mask", metavar="FILE", help="a saved mask: .npy array or .safetensors tensor")
    src.add_argument("--recording", metavar="RECORDING",
                     help="a recording file or embedded recording name (default, docs, code, "
                          "prose, docs-8192, prose@4096...), with --config and --layer")
    parser.add_argument("--mask_size", type=int, default=1024, help="pattern side (default: 1024)")
    parser.add_argument("--window_size", type=int, default=32, help="pattern window (default: 32)")
    parser.add_argument("--stride", type=int, default=32, help="strided pattern stride (default: 32)")
    parser.add_argument("--dilation", type=int, default=2, help="dilated window step (default: 2)")
    parser.add_argument("--tensor", help="tensor name inside a .safetensors mask file")
    parser.add_argument("--config", metavar="FILE", help="chain config (YAML/JSON) for --recording")
    parser.add_argument("--layer", type=int, help="recorded layer id for --recording")
    parser.add_argument("--heads", default="all", help="comma-separated heads, or 'all' (default)")
    parser.add_argument("--batch", type=int, default=0, help="batch item of the recording (default: 0)")
    parser.add_argument("--num_multiplications", type=int, default=64, help="N per step (default: 64)")
    parser.add_argument("--read_limit", type=int, default=1000, help="R rows + columns per step (default: 1000)")
    parser.add_argument("--order", choices=ORDERS, default="row_first")
    parser.add_argument("--zigzag", action="store_true", help="odd rows walk columns descending")
    parser.add_argument("--json", metavar="PATH", help="write every figure as JSON")
    parser.add_argument("--write_text", action="store_true", help="write the seed's text files")
    parser.add_argument("--output_dir", default="generated", help="folder for --write_text")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="let a HashAttention config load .pkl weights (unpickling runs code: "
                             "only for files you trust); also SAH_ALLOW_PICKLE=1")


def parse_heads(text: str, num_heads: int) -> List[int]:
    if text == "all":
        return list(range(num_heads))
    try:
        heads = [int(h) for h in text.split(",") if h.strip()]
    except ValueError:
        raise ConfigError(f"--heads: got {text!r}; expected comma-separated ints or 'all'") from None
    bad = [h for h in heads if not 0 <= h < num_heads]
    if bad or not heads:
        raise ConfigError(f"--heads: got {text!r}; heads must be in [0, {num_heads - 1}]")
    return heads


def load_saved_mask(path: str, tensor: Optional[str] = None) -> np.ndarray:
    """A saved mask as a numpy array with at least 2 dims (the last two are query x key)."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"--mask: {path}: no such file")
    if file.suffix == ".npy":
        array = np.load(file, allow_pickle=False)
    elif file.suffix == ".safetensors":
        from safetensors.numpy import load_file
        tensors = load_file(str(file))
        if tensor is None and len(tensors) != 1:
            raise ConfigError(f"--tensor: {path} holds {sorted(tensors)}; name the mask with --tensor")
        name = tensor if tensor is not None else next(iter(tensors))
        if name not in tensors:
            raise ConfigError(f"--tensor: {name!r} not in {path}; it holds {sorted(tensors)}")
        array = tensors[name]
    else:
        raise ConfigError(f"--mask: {path}: expected a .npy or .safetensors file")
    if array.ndim < 2:
        raise ConfigError(f"--mask: {path}: got a {array.ndim}-D array; a mask needs >= 2 dims")
    return array


def analyse_saved_mask(array: np.ndarray, n_mult: int, read_limit: int, order: str = "row_first",
                       zigzag: bool = False, name: str = "saved") -> List[ResourceAnalysis]:
    """One analysis per 2-D slice (leading dims flattened, e.g. batch x heads)."""
    flat = array.reshape(-1, *array.shape[-2:])
    out = []
    for k, plane in enumerate(flat):
        label = name if flat.shape[0] == 1 else f"{name}_{k}"
        out.append(analyse_mask(plane != 0, n_mult, read_limit, order, zigzag, label,
                                {"source": name, "slice": k}))
    return out


def analyse_chain_on_recording(recording: Recording, config: ResearchAttentionConfig, layer: int,
                               heads: Optional[Sequence[int]], n_mult: int, read_limit: int,
                               order: str = "row_first", zigzag: bool = False,
                               batch: int = 0) -> List[ResourceAnalysis]:
    """Analyse the chain's mask (intersected with the causal allowed positions) of each head
    on recorded layer ``layer`` (a layer id, as in ``recording.layer_ids``)."""
    if layer not in recording.layer_ids:
        raise ConfigError(f"--layer: got {layer}; the recording holds layers {recording.layer_ids}")
    ctx = recording.context(recording.layer_ids.index(layer))
    if not 0 <= batch < ctx.mask_shape[0]:
        raise ConfigError(f"--batch: got {batch}; the recording has {ctx.mask_shape[0]} batch items")
    mask = ResearchAttention.create_from_config(config).compute_mask(ctx, layer_idx=layer)
    active = (mask.active() & ctx.allowed_full)[batch]
    heads = list(range(active.shape[0])) if heads is None else list(heads)
    return [analyse_mask(active[h], n_mult, read_limit, order, zigzag, f"layer{layer}_head{h}",
                         {"layer": layer, "head": h, "batch": batch}) for h in heads]


def run(args: argparse.Namespace) -> int:
    check_analysis_parameters(num_multiplications=args.num_multiplications, read_limit=args.read_limit)
    if args.allow_pickle:  # the person's opt-in, never the config's
        from sah.infra.pickle_opt_in import set_pickle_allowed
        set_pickle_allowed(True)
    if args.pattern:
        analyses = [analyse_pattern(args.pattern, args.mask_size, args.num_multiplications,
                                    args.read_limit, args.window_size, args.stride, args.dilation,
                                    args.order, args.zigzag)]
    elif args.mask:
        analyses = analyse_saved_mask(load_saved_mask(args.mask, args.tensor), args.num_multiplications,
                                      args.read_limit, args.order, args.zigzag, Path(args.mask).stem)
    else:
        if not args.config or args.layer is None:
            raise ConfigError("--recording needs --config FILE and --layer ID")
        from sah.recording import load_recording
        from sah.recording.embedded import resolve_recording
        recording = load_recording(resolve_recording(args.recording, "--recording"))
        config = ResearchAttentionConfig.from_file(args.config)
        heads = parse_heads(args.heads, recording.num_heads)
        analyses = analyse_chain_on_recording(recording, config, args.layer, heads,
                                              args.num_multiplications, args.read_limit,
                                              args.order, args.zigzag, args.batch)
    for analysis in analyses:
        print("\n".join(analysis_lines(analysis)[:9] + analysis_lines(analysis)[-4:]))
        if args.write_text:
            for path in write_text_outputs(analysis, args.output_dir):
                print(f"Wrote {path}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"masks": [a.to_dict() for a in analyses]}, indent=2))
        print(f"Wrote {args.json}")
    return 0


__all__ = ["add_arguments", "run", "analyse_chain_on_recording", "analyse_saved_mask"]
