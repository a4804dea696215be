"""Structured patterns of the Sparse Transformer family as pure functions of (query i, key j).

Each pattern is a *mask_mod*: ``mod(i, j) -> bool tensor`` over broadcast integer tensors
of query and key positions (like FlexAttention's ``mask_mod``). Patterns compose with
:func:`and_masks` / :func:`or_masks`, and :func:`square_mask` draws any of them as a
standalone ``size x size`` mask with component labels for plots:

- 0 = inactive, 1 = diagonal, 2 = local / window / block, 3 = strided / column
  (precedence: diagonal, then local, then strided).
"""

from __future__ import annotations

from typing import Callable, Dict, Tuple

import torch

from sah.infra.checks import ConfigError, check_int

MaskMod = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
LabelledMods = Tuple[MaskMod, MaskMod, MaskMod]  # diagonal, local, strided components

PATTERN_NAMES = ("normal", "strided", "fixed", "sliding_window", "dilated_sliding_window")


def and_masks(*mods: MaskMod) -> MaskMod:
    def mod(i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        out = mods[0](i, j)
        for m in mods[1:]:
            out = out & m(i, j)
        return out
    return mod


def or_masks(*mods: MaskMod) -> MaskMod:
    def mod(i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        out = mods[0](i, j)
        for m in mods[1:]:
            out = out | m(i, j)
        return out
    return mod


def _diagonal(i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
    return j == i


def _nothing(i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
    return torch.zeros(torch.broadcast_shapes(i.shape, j.shape), dtype=torch.bool, device=i.device)


def normal_components() -> LabelledMods:
    """Causal attention: ``j <= i``."""
    return _diagonal, lambda i, j: j < i, _nothing


def strided_components(window_size: int, stride: int) -> LabelledMods:
    """``j == i``; band ``i - w < j < i``; and ``j <= i - w`` with ``(i - w - j) % stride == 0``."""
    w, s = window_size, stride

    def local(i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        return (j < i) & (j > i - w)

    def strided(i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        return (j <= i - w) & (torch.remainder(i - w - j, s) == 0)
    return _diagonal, local, strided


def fixed_components(window_size: int) -> LabelledMods:
    """``j == i``; same block ``j // w == i // w`` with ``j < i``; and the last key of every
    earlier block, ``j = (c + 1) * w - 1`` for ``c < i // w``."""
    w = window_size

    def block(i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        return (j < i) & (torch.div(j, w, rounding_mode="floor") == torch.div(i, w, rounding_mode="floor"))

    def column(i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        return (torch.remainder(j + 1, w) == 0) & (torch.div(j, w, rounding_mode="floor")
                                                  < torch.div(i, w, rounding_mode="floor"))
    return _diagonal, block, column


def sliding_window_components(window_size: int) -> LabelledMods:
    """Symmetric window ``|i - j| <= window_size // 2`` (includes ``j == i``)."""
    half = window_size // 2
    return _diagonal, lambda i, j: (j != i) & ((i - j).abs() <= half), _nothing


def dilated_sliding_window_components(window_size: int, dilation: int) -> LabelledMods:
    """``j = i + k * dilation`` for ``k`` in ``[-window_size // 2, window_size // 2]``."""
    half, dil = window_size // 2, dilation

    def window(i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        diff = j - i
        return (diff != 0) & (torch.remainder(diff, dil) == 0) & (diff.abs() <= half * dil)
    return _diagonal, window, _nothing


def validate_pattern(name: str, window_size: int = 32, stride: int = 32, dilation: int = 2,
                     owner: str = "") -> None:
    if name not in PATTERN_NAMES:
        raise ConfigError(f"{owner + '.' if owner else ''}pattern: got {name!r}; must be one of "
                          f"{', '.join(PATTERN_NAMES)}")
    if name != "normal":
        check_int(owner, "window_size", window_size, low=1)
    if name == "strided":
        check_int(owner, "stride", stride, low=1)
    if name == "dilated_sliding_window":
        check_int(owner, "dilation", dilation, low=1)


def pattern_components(name: str, window_size: int = 32, stride: int = 32,
                       dilation: int = 2) -> LabelledMods:
    """The (diagonal, local, strided) mask_mods of a named pattern."""
    validate_pattern(name, window_size, stride, dilation)
    if name == "normal":
        return normal_components()
    if name == "strided":
        return strided_components(window_size, stride)
    if name == "fixed":
        return fixed_components(window_size)
    if name == "sliding_window":
        return sliding_window_components(window_size)
    return dilated_sliding_window_components(window_size, dilation)


def pattern_mask_mod(name: str, window_size: int = 32, stride: int = 32, dilation: int = 2) -> MaskMod:
    """The whole pattern as one mask_mod (the or of its components)."""
    return or_masks(*pattern_components(name, window_size, stride, dilation))


def labelled_mask(mods: LabelledMods, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Component labels (int8: 0 inactive, 1 diagonal, 2 local, 3 strided) on a grid."""
    i = rows.view(-1, 1)
    j = cols.view(1, -1)
    diagonal, local, strided = (m(i, j) for m in mods)
    labels = torch.zeros(diagonal.shape, dtype=torch.int8, device=rows.device)
    labels[strided] = 3
    labels[local] = 2
    labels[diagonal] = 1
    return labels


def square_mask(name: str, size: int, window_size: int = 32, stride: int = 32, dilation: int = 2,
                device: torch.device | str = "cpu") -> torch.Tensor:
    """A standalone ``(size, size)`` pattern with component labels (int8 0..3)."""
    check_int("", "size", size, low=1)
    ar = torch.arange(size, device=device)
    return labelled_mask(pattern_components(name, window_size, stride, dilation), ar, ar)


def sparsity(mask: torch.Tensor) -> float:
    """1 - density over the full square (the seed's sparsity figure)."""
    return 1.0 - float((mask != 0).sum()) / mask.numel()


def all_square_masks(size: int, window_size: int = 32, stride: int = 32, dilation: int = 2,
                     device: torch.device | str = "cpu") -> Dict[str, torch.Tensor]:
    return {name: square_mask(name, size, window_size, stride, dilation, device)
            for name in PATTERN_NAMES}
