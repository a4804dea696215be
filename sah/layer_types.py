"""Attention layer types: which keys a query may attend to in a layer.

- ``full``: a query at position ``t`` may attend to keys ``[0, t]`` (causal).
- ``sliding`` with window ``W``: keys ``(t - W, t]``, the last ``W`` keys up to ``t``
  (transformers' ``sliding_attention``: Gemma 2/3, Mistral 7B v0.1, gpt-oss...).
- ``chunked`` with chunk ``C``: keys ``[C * floor(t / C), t]``, the keys of ``t``'s own
  chunk up to ``t`` (transformers' ``chunked_attention``: Llama 4).

A layer type is read from a model's config (:func:`layer_types_from_config`), stored in a
recording's metadata (``layer_types``: layer id -> :meth:`LayerType.to_dict`) and given to
every :class:`~sah.context.AttentionContext`, whose allowed positions follow it; a
recording without ``layer_types`` (made before layer types existed) holds full layers.

Sizes (a masker's ``window_size``, ``heavy_size``... given as a fraction) resolve against
:meth:`LayerType.keys_allowed`, the most keys one query of the layer may see: ``n`` in a
full layer, ``min(W, n)`` in a sliding one, ``min(C, n)`` in a chunked one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import torch

KINDS = ("full", "sliding", "chunked")
#: transformers' ``layer_types`` names -> sah's kinds
CONFIG_NAMES = {"full_attention": "full", "sliding_attention": "sliding",
                "chunked_attention": "chunked"}
_SIZE_FIELD = {"sliding": "window", "chunked": "chunk"}


class UnknownLayerType(ValueError):
    """A model or recording names a layer type sah cannot score."""


@dataclass(frozen=True)
class LayerType:
    kind: str = "full"
    size: Optional[int] = None  # the window W (sliding) or the chunk C (chunked)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise UnknownLayerType(f"layer type {self.kind!r} is not one of {', '.join(KINDS)}")
        if self.kind == "full":
            if self.size is not None:
                raise ValueError("a full layer has no window or chunk size")
        elif isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 1:
            raise ValueError(f"a {self.kind} layer needs a {_SIZE_FIELD[self.kind]} of at "
                             f"least 1 key; got {self.size!r}")

    @property
    def is_full(self) -> bool:
        return self.kind == "full"

    def keys_allowed(self, num_keys: int) -> int:
        """The most keys one query of this layer may see when a call holds ``num_keys``."""
        return num_keys if self.size is None else min(self.size, num_keys)

    def allowed(self, key_index: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Boolean: key ``key_index`` is visible from a query at ``positions`` (broadcast)."""
        allowed = key_index <= positions
        if self.kind == "sliding":
            allowed = allowed & (key_index > positions - self.size)
        elif self.kind == "chunked":
            allowed = allowed & (torch.div(key_index, self.size, rounding_mode="floor")
                                 == torch.div(positions, self.size, rounding_mode="floor"))
        return allowed

    def to_dict(self) -> Dict[str, Any]:
        if self.is_full:
            return {"type": "full"}
        return {"type": self.kind, _SIZE_FIELD[self.kind]: self.size}

    @classmethod
    def from_dict(cls, data: Any, where: str = "layer type") -> "LayerType":
        """The layer type of ``{"type": "full"}``, ``{"type": "sliding", "window": W}`` or
        ``{"type": "chunked", "chunk": C}``; ``ValueError`` naming ``where`` otherwise."""
        if not isinstance(data, dict) or data.get("type") not in KINDS:
            kind = data.get("type") if isinstance(data, dict) else data
            raise UnknownLayerType(f"{where}: layer type {kind!r} is unknown; sah knows "
                                   f"{', '.join(KINDS)}")
        kind = data["type"]
        field = _SIZE_FIELD.get(kind)
        extra = sorted(set(data) - {"type", field})
        if extra:
            raise ValueError(f"{where}: a {kind} layer has no field {extra[0]!r}")
        try:
            return cls(kind, data.get(field) if field else None)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None

    def describe(self) -> str:
        return "full" if self.is_full else f"{self.kind} ({_SIZE_FIELD[self.kind]} {self.size})"


FULL = LayerType()


def layer_types_from_config(config: Any) -> List[LayerType]:
    """Each layer's type from a transformers config: ``layer_types`` with
    ``sliding_window`` / ``attention_chunk_size``; without ``layer_types``, every layer is
    sliding when the config sets ``sliding_window`` (and does not turn it off with
    ``use_sliding_window: false``), else full. A type sah does not know raises
    :class:`UnknownLayerType` naming it."""
    cfg = getattr(config, "text_config", None) or config
    num_layers = int(cfg.num_hidden_layers)
    names = getattr(cfg, "layer_types", None)
    window = getattr(cfg, "sliding_window", None)
    if names is None:
        sliding = window and getattr(cfg, "use_sliding_window", True) is not False
        names = ["sliding_attention" if sliding else "full_attention"] * num_layers
    names = list(names)
    if len(names) != num_layers:
        raise UnknownLayerType(f"model config: layer_types has {len(names)} entries for "
                               f"{num_layers} layers")
    out: List[LayerType] = []
    for i, name in enumerate(names):
        kind = CONFIG_NAMES.get(name)
        if kind is None:
            raise UnknownLayerType(
                f"model config: layer {i} has layer type {name!r}, which sah does not know; "
                f"sah scores {', '.join(CONFIG_NAMES)} layers")
        size = {"sliding": window,
                "chunked": getattr(cfg, "attention_chunk_size", None)}.get(kind)
        if kind != "full" and not (isinstance(size, int) and size >= 1):
            field = "sliding_window" if kind == "sliding" else "attention_chunk_size"
            raise UnknownLayerType(f"model config: layer {i} is {name} but {field} is "
                                   f"{size!r}; it must be a key count >= 1")
        out.append(LayerType(kind, size))
    return out


def layer_types_metadata(types: Dict[int, LayerType]) -> Dict[str, Dict[str, Any]]:
    """``{layer id: LayerType}`` as stored in a recording's metadata."""
    return {str(layer): t.to_dict() for layer, t in sorted(types.items())}


def read_layer_types(meta: Any, layers: List[int], where: str) -> Dict[int, LayerType]:
    """The ``layer_types`` metadata of a recording holding ``layers``: every layer full
    when absent; ``ValueError`` naming ``where`` when malformed or missing a layer."""
    if meta is None:
        return {layer: FULL for layer in layers}
    if not isinstance(meta, dict):
        raise ValueError(f"{where}: metadata 'layer_types' is {type(meta).__name__}, not an "
                         f"object of layer id -> layer type")
    missing = [layer for layer in layers if str(layer) not in meta]
    if missing:  # entries for layers a recording no longer holds are harmless
        raise ValueError(f"{where}: metadata 'layer_types' covers layers {sorted(meta)} but "
                         f"the recording holds {layers} (no type for layer {missing[0]})")
    return {layer: LayerType.from_dict(meta[str(layer)], f"{where}: layer_types[{layer}]")
            for layer in layers}
