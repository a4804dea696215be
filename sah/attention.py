"""A chain of maskers: ``ResearchAttentionConfig`` (data) and ``ResearchAttention`` (runs it).

The chain starts from the empty mask and lets each masker add positions; the sparse
attention estimator then turns the final mask into an output. An empty chain is dense
attention. ``layer_overrides`` gives some layers (or heads) their own values
(:mod:`sah.layer_config`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
import yaml

from sah.context import AttentionContext
from sah.estimator import Evaluation, evaluate_mask, sparse_attention
from sah.layer_config import (LayerOverrides, build_layer_maskers, normalize_layer_overrides,
                              overrides_to_plain)
from sah.mask import Mask
from sah.layer_types import LayerType
from sah.maskers.base import MaskerConfig, MaskerRegistry, ResearchMasker
from sah.infra.safe_yaml import load_json, load_yaml, read_text
from sah.infra.checks import ConfigError, short_repr
from sah.infra.threads import map_in_threads


@dataclass
class ResearchAttentionConfig:
    """An ordered list of masker configs. At most one sampling masker.

    ``layer_overrides``: ``{layer id: {masker index: {field: value}}}``, a value being a
    scalar or a list with one value per query head (:mod:`sah.layer_config`)."""

    masker_configs: List[MaskerConfig] = field(default_factory=list)
    layer_overrides: LayerOverrides = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.masker_configs = list(self.masker_configs)
        sampling = []
        for i, cfg in enumerate(self.masker_configs):
            if not isinstance(cfg, MaskerConfig):
                raise ConfigError(f"masker_configs[{i}]: expected a MaskerConfig, got {type(cfg).__name__}")
            if MaskerRegistry.get_masker_class(type(cfg)).is_sampling:
                sampling.append(f"masker_configs[{i}] ({type(cfg).__name__})")
        if len(sampling) > 1:
            raise ConfigError(
                f"a chain may hold at most one sampling masker (the estimator assumes one "
                f"sampling stage); found {' and '.join(sampling)}: keep one")
        self.layer_overrides = normalize_layer_overrides(self.layer_overrides, self.masker_configs)

    # ------------------------------------------------------------------ dicts
    def to_dict(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"masker_configs": [cfg.to_dict() for cfg in self.masker_configs]}
        if self.layer_overrides:
            out["layer_overrides"] = overrides_to_plain(self.layer_overrides)
        return out

    def to_hub_dict(self) -> Dict[str, Any]:
        """The prior hub's JSON layout: ``{"type": ..., "masker_configs": [{"type", "params"}]}``.

        That layout has one masker list for every layer and head: a config with
        ``layer_overrides`` is refused rather than exported without them."""
        if self.layer_overrides:
            raise ConfigError(
                f"the prior hub's JSON layout has one set of masker values for every layer and "
                f"head, so it cannot carry layer_overrides (layers "
                f"{', '.join(map(str, self.layer_overrides))}); export as yaml or json instead")
        return {
            "type": "ResearchAttentionConfig",
            "masker_configs": [{"type": type(c).__name__,
                                "params": {k: v for k, v in c.to_dict().items() if k != "type"}}
                               for c in self.masker_configs]}

    @classmethod
    def from_dict(cls, data: Any, where: str = "") -> "ResearchAttentionConfig":
        """Accepts sah's layout, the hub layout, or a bare list of masker dicts."""
        prefix = where or "config"
        if isinstance(data, list):
            data = {"masker_configs": data}
        if not isinstance(data, dict):
            raise ConfigError(f"{prefix}: expected a mapping with 'masker_configs', got {type(data).__name__}")
        data = dict(data)
        if data.get("type", "ResearchAttentionConfig") != "ResearchAttentionConfig":
            raise ConfigError(f"{prefix}.type: got {short_repr(data['type'])}; expected 'ResearchAttentionConfig'")
        data.pop("type", None)
        unknown = sorted(set(data) - {"masker_configs", "layer_overrides"})
        if unknown:
            raise ConfigError(f"{prefix}: unknown key {unknown[0]!r}; expected 'masker_configs' "
                              f"(and optionally 'layer_overrides')")
        items = data.get("masker_configs", [])
        if not isinstance(items, list):
            raise ConfigError(f"{prefix}.masker_configs: expected a list of maskers")
        configs = [MaskerConfig.from_dict(item, f"{prefix}.masker_configs[{i}]")
                   for i, item in enumerate(items)]
        overrides = normalize_layer_overrides(data.get("layer_overrides"), configs,
                                              f"{prefix}.layer_overrides")
        return cls(masker_configs=configs, layer_overrides=overrides)

    # ------------------------------------------------------------------ files
    def to_yaml(self) -> str:
        data = self.to_dict()
        overrides = data.pop("layer_overrides", None)
        text = yaml.safe_dump(data, sort_keys=False)
        if overrides:  # one line per overridden masker: {heavy_size: [per-head values]}
            text += yaml.safe_dump({"layer_overrides": overrides}, sort_keys=False,
                                   default_flow_style=None, width=100)
        return text

    def to_json(self, hub: bool = False) -> str:
        return json.dumps(self.to_hub_dict() if hub else self.to_dict(), indent=2)

    @classmethod
    def from_yaml(cls, text: str, where: str = "") -> "ResearchAttentionConfig":
        """Safe, bounded YAML (:mod:`sah.infra.safe_yaml`: duplicate keys, alias bombs and deep
        nesting are refused)."""
        return cls.from_dict(load_yaml(text, where or "config"), where)

    @classmethod
    def from_json(cls, text: str, where: str = "") -> "ResearchAttentionConfig":
        return cls.from_dict(load_json(text, where or "config"), where)

    def to_file(self, path: Union[str, Path], hub: bool = False) -> Path:
        """Write YAML (``.yaml``/``.yml``) or JSON (anything else); ``hub`` uses the hub layout."""
        path = Path(path)
        text = self.to_yaml() if path.suffix in (".yaml", ".yml") and not hub else self.to_json(hub)
        path.write_text(text)
        return path

    @classmethod
    def from_file(cls, path: Union[str, Path]) -> "ResearchAttentionConfig":
        """Read a YAML or JSON config. A relative file name in a masker field ending in
        ``_file`` (``hat_weight_file``) is resolved against the config file's folder, so a
        config and the weights beside it load from anywhere."""
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: no such config file")
        text = read_text(path)
        if path.suffix == ".json":
            config = cls.from_json(text, str(path))
        else:
            config = cls.from_yaml(text, str(path))
        return config._files_relative_to(path.parent)

    def _files_relative_to(self, folder: Path) -> "ResearchAttentionConfig":
        import dataclasses
        maskers = []
        for cfg in self.masker_configs:
            changes = {f.name: str(folder / value) for f in dataclasses.fields(cfg)
                       if f.name.endswith("_file") and isinstance(value := getattr(cfg, f.name), str)
                       and not Path(value).expanduser().is_absolute()}
            maskers.append(dataclasses.replace(cfg, **changes) if changes else cfg)

        def relative(field_name: str, value: Any) -> Any:
            if (field_name.endswith("_file") and isinstance(value, str)
                    and not Path(value).expanduser().is_absolute()):
                return str(folder / value)
            return value

        overrides = {layer: {index: {name: ([relative(name, v) for v in value]
                                            if isinstance(value, list) else relative(name, value))
                                     for name, value in fields.items()}
                             for index, fields in per_layer.items()}
                     for layer, per_layer in self.layer_overrides.items()}
        return ResearchAttentionConfig(maskers, layer_overrides=overrides)


