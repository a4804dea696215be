"""PNG figures of masks: structured patterns (component colours) and tuned chains (per masker).

Figures are drawn with matplotlib's object API on an Agg canvas (``Figure`` +
``FigureCanvasAgg``), never through ``pyplot``: no window opens and no global backend is
touched, with or without a display.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from sah.attention import ResearchAttention
from sah.context import AttentionContext
from sah.mask import Mask

# The seed's colours for component labels 0..3
COMPONENT_COLOURS = ("lightgray", "darkblue", "royalblue", "skyblue")
COMPONENT_NAMES = ("inactive", "diagonal", "local / window / block", "strided / column")
PATTERN_TITLES = {"normal": "Normal (Full) Attention", "strided": "Strided Pattern",
                  "fixed": "Fixed Pattern", "sliding_window": "Sliding Window",
                  "dilated_sliding_window": "Dilated Sliding Window"}
# Chain plots: 0 inactive, k = the k-th masker (1-based) first made the position active
MASKER_COLOURS = ("lightgray", "darkblue", "darkorange", "forestgreen", "crimson", "purple",
                  "saddlebrown", "deeppink", "olive", "teal")


def _labels_numpy(labels: Any) -> np.ndarray:
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels: got shape {labels.shape}; expected a 2-D mask")
    return labels


def _draw(ax: Any, labels: np.ndarray, colours: Sequence[str], title: str) -> None:
    cmap = ListedColormap(list(colours))
    ax.imshow(labels, cmap=cmap, vmin=-0.5, vmax=len(colours) - 0.5, interpolation="nearest")
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("key position j")
    ax.set_ylabel("query position i")


def _legend(fig: Figure, colours: Sequence[str], names: Sequence[str]) -> None:
    handles = [Patch(facecolor=c, edgecolor="black", label=f"{k}: {n}")
               for k, (c, n) in enumerate(zip(colours, names))]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 5), fontsize=8,
               frameon=False)


def _save(fig: Figure, path: Union[str, Path]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=fig.dpi, bbox_inches="tight")
    return path


def plot_pattern(labels: Any, title: str, path: Union[str, Path], sparsity: Optional[float] = None,
                 sample_size: Optional[int] = None) -> Path:
    """One pattern with component colours 0..3, a legend, and its sparsity annotated
    (``sparsity`` of the whole mask; default: of what is drawn). ``sample_size`` draws the
    top-left ``sample_size x sample_size`` corner."""
    labels = _labels_numpy(labels)
    if sample_size is not None:
        labels = labels[:sample_size, :sample_size]
    if sparsity is None:
        sparsity = 1.0 - np.count_nonzero(labels) / labels.size
    fig = Figure(figsize=(6.5, 7.0), dpi=110)
    ax = fig.add_subplot(1, 1, 1)
    rows, cols = labels.shape
    _draw(ax, labels, COMPONENT_COLOURS, f"{title} ({rows}x{cols})\nsparsity {sparsity:.4%}")
    _legend(fig, COMPONENT_COLOURS, COMPONENT_NAMES)
    fig.subplots_adjust(bottom=0.14)
    return _save(fig, path)


def plot_comparison(masks: Dict[str, Any], path: Union[str, Path],
                    sparsities: Optional[Dict[str, float]] = None,
                    sample_size: Optional[int] = None) -> Path:
    """Side-by-side comparison of labelled masks (name -> 2-D labels)."""
    fig = Figure(figsize=(4.0 * len(masks), 4.2), dpi=100)
    for k, (name, labels) in enumerate(masks.items()):
        labels = _labels_numpy(labels)
        if sample_size is not None:
            labels = labels[:sample_size, :sample_size]
        ax = fig.add_subplot(1, len(masks), k + 1)
        sp = (sparsities or {}).get(name)
        sp = 1.0 - np.count_nonzero(labels) / labels.size if sp is None else sp
        _draw(ax, labels, COMPONENT_COLOURS, f"{PATTERN_TITLES.get(name, name)}\nsparsity {sp:.2%}")
    _legend(fig, COMPONENT_COLOURS, COMPONENT_NAMES)
    fig.subplots_adjust(bottom=0.12, wspace=0.35)
    return _save(fig, path)


# --------------------------------------------------------------------------- chains
def chain_contributions(attention: ResearchAttention, ctx: AttentionContext,
                        layer_idx: Optional[int] = None) -> torch.Tensor:
    """``(b, h, q, n)`` int8: 0 where the chain's mask is inactive (or not allowed), else the
    1-based index of the first masker whose output made the position active. Runs the chain
    masker by masker exactly as :meth:`ResearchAttention.compute_mask` does."""
    allowed = ctx.allowed_full
    labels = torch.zeros(ctx.mask_shape, dtype=torch.int8, device=ctx.device)
    if not attention.maskers:  # empty chain = dense attention
        labels[allowed] = 1
        return labels
    mask = Mask.create_empty(ctx.mask_shape, ctx.device)
    meta: Dict[Any, Any] = {}
    for k, masker in enumerate(attention.maskers, start=1):
        mask = masker.add_mask(ctx.keys, ctx.queries, ctx.values, ctx.attention_mask, ctx.scaling,
                               0.0, meta, mask, context=ctx, query_positions=ctx.query_positions,
                               layer_idx=layer_idx)
        fresh = mask.active() & allowed & (labels == 0)
        labels[fresh] = k
    return labels


def masker_names(attention: ResearchAttention) -> List[str]:
    return [type(m.config).__name__.replace("Config", "") if hasattr(m, "config") else type(m).__name__
            for m in attention.maskers] or ["dense"]


def plot_chain_masks(labels: torch.Tensor, names: Sequence[str], heads: Sequence[int],
                     path: Union[str, Path], title: str = "", batch: int = 0) -> Path:
    """One panel per head of ``labels`` (from :func:`chain_contributions`), coloured by the
    masker that contributed each position, with each head's density annotated."""
    if len(names) + 1 > len(MASKER_COLOURS):
        raise ValueError(f"chain has {len(names)} maskers; plots colour at most {len(MASKER_COLOURS) - 1}")
    colours = MASKER_COLOURS[: len(names) + 1]
    fig = Figure(figsize=(4.0 * len(heads), 4.9), dpi=100)
    for k, head in enumerate(heads):
        panel = labels[batch, head].detach().cpu().numpy()
        density = np.count_nonzero(panel) / panel.size
        ax = fig.add_subplot(1, len(heads), k + 1)
        _draw(ax, panel, colours, f"head {head}: density {density:.2%}")
        ax.set_xlabel("key position")
        ax.set_ylabel("recorded query")
        ax.set_aspect("auto")
    if title:
        fig.suptitle(title, fontsize=11)
    _legend(fig, colours, ["inactive", *[f"{n}" for n in names]])
    fig.subplots_adjust(bottom=0.2, wspace=0.35)
    return _save(fig, path)
