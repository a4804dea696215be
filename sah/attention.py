"""A chain of maskers: ``ResearchAttentionConfig`` (data) and ``ResearchAttention`` (runs it).

The chain starts from the empty mask and lets each masker add positions; the sparse
attention estimator then turns the final mask into an output. An empty chain is dense
attention.
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
from sah.mask import Mask
from sah.maskers.base import MaskerConfig, MaskerRegistry, ResearchMasker
from sah.validation import ConfigError


@dataclass
class ResearchAttentionConfig:
    """An ordered list of masker configs. At most one sampling masker."""

    masker_configs: List[MaskerConfig] = field(default_factory=list)

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

    # ------------------------------------------------------------------ dicts
    def to_dict(self) -> Dict[str, Any]:
        return {"masker_configs": [cfg.to_dict() for cfg in self.masker_configs]}

    def to_hub_dict(self) -> Dict[str, Any]:
        """The prior hub's JSON layout: ``{"type": ..., "masker_configs": [{"type", "params"}]}``."""
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
            raise ConfigError(f"{prefix}.type: got {data['type']!r}; expected 'ResearchAttentionConfig'")
        data.pop("type", None)
        unknown = sorted(set(data) - {"masker_configs"})
        if unknown:
            raise ConfigError(f"{prefix}: unknown key {unknown[0]!r}; expected 'masker_configs'")
        items = data.get("masker_configs", [])
        if not isinstance(items, list):
            raise ConfigError(f"{prefix}.masker_configs: expected a list of maskers")
        configs = [MaskerConfig.from_dict(item, f"{prefix}.masker_configs[{i}]")
                   for i, item in enumerate(items)]
        return cls(masker_configs=configs)

    # ------------------------------------------------------------------ files
    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def to_json(self, hub: bool = False) -> str:
        return json.dumps(self.to_hub_dict() if hub else self.to_dict(), indent=2)

    @classmethod
    def from_yaml(cls, text: str, where: str = "") -> "ResearchAttentionConfig":
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{where or 'config'}: not valid YAML ({exc})") from None
        return cls.from_dict(data, where)

    @classmethod
    def from_json(cls, text: str, where: str = "") -> "ResearchAttentionConfig":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{where or 'config'}: not valid JSON ({exc})") from None
        return cls.from_dict(data, where)

    def to_file(self, path: Union[str, Path], hub: bool = False) -> Path:
        """Write YAML (``.yaml``/``.yml``) or JSON (anything else); ``hub`` uses the hub layout."""
        path = Path(path)
        text = self.to_yaml() if path.suffix in (".yaml", ".yml") and not hub else self.to_json(hub)
        path.write_text(text)
        return path

    @classmethod
    def from_file(cls, path: Union[str, Path]) -> "ResearchAttentionConfig":
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: no such config file")
        text = path.read_text()
        if path.suffix == ".json":
            return cls.from_json(text, str(path))
        return cls.from_yaml(text, str(path))


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

    @classmethod
    def create_from_config(cls, config: ResearchAttentionConfig) -> "ResearchAttention":
        return cls(config, [ResearchMasker.create_from_config(c) for c in config.masker_configs])

    def aux_bits_per_token(self, head_dim: int) -> float:
        """Auxiliary memory the chain keeps per key and KV head, in bits per token."""
        return float(sum(m.aux_bits_per_token(head_dim) for m in self.maskers))

    def compute_mask(self, ctx: AttentionContext, sparse_meta_data: Optional[Dict[Any, Any]] = None,
                     layer_idx: Optional[int] = None, **kwargs: Any) -> Mask:
        """The chain's mask on the call ``ctx`` (empty chain: the full mask)."""
        if not self.maskers:
            return Mask.create_full(ctx.mask_shape, ctx.device)
        mask = Mask.create_empty(ctx.mask_shape, ctx.device)
        meta = sparse_meta_data if sparse_meta_data is not None else {}
        for masker in self.maskers:
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
                         **kwargs: Any) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Sparse attention for one call. Returns ``(output (b, h, q, dv), weights)`` in the
        queries' dtype; ``weights`` is None unless ``return_weights=True`` asks for the
        estimator's normalised ``(b, h, q, n)`` weights (transformers' attention interface
        accepts None, and the dense weights cost a full pass over every key).

        Only what the chain needs is computed: a chain that never reads the true scores
        (sink, local, sampling, Quest, MagicPig with kept codes) computes dot products for
        its active keys only. ``dropout`` is accepted for signature compatibility and not
        applied (sah evaluates, it does not train). ``attention_mask`` is boolean (True =
        allowed) or additive (0 = allowed); causality comes from ``query_positions``
        (default ``n - q + i``). Inputs may be non-contiguous views; values may have a head
        dim ``dv`` other than the keys'. Bad inputs (non-float tensors, no keys, more
        queries than keys without positions, negative or non-integer positions) raise
        ``ValueError``.
        """
        ctx = AttentionContext(queries, keys, values, scaling=scaling,
                               query_positions=query_positions, attention_mask=attention_mask)
        d = ctx.dims
        step = max(1, CHUNK_ELEMENTS // (d.batch_size * d.num_heads * d.seq_len_keys))
        if d.seq_len_queries <= step or not self.rows_independent():
            mask = self.compute_mask(ctx, sparse_meta_data, layer_idx, **kwargs)
            result = sparse_attention(ctx, mask, return_weights=return_weights)
            weights = result.weights.to(queries.dtype) if return_weights else None
            return result.output.to(queries.dtype), weights
        # Many queries, a chain that works row by row: the same result, computed for a
        # chunk of queries at a time (temporaries small enough to be recycled, not
        # page-faulted in). Kept per-layer state (Quest's page bounds) serves every chunk.
        meta = sparse_meta_data if sparse_meta_data is not None else {}
        outputs, weights = [], []
        for start in range(0, d.seq_len_queries, step):
            part = slice(start, min(start + step, d.seq_len_queries))
            sub = AttentionContext(queries[:, :, part], keys, values, scaling=ctx.scaling,
                                   query_positions=ctx.query_positions[..., part],
                                   attention_mask=_query_rows(attention_mask, part, d.seq_len_queries))
            result = sparse_attention(sub, self.compute_mask(sub, meta, layer_idx, **kwargs),
                                      return_weights=return_weights)
            outputs.append(result.output.to(queries.dtype))
            if return_weights:
                weights.append(result.weights.to(queries.dtype))
        return torch.cat(outputs, dim=2), torch.cat(weights, dim=2) if return_weights else None

    def rows_independent(self) -> bool:
        """True when every masker of the chain adds positions row by row (see
        :attr:`ResearchMasker.rows_independent`): a call may be split into query chunks."""
        return all(m.rows_independent for m in self.maskers)

    def evaluate(self, ctx: AttentionContext, layer_idx: Optional[int] = None,
                 **kwargs: Any) -> Tuple[Evaluation, Mask]:
        """Compare the chain with dense attention on ``ctx``: error, density, per head."""
        mask = self.compute_mask(ctx, layer_idx=layer_idx, **kwargs)
        return evaluate_mask(ctx, mask), mask
