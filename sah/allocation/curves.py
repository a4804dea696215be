"""Error-versus-size curves of a chain, per layer and per head, measured on recordings.

A chain's *budget field* is the one hyperparameter that sets how much it reads (its
size): ``heavy_size`` for the top-k family (oracle, Quest, HashAttention), ``top_p``,
``sampling_rate``, ``base_rate_sampling``, or ``window_size`` of the local window for a
plain sink + local chain. :func:`measure_curves` evaluates the chain with the field at
each candidate size on every recording (``sah.evaluate.evaluate_config``, one shared
context cache) and keeps every layer's and every head's error and density, plus what the
per-head allocation needs to add heads up exactly:

- ``head_weight[r, l, h]``: head ``h``'s share of layer ``l``'s squared dense output norm.
  A layer's error is ``sqrt(sum_h head_weight * head_error**2)`` (its Frobenius error over
  all heads), not a mean of head errors;
- ``head_share[r, l, h]``: head ``h``'s share of the layer's allowed positions, so the
  layer's density is ``sum_h head_share * head_density``.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from sah.attention import ResearchAttentionConfig
from sah.evaluate import ContextCache, evaluate_config, layer_indices
from sah.recording.format import Recording
from sah.infra.checks import ConfigError

#: Budget fields, most specific first: the last masker holding one of them is the budget.
BUDGET_FIELDS = ("heavy_size", "top_p", "sampling_rate", "base_rate_sampling")

COUNT_SIZES = (0, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 2048)
FRACTION_SIZES = (0.0, 0.004, 0.008, 0.012, 0.016, 0.024, 0.032, 0.048, 0.064, 0.096, 0.128,
                  0.192, 0.256, 0.384, 0.5, 1.0)
DEFAULT_SIZES = {
    "top_p": (0.0, 0.3, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99, 0.995, 1.0),
    "sampling_rate": (0.0, 0.005, 0.01, 0.02, 0.03, 0.05, 0.07, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0),
}


def budget_field(config: ResearchAttentionConfig) -> Tuple[int, str]:
    """``(masker index, field)`` of the chain's budget: the last masker with a field of
    :data:`BUDGET_FIELDS`, else the last masker with a ``window_size`` (sink + local)."""
    for names in (BUDGET_FIELDS, ("window_size",)):
        for index in range(len(config.masker_configs) - 1, -1, -1):
            params = config.masker_configs[index].params()
            for name in names:
                if name in params:
                    return index, name
    raise ConfigError("the chain has no budget field (heavy_size, top_p, sampling_rate, "
                      "base_rate_sampling or window_size); name masker_index and field")


def default_sizes(config: ResearchAttentionConfig, masker_index: int, field: str) -> List[Any]:
    """Candidate sizes: counts or fractions of the keys after the chain's own value's type
    for sizes (``heavy_size``, ``window_size``, ...), a spread of shares for ``top_p`` and
    ``sampling_rate``."""
    if field in DEFAULT_SIZES:
        return list(DEFAULT_SIZES[field])
    value = getattr(config.masker_configs[masker_index], field)
    if isinstance(value, float):
        return list(FRACTION_SIZES)
    if isinstance(value, int):
        return list(COUNT_SIZES)
    raise ConfigError(f"masker_configs[{masker_index}].{field}: no default sizes for {value!r}; "
                      f"give the sizes")


def with_size(config: ResearchAttentionConfig, masker_index: int, field: str,
              size: Any) -> ResearchAttentionConfig:
    """The chain with ``field`` of masker ``masker_index`` set to ``size`` everywhere."""
    configs = list(config.masker_configs)
    configs[masker_index] = dataclasses.replace(configs[masker_index], **{field: size})
    return ResearchAttentionConfig(masker_configs=configs)


@dataclass
class Curves:
    """Figures of a chain at each candidate size, per recording, layer and head.

    Arrays are indexed ``[recording, size, layer, head]``; ``layers`` are model layer ids.
    """

    config: ResearchAttentionConfig
    masker_index: int
    field: str
    sizes: List[Any]
    layers: List[int]
    recordings: List[str]
    error: np.ndarray          # (R, S, L) layer output error
    density: np.ndarray        # (R, S, L) layer density
    head_error: np.ndarray     # (R, S, L, H)
    head_density: np.ndarray   # (R, S, L, H)
    head_weight: np.ndarray    # (R, L, H) share of the layer's squared dense output norm
    head_share: np.ndarray     # (R, L, H) share of the layer's allowed positions
    seconds: float = 0.0

    @property
    def num_heads(self) -> int:
        return int(self.head_error.shape[-1])

    def uniform(self, size_index: int) -> Tuple[float, float]:
        """Mean ``(output_error, density)`` of the uniform config at ``sizes[size_index]``."""
        return (float(self.error[:, size_index].mean()), float(self.density[:, size_index].mean()))

    ARRAYS = ("error", "density", "head_error", "head_density", "head_weight", "head_share")

    def to_dict(self) -> Dict[str, Any]:
        """A JSON-ready dict (arrays as nested lists); :meth:`from_dict` reads it back."""
        out: Dict[str, Any] = {"config": self.config.to_dict(), "masker_index": self.masker_index,
                               "field": self.field, "sizes": list(self.sizes),
                               "layers": list(self.layers), "recordings": list(self.recordings),
                               "seconds": self.seconds}
        out.update({name: getattr(self, name).tolist() for name in self.ARRAYS})
        return out

    @classmethod
    def from_dict(cls, data: Dict[str, Any], where: str = "curves") -> "Curves":
        try:
            arrays = {name: np.asarray(data[name], dtype=float) for name in cls.ARRAYS}
            curves = cls(config=ResearchAttentionConfig.from_dict(data["config"], f"{where}.config"),
                         masker_index=int(data["masker_index"]), field=str(data["field"]),
                         sizes=list(data["sizes"]), layers=[int(x) for x in data["layers"]],
                         recordings=[str(x) for x in data["recordings"]],
                         seconds=float(data.get("seconds", 0.0)), **arrays)
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, ConfigError):
                raise
            raise ConfigError(f"{where}: not a curves dict ({type(exc).__name__}: {exc})") from None
        R, S, L = curves.error.shape if curves.error.ndim == 3 else (0, 0, 0)
        H = curves.head_error.shape[-1] if curves.head_error.ndim == 4 else 0
        expected = {"error": (R, S, L), "density": (R, S, L), "head_error": (R, S, L, H),
                    "head_density": (R, S, L, H), "head_weight": (R, L, H), "head_share": (R, L, H)}
        for name, shape in expected.items():
            if getattr(curves, name).shape != shape or not R:
                raise ConfigError(f"{where}.{name}: shape {getattr(curves, name).shape}, expected {shape}")
        if (S, L, R) != (len(curves.sizes), len(curves.layers), len(curves.recordings)):
            raise ConfigError(f"{where}: {S} sizes, {L} layers and {R} recordings in the arrays, but "
                              f"{len(curves.sizes)}, {len(curves.layers)} and {len(curves.recordings)} listed")
        return curves

    def best_uniform(self, density: float) -> Optional[int]:
        """Index of the measured size with the least mean error at mean density <= ``density``."""
        ok = [s for s in range(len(self.sizes)) if self.uniform(s)[1] <= density + 1e-12]
        return min(ok, key=lambda s: self.uniform(s)[0]) if ok else None


def recording_label(recording: Recording, index: int = 0) -> str:
    """A short name: the text name and token span of an embedded recording, else its index."""
    meta = recording.metadata or {}
    if meta.get("text_name"):
        start, end = meta.get("token_start"), meta.get("token_end")
        return f"{meta['text_name']}[{start}:{end}]" if start is not None else str(meta["text_name"])
    return f"recording{index}"


def measure_curves(config: ResearchAttentionConfig, recordings: Sequence[Recording],
                   masker_index: Optional[int] = None, field: Optional[str] = None,
                   sizes: Optional[Sequence[Any]] = None, layers: Optional[Sequence[int]] = None,
                   names: Optional[Sequence[str]] = None, cache: Optional[ContextCache] = None,
                   device: Union[str, torch.device, None] = None) -> Curves:
    """Evaluate ``config`` with its budget field at each size on each recording.

    ``masker_index``/``field`` default to :func:`budget_field`; ``sizes`` to
    :func:`default_sizes`; ``layers`` to every recorded layer (model layer
    ids, common to all recordings); ``names`` label the recordings (default
    :func:`recording_label`). ``config`` must have no ``layer_overrides``.
    """
    start = time.perf_counter()
    if config.layer_overrides:
        raise ConfigError("measure the curves of a uniform chain: this config has "
                          "layer_overrides; drop them")
    if not recordings:
        raise ValueError("no recordings to measure the curves on")
    if masker_index is None or field is None:
        masker_index, field = budget_field(config)
    if not 0 <= masker_index < len(config.masker_configs):
        raise ConfigError(f"masker_index: got {masker_index}; the chain has "
                          f"{len(config.masker_configs)} maskers")
    if field not in config.masker_configs[masker_index].params():
        raise ConfigError(f"field: {type(config.masker_configs[masker_index]).__name__} has no "
                          f"field {field!r}")
    sizes = list(sizes) if sizes is not None else default_sizes(config, masker_index, field)
    configs = [with_size(config, masker_index, field, s) for s in sizes]  # validates sizes
    layer_ids = list(layers) if layers is not None else list(recordings[0].layer_ids)
    heads = recordings[0].num_heads
    for rec in recordings:
        layer_indices(rec, layer_ids)  # every recording has these layers
        if rec.num_heads != heads:
            raise ValueError(f"recordings differ in query heads ({heads} vs {rec.num_heads}); "
                             f"allocate on recordings of one model")
    cache = cache if cache is not None else ContextCache(max_recordings=len(recordings))
    shape = (len(recordings), len(sizes), len(layer_ids))
    error, density = np.zeros(shape), np.zeros(shape)
    head_error, head_density = np.zeros(shape + (heads,)), np.zeros(shape + (heads,))
    head_weight, head_share = np.zeros((len(recordings), len(layer_ids), heads)), np.zeros(
        (len(recordings), len(layer_ids), heads))
    for r, rec in enumerate(recordings):
        dev = torch.device(device) if device is not None else rec.layers[0].keys.device
        for li, index in enumerate(layer_indices(rec, layer_ids)):
            ctx = cache.get(rec, index, dev)
            norms = ctx.dense_output.double().pow(2).sum(dim=(0, 2, 3)).cpu().numpy()
            head_weight[r, li] = norms / norms.sum() if norms.sum() > 0 else 1.0 / heads
            allowed = ctx.allowed_per_head.numpy()
            head_share[r, li] = allowed / allowed.sum()
        for s, cfg in enumerate(configs):
            ev = evaluate_config(cfg, rec, layers=layer_ids, cache=cache, device=dev)
            for li, lf in enumerate(ev.layers):
                error[r, s, li], density[r, s, li] = lf.output_error, lf.density
                head_error[r, s, li], head_density[r, s, li] = lf.per_head_error, lf.per_head_density
    if names is None:
        names = [recording_label(rec, r) for r, rec in enumerate(recordings)]
    if len(set(names)) != len(names):
        names = [f"{name}#{r}" for r, name in enumerate(names)]
    return Curves(config=config, masker_index=masker_index, field=field, sizes=sizes,
                  layers=layer_ids, recordings=list(names), error=error, density=density,
                  head_error=head_error, head_density=head_density, head_weight=head_weight,
                  head_share=head_share, seconds=time.perf_counter() - start)
