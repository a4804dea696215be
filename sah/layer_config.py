"""Per-layer and per-head values in a chain config: ``layer_overrides``.

A :class:`~sah.attention.ResearchAttentionConfig` holds one list of masker configs for
every layer. ``layer_overrides`` changes some fields of some maskers in some layers::

    masker_configs:
    - {type: SinkMaskerConfig, sink_size: 4}
    - {type: LocalMaskerConfig, window_size: 32}
    - {type: OracleTopKConfig, heavy_size: 128}
    layer_overrides:
      0:                          # model layer id (the ``layer_idx`` of the attention call)
        2: {heavy_size: 64}       # masker index in masker_configs: {field: value}
      5:
        2: {heavy_size: [0, 32, 32, 64, 128, 128, 256, 512, 64]}   # one value per query head

- A layer not listed (or a call without ``layer_idx``) runs ``masker_configs`` as written;
  a listed layer runs them with its fields replaced. A masker's type cannot change.
- A **list** is a per-head value: one value per query head of the call (``h`` of the
  queries ``(b, h, q, d)``), head ``j`` running the masker with value ``j``: its rows of
  the mask are exactly the rows the single-value chain gives it. Lists of one override
  have the same length; that length is checked against the call's heads when the layer
  runs (a mismatch raises :class:`ConfigError` naming the override). Fields whose value is
  itself a mapping (``hat_weights``) cannot be overridden.
- Every value is validated when the config is built or loaded, by the masker's own
  ``validate`` (each per-head value, alone and together with the other fields of its head);
  errors name the YAML path, e.g. ``layer_overrides[5][2].heavy_size[3]: ...``.

Per-head values are run by :class:`PerHeadMasker`: heads that share a value share one call
of the masker and keep their rows of its mask. Sinks, local windows and the top-k / top-p
family (``select`` not overridden) have native paths: one pass with a per-head size
(sink, local, top-k on a shared sort) or one scoring pass with a selection per distinct
value (hashed and other scores are computed once).
"""

from __future__ import annotations

import dataclasses
from numbers import Integral
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from sah.context import AttentionContext
from sah.mask import Mask
from sah.maskers.base import MaskerConfig, MaskerRegistry, ResearchMasker
from sah.infra.checks import ConfigError, short_repr

#: layer id -> masker index -> field -> value (a scalar, or a list with one value per head)
LayerOverrides = Dict[int, Dict[int, Dict[str, Any]]]


# ---------------------------------------------------------------------- parsing
def _key(value: Any, what: str, where: str) -> int:
    """A layer id or masker index: an int >= 0 (JSON gives digit strings)."""
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    if isinstance(value, Integral) and not isinstance(value, bool) and value >= 0:
        return int(value)
    raise ConfigError(f"{where}: {what} {short_repr(value)} is not valid; use an int >= 0")


def _is_scalar(value: Any) -> bool:
    return not isinstance(value, (list, tuple, dict, set, torch.Tensor))


def normalize_layer_overrides(data: Any, masker_configs: Sequence[MaskerConfig],
                              where: str = "layer_overrides") -> LayerOverrides:
    """Check ``data`` against the chain and return it with int keys, sorted, lists as lists.

    Raises :class:`ConfigError` naming the path for: a mapping that is not one, a layer id
    or masker index that is not an int >= 0, a masker index beyond the chain, a field the
    masker does not have (or ``type`` / ``search_space`` / a mapping-valued field), an
    empty or nested per-head list, lists of different lengths, and any value the masker's
    own validation refuses.
    """
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping {{layer: {{masker index: {{field: value}}}}}}, "
                          f"got {type(data).__name__}")
    out: LayerOverrides = {}
    for raw_layer, per_layer in data.items():
        layer = _key(raw_layer, "layer id", f"{where}[{short_repr(raw_layer)}]")
        lwhere = f"{where}[{layer}]"
        if layer in out:
            raise ConfigError(f"{lwhere}: layer {layer} is given twice; merge its entries")
        if not isinstance(per_layer, dict) or not per_layer:
            raise ConfigError(f"{lwhere}: expected a non-empty mapping {{masker index: {{field: value}}}}, "
                              f"got {short_repr(per_layer)}")
        maskers: Dict[int, Dict[str, Any]] = {}
        for raw_index, fields in per_layer.items():
            index = _key(raw_index, "masker index", f"{lwhere}[{short_repr(raw_index)}]")
            iwhere = f"{lwhere}[{index}]"
            if index >= len(masker_configs):
                raise ConfigError(f"{iwhere}: masker index {index} is out of range; the chain has "
                                  f"{len(masker_configs)} maskers (indices 0..{len(masker_configs) - 1})")
            if index in maskers:
                raise ConfigError(f"{iwhere}: masker index {index} is given twice; merge its fields")
            maskers[index] = _check_fields(fields, masker_configs[index], iwhere)
        out[layer] = dict(sorted(maskers.items()))
    return dict(sorted(out.items()))