#: custom_attention splits a call whose (b, h, q, n) tensors would exceed this many
#: entries into chunks of queries, when every masker works row by row (no sampler).
CHUNK_ELEMENTS = 1 << 22


def _query_rows(attention_mask: Optional[torch.Tensor], part: slice,
                num_queries: int) -> Optional[torch.Tensor]:
    """The rows of a user attention mask for a chunk of queries (broadcast rows as they are)."""
    if attention_mask is None or attention_mask.dim() < 2 or attention_mask.shape[-2] != num_queries:
        return attention_mask
    return attention_mask[..., part, :]


class ResearchAttention:
    """Runs a chain of maskers and the sparse attention estimator."""

    def __init__(self, config: ResearchAttentionConfig, maskers: List[ResearchMasker]) -> None:
        self.config = config
        self.maskers = maskers
        self._layer_maskers: Dict[int, List[ResearchMasker]] = {}
        self._masker_cache: Dict[Any, ResearchMasker] = {}  # maskers shared by equal configs

    @classmethod
    def create_from_config(cls, config: ResearchAttentionConfig) -> "ResearchAttention":
        return cls(config, [ResearchMasker.create_from_config(c) for c in config.masker_configs])

    def maskers_for(self, layer_idx: Optional[int]) -> List[ResearchMasker]:
        """The maskers layer ``layer_idx`` runs (its ``layer_overrides`` applied)."""
        if layer_idx is None or not self.config.layer_overrides:
            return self.maskers
        layer = int(layer_idx)
        if layer not in self.config.layer_overrides:
            return self.maskers
        if layer not in self._layer_maskers:
            self._layer_maskers[layer] = build_layer_maskers(self.config, layer, self.maskers,
                                                             self._masker_cache)
        return self._layer_maskers[layer]

    def aux_bits_per_token(self, head_dim: int, layer_idx: Optional[int] = None) -> float:
        """Auxiliary memory the chain keeps per key and KV head, in bits per token (in layer
        ``layer_idx`` when given)."""
        return float(sum(m.aux_bits_per_token(head_dim) for m in self.maskers_for(layer_idx)))

    def compute_mask(self, ctx: AttentionContext, sparse_meta_data: Optional[Dict[Any, Any]] = None,
                     layer_idx: Optional[int] = None, **kwargs: Any) -> Mask:
        """The chain's mask on the call ``ctx`` (empty chain: the full mask)."""
        if not self.maskers:
            return Mask.create_full(ctx.mask_shape, ctx.device)
        mask = Mask.create_empty(ctx.mask_shape, ctx.device)
        meta = sparse_meta_data if sparse_meta_data is not None else {}
        for masker in self.maskers_for(layer_idx):
            mask = masker.add_mask(ctx.keys, ctx.queries, ctx.values, ctx.attention_mask,
                                   ctx.scaling, 0.0, meta, mask, context=ctx,
                                   query_positions=ctx.query_positions, layer_idx=layer_idx,
                                   **kwargs)
        return mask

    def custom_attention(self, module: Any, queries: torch.Tensor, keys: torch.Tensor,
                         values: torch.Tensor, attention_mask: Optional[torch.Tensor],
                         scaling: Optional[float], dropout: float = 0.0,
                         sparse_meta_data: Optional[Dict[Any, Any]] = None,
                         layer_idx: Optional[int] = None,
                         query_positions: Optional[torch.Tensor] = None,
                         return_weights: bool = False,
                         return_mask: bool = False,
                         layer_type: Optional[LayerType] = None,
                         **kwargs: Any) -> Tuple[Any, ...]:
        """Sparse attention for one call. Returns ``(output (b, h, q, dv), weights)`` in the
        queries' dtype; ``weights`` is None unless ``return_weights=True`` asks for the
        estimator's normalised ``(b, h, q, n)`` weights (transformers' attention interface
        accepts None, and the dense weights cost a full pass over every key). With
        ``return_mask=True`` the chain's :class:`Mask` of the call comes third.

        Only what the chain needs is computed: a chain that never reads the true scores
        (sink, local, sampling, Quest, MagicPig with kept codes) computes dot products for
        its active keys only. ``dropout`` is accepted for signature compatibility and not
        applied (sah evaluates, it does not train). ``attention_mask`` is boolean (True =
        allowed) or additive (0 = allowed); causality comes from ``query_positions``
        (default ``n - q + i``). Inputs may be non-contiguous views; values may have a head
        dim ``dv`` other than the keys'. Bad inputs (non-float tensors, no keys, more
        queries than keys without positions, negative or non-integer positions) raise
        ``ValueError``. ``layer_type`` (:mod:`sah.layer_types`; default full) limits the
        keys a query may see to the layer's window or chunk; fractional sizes resolve
        against the keys it allows.
        """
        ctx = AttentionContext(queries, keys, values, scaling=scaling,
                               query_positions=query_positions, attention_mask=attention_mask,
                               layer_type=layer_type)
        d = ctx.dims
        step = max(1, CHUNK_ELEMENTS // (d.batch_size * d.num_heads * d.seq_len_keys))
        if d.seq_len_queries <= step or return_mask or not self.rows_independent(layer_idx):
            mask = self.compute_mask(ctx, sparse_meta_data, layer_idx, **kwargs)
            result = sparse_attention(ctx, mask, return_weights=return_weights)
            weights = result.weights.to(queries.dtype) if return_weights else None
            output = result.output.to(queries.dtype)
            return (output, weights, mask) if return_mask else (output, weights)
        # Many queries, a chain that works row by row: the same result, computed for a
        # chunk of queries at a time (temporaries small enough to be recycled, not
        # page-faulted in). Kept per-layer state (Quest's page bounds) serves every chunk.
        meta = sparse_meta_data if sparse_meta_data is not None else {}

        def chunk(part: slice) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
            sub = AttentionContext(queries[:, :, part], keys, values, scaling=ctx.scaling,
                                   query_positions=ctx.query_positions[..., part],
                                   attention_mask=_query_rows(attention_mask, part, d.seq_len_queries),
                                   layer_type=ctx.layer_type)
            result = sparse_attention(sub, self.compute_mask(sub, meta, layer_idx, **kwargs),
                                      return_weights=return_weights)
            return (result.output.to(queries.dtype),
                    result.weights.to(queries.dtype) if return_weights else None)

        parts = [slice(start, min(start + step, d.seq_len_queries))
                 for start in range(0, d.seq_len_queries, step)]
        # the first chunk alone: it fills what later chunks only read (kept page bounds,
        # per-layer maskers); the others run side by side on the CPU (sah.infra.threads)
        done = [chunk(parts[0])] + map_in_threads(chunk, parts[1:], ctx.device)
        output = torch.cat([out for out, _ in done], dim=2)
        return output, torch.cat([w for _, w in done], dim=2) if return_weights else None

    def rows_independent(self, layer_idx: Optional[int] = None) -> bool:
        """True when every masker layer ``layer_idx`` runs adds positions row by row (see
        :attr:`ResearchMasker.rows_independent`): a call may be split into query chunks."""
        return all(m.rows_independent for m in self.maskers_for(layer_idx))

    def evaluate(self, ctx: AttentionContext, layer_idx: Optional[int] = None,
                 **kwargs: Any) -> Tuple[Evaluation, Mask]:
        """Compare the chain with dense attention on ``ctx``: error, density, per head."""
        mask = self.compute_mask(ctx, layer_idx=layer_idx, **kwargs)
        return evaluate_mask(ctx, mask), mask