def _check_fields(fields: Any, base: MaskerConfig, where: str) -> Dict[str, Any]:
    name = type(base).__name__
    if not isinstance(fields, dict) or not fields:
        raise ConfigError(f"{where}: expected a non-empty mapping {{field: value}} for {name}, got {short_repr(fields)}")
    params = base.params()
    checked: Dict[str, Any] = {}
    for field, value in fields.items():
        fwhere = f"{where}.{field}"
        if field not in params:
            raise ConfigError(f"{fwhere}: {name} has no field {short_repr(field)}; its fields are "
                              f"{', '.join(sorted(params))} (a masker's type cannot change per layer)")
        if not _is_scalar(params[field]) or field in _collection_fields(base):
            raise ConfigError(f"{fwhere}: {name}.{field} holds a mapping and cannot be set per layer")
        if isinstance(value, (list, tuple)):
            if not value:
                raise ConfigError(f"{fwhere}: an empty list; give one value per query head")
            for j, item in enumerate(value):
                if not _is_scalar(item):
                    raise ConfigError(f"{fwhere}[{j}]: got {short_repr(item)}; a per-head list holds one "
                                      f"plain value per query head")
                _replace(base, {field: item}, f"{fwhere}[{j}]")
            checked[field] = list(value)
        elif not _is_scalar(value):
            raise ConfigError(f"{fwhere}: got {short_repr(value)}; expected a value or a list with one "
                              f"value per query head")
        else:
            _replace(base, {field: value}, fwhere)
            checked[field] = value
    lengths = {f: len(v) for f, v in checked.items() if isinstance(v, list)}
    if len(set(lengths.values())) > 1:
        raise ConfigError(f"{where}: per-head lists differ in length ({lengths}); give every "
                          f"list one value per query head")
    heads = next(iter(lengths.values()), 1)
    for j in range(heads):  # each head's values together (fields checked against each other)
        _replace(base, head_values(checked, j), where if heads == 1 else f"{where} (head {j})")
    return checked


def _collection_fields(config: MaskerConfig) -> set:
    """Fields declared as mappings or lists (``hat_weights``): never per layer or per head."""
    return {f.name for f in dataclasses.fields(config)
            if any(word in str(f.type) for word in ("Dict", "List", "dict", "list", "Tensor"))}


def _replace(base: MaskerConfig, values: Dict[str, Any], where: str) -> MaskerConfig:
    try:
        return dataclasses.replace(base, **values)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from None


def head_values(fields: Dict[str, Any], head: int) -> Dict[str, Any]:
    """The scalar field values of query head ``head`` (list entries picked, scalars kept)."""
    return {f: (v[head] if isinstance(v, list) else v) for f, v in fields.items()}


def overrides_to_plain(overrides: LayerOverrides) -> Dict[int, Dict[int, Dict[str, Any]]]:
    """A YAML/JSON-ready copy (int keys; JSON turns them into strings, which load back)."""
    return {layer: {index: {f: (list(v) if isinstance(v, list) else v) for f, v in fields.items()}
                    for index, fields in maskers.items()}
            for layer, maskers in overrides.items()}


def config_for_layer(config: Any, layer: int, head: Optional[int] = None) -> Any:
    """The uniform :class:`ResearchAttentionConfig` that layer ``layer`` runs (for ``head``
    when the layer has per-head values; without ``head`` such a layer is refused)."""
    overrides = config.layer_overrides.get(int(layer), {})
    configs = []
    for i, cfg in enumerate(config.masker_configs):
        fields = overrides.get(i, {})
        if any(isinstance(v, list) for v in fields.values()) and head is None:
            raise ConfigError(f"layer_overrides[{layer}][{i}] has per-head values; name a head")
        configs.append(dataclasses.replace(cfg, **head_values(fields, head or 0)) if fields else cfg)
    return type(config)(masker_configs=configs)


# ---------------------------------------------------------------------- running
MaskerCache = Dict[Tuple[Any, ...], ResearchMasker]


def masker_key(config: MaskerConfig) -> Tuple[Any, ...]:
    """Identifies a config's values (mapping-valued fields such as ``hat_weights`` by object,
    which :func:`dataclasses.replace` shares), so equal configs share one masker."""
    return (type(config),) + tuple((name, type(v), v) if _is_scalar(v) else (name, id(v))
                                   for name, v in config.params().items())


def cached_masker(config: MaskerConfig, cache: Optional[MaskerCache]) -> ResearchMasker:
    """A masker for ``config``, shared through ``cache`` with every equal config (so, for
    example, HashAttention weights are loaded once per chain, not once per layer and size)."""
    if cache is None:
        return ResearchMasker.create_from_config(config)
    key = masker_key(config)
    if key not in cache:
        cache[key] = ResearchMasker.create_from_config(config)
    return cache[key]


def build_layer_maskers(config: Any, layer: int, base_maskers: Sequence[ResearchMasker],
                        cache: Optional[MaskerCache] = None) -> List[ResearchMasker]:
    """The maskers layer ``layer`` runs: the chain's own instances where nothing is
    overridden, maskers with the layer's values elsewhere (:class:`PerHeadMasker` for
    per-head lists). ``cache`` (one per chain) shares maskers of equal configs."""
    if cache is not None:
        for cfg, masker in zip(config.masker_configs, base_maskers):
            cache.setdefault(masker_key(cfg), masker)
    overrides = config.layer_overrides.get(int(layer), {})
    out: List[ResearchMasker] = []
    for i, (cfg, masker) in enumerate(zip(config.masker_configs, base_maskers)):
        fields = overrides.get(i)
        if not fields:
            out.append(masker)
            continue
        scalars = {f: v for f, v in fields.items() if not isinstance(v, list)}
        per_head = {f: v for f, v in fields.items() if isinstance(v, list)}
        layer_cfg = dataclasses.replace(cfg, **scalars) if scalars else cfg
        if per_head:
            out.append(PerHeadMasker(layer_cfg, per_head, f"layer_overrides[{layer}][{i}]", cache))
        else:
            out.append(cached_masker(layer_cfg, cache))
    return out


class PerHeadMasker(ResearchMasker):
    """One masker of a chain with a different value per query head.

    Head ``j`` gets the rows that the masker with its value ``j`` gives; heads sharing a
    value share one call. ``use_native`` (default True) takes the native per-head path
    where one exists (sinks, local windows, the top-k / top-p family); False always runs
    the masker once per distinct value (the reference the tests compare against).
    """

    def __init__(self, config: MaskerConfig, per_head: Dict[str, List[Any]], where: str,
                 cache: Optional[MaskerCache] = None) -> None:
        super().__init__(config)
        self.per_head = per_head
        self.where = where
        self.masker_class = MaskerRegistry.get_masker_class(type(config))
        self.is_sampling = self.masker_class.is_sampling
        self.use_native = True
        self._cache: MaskerCache = cache if cache is not None else {}
        self._by_values: Dict[Tuple[Any, ...], ResearchMasker] = {}

    def masker_for(self, values: Tuple[Any, ...]) -> ResearchMasker:
        """The plain masker for one head's values (``values`` in ``self.per_head`` order)."""
        key = tuple((type(v), v) for v in values)
        if key not in self._by_values:
            cfg = dataclasses.replace(self.config, **dict(zip(self.per_head, values)))
            self._by_values[key] = cached_masker(cfg, self._cache)
        return self._by_values[key]

    def head_groups(self, num_heads: int) -> List[Tuple[Tuple[Any, ...], List[int]]]:
        """``(values, heads)`` per distinct value, in order of first appearance."""
        for field, values in self.per_head.items():
            if len(values) != num_heads:
                raise ConfigError(
                    f"{self.where}.{field}: {len(values)} per-head values, but the call has "
                    f"{num_heads} query heads; give one value per query head")
        groups: Dict[Tuple[Any, ...], List[int]] = {}
        for j in range(num_heads):
            key = tuple((type(v[j]), v[j]) for v in self.per_head.values())
            groups.setdefault(key, []).append(j)
        return [(tuple(v for _, v in key), heads) for key, heads in groups.items()]

    def aux_bits_per_token(self, head_dim: int) -> float:
        """Mean over the heads of each head's masker's auxiliary bits per token."""
        heads = len(next(iter(self.per_head.values())))
        groups = self.head_groups(heads)
        return float(sum(self.masker_for(v).aux_bits_per_token(head_dim) * len(h)
                         for v, h in groups) / heads)

    def add_mask(self, keys, queries, values, attention_mask, scaling, dropout,
                 sparse_meta_data, previous_mask: Mask, **kwargs: Any) -> Mask:
        if previous_mask.is_full():
            return previous_mask
        groups = self.head_groups(int(queries.shape[1]))
        if len(groups) == 1:
            return self.masker_for(groups[0][0]).add_mask(
                keys, queries, values, attention_mask, scaling, dropout, sparse_meta_data,
                previous_mask, **kwargs)
        ctx = self.context(keys, queries, values, attention_mask, scaling, kwargs)
        kwargs = {**kwargs, "context": ctx}
        if self.use_native:
            from sah.per_head_native import native_add_mask  # noqa: PLC0415 (optional path)
            mask = native_add_mask(self, ctx, groups, previous_mask, sparse_meta_data, kwargs)
            if mask is not None:
                return mask
        meta = sparse_meta_data
        parts = []
        written: List[Dict[Any, Any]] = []
        for vals, heads in groups:
            call_meta = dict(meta) if meta is not None else None
            mask = self.masker_for(vals).add_mask(keys, queries, values, attention_mask, scaling,
                                                  dropout, call_meta, previous_mask, **kwargs)
            parts.append((mask, heads))
            if call_meta is not None:
                written.append(call_meta)
        if meta is not None:
            meta.update(_merge_meta(written, groups, int(queries.shape[1])))
        return combine_head_rows(ctx, parts)


def _merge_meta(written: List[Dict[Any, Any]], groups: List[Tuple[Tuple[Any, ...], List[int]]],
                num_heads: int) -> Dict[Any, Any]:
    """Entries the per-value calls wrote: per-row tensors ``(b, h, ...)`` combined by head,
    anything else from the last call."""
    merged: Dict[Any, Any] = {}
    for key in {k for w in written for k in w}:
        vals = [w.get(key) for w in written]
        if all(isinstance(v, torch.Tensor) and v.dim() >= 2 and v.shape[1] == num_heads
               and v.shape == vals[0].shape for v in vals):
            out = vals[0].clone()
            for v, (_, heads) in zip(vals, groups):
                idx = torch.tensor(heads, device=v.device)
                out[:, idx] = v[:, idx]
            merged[key] = out
        else:
            merged[key] = vals[-1]
    return merged


def combine_head_rows(ctx: AttentionContext, parts: Sequence[Tuple[Mask, List[int]]]) -> Mask:
    """One mask holding, for each ``(mask, heads)`` part, ``mask``'s rows of ``heads``."""
    shape = ctx.mask_shape
    if all(m.is_full() for m, _ in parts):
        return Mask.create_full(shape, ctx.device)
    binary = all(m.is_full() or m.is_empty(scan=False) or m.is_binary() for m, _ in parts)
    if binary:
        out = torch.zeros(shape, dtype=torch.bool, device=ctx.device)
    else:
        out = torch.zeros(shape, dtype=torch.float32, device=ctx.device)
    for mask, heads in parts:
        idx = torch.tensor(heads, device=ctx.device)
        if mask.is_empty(scan=False):
            continue
        if mask.is_full():
            rows = ctx.allowed_full[:, idx]
        else:
            rows = mask.active()[:, idx] if binary else mask.to_dense()[:, idx]
        out[:, idx] = rows if binary else rows.to(out.dtype)
    return Mask.from_bool(out, shape) if binary else Mask.from_dense(out)

