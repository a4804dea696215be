"""Masker base classes, config base class and the registry.

A masker is a config dataclass plus a class registered for it::

    @dataclass
    class MyMaskerConfig(MaskerConfig):
        window_size: int = 16
        search_space: Dict[str, Any] = field(default_factory=dict)

        def validate(self) -> None:
            check_size(type(self).__name__, "window_size", self.window_size)

    @MaskerRegistry.register(MyMaskerConfig)
    class MyMasker(FixedMasker):
        def add_mask(self, keys, queries, values, attention_mask, scaling, dropout,
                     sparse_meta_data, previous_mask, **kwargs) -> Mask:
            ctx = self.context(keys, queries, values, attention_mask, scaling, kwargs)
            ...
            return previous_mask.merge(new_positions)

``add_mask`` never mutates ``previous_mask``; it returns a new mask holding the previous
positions plus its own. ``kwargs`` may carry ``context`` (an :class:`AttentionContext`
shared by the chain), ``query_positions``, ``layer_idx`` and ``generator``.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Type

import torch

from sah.context import AttentionContext, AttentionTensorDimensions, tensor_dimensions
from sah.mask import Mask
from sah.infra.checks import ConfigError, short_repr


@dataclass
class MaskerConfig:
    """Base of every masker config. Subclasses are dataclasses whose fields are the
    masker's hyperparameters; each declares ``search_space`` (field -> search domain,
    empty by default) as its last field, and checks its fields in :meth:`validate`."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the field, the value and the allowed range."""

    # ------------------------------------------------------------------ serialisation
    def params(self) -> Dict[str, Any]:
        """The hyperparameter fields (everything but ``search_space``)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name != "search_space"}

    def to_dict(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"type": type(self).__name__}
        out.update(_plain(self.params()))
        space = getattr(self, "search_space", None)
        if space:
            out["search_space"] = _plain(dict(space))
        return out

    @classmethod
    def from_dict(cls, data: Dict[str, Any], where: str = "") -> "MaskerConfig":
        """Build a config from ``{"type": ..., field: value, ...}`` (or the prior hub's
        ``{"type": ..., "params": {...}}``). ``where`` prefixes error messages (a file or
        YAML path)."""
        if not isinstance(data, dict):
            raise ConfigError(f"{where or 'masker config'}: expected a mapping, got {type(data).__name__}")
        data = dict(data)
        type_name = data.pop("type", None)
        target = cls
        if cls is MaskerConfig or type_name is not None:
            if type_name is None:
                raise ConfigError(f"{where or 'masker config'}: missing 'type' (a masker config class name, "
                                  f"one of {', '.join(MaskerRegistry.config_names())})")
            target = MaskerRegistry.config_class(type_name, where)
        if "params" in data and isinstance(data["params"], dict):
            params = dict(data.pop("params"))
            params.update(data)
            data = params
        names = {f.name for f in dataclasses.fields(target)}
        prefix = f"{where}: " if where else ""
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(
                f"{prefix}{target.__name__} has no field {unknown[0]!r}; its fields are "
                f"{', '.join(sorted(names))}")
        missing = [f.name for f in dataclasses.fields(target)
                   if f.name not in data and f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING]  # type: ignore[misc]
        if missing:
            raise ConfigError(f"{prefix}{target.__name__}.{missing[0]} is required")
        try:
            return target(**data)
        except ConfigError as exc:
            raise ConfigError(f"{prefix}{exc}") from None


def _plain(value: Any) -> Any:
    """Turn tuples and tensors into YAML/JSON-friendly lists and numbers."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.tolist()
    return value


class MaskerRegistry:
    """Maps config classes to masker classes (and config class names to config classes).

    Every built-in masker is registered once ``sah.maskers`` is imported, which Python does
    before it runs this module (the package's ``__init__`` comes first)."""

    _maskers: Dict[Type[MaskerConfig], Type["ResearchMasker"]] = {}
    _configs: Dict[str, Type[MaskerConfig]] = {}

    @classmethod
    def register(cls, config_class: Type[MaskerConfig]) -> Callable[[Type["ResearchMasker"]], Type["ResearchMasker"]]:
        def decorator(masker_class: Type["ResearchMasker"]) -> Type["ResearchMasker"]:
            cls._maskers[config_class] = masker_class
            cls._configs[config_class.__name__] = config_class
            masker_class.config_class = config_class
            return masker_class
        return decorator

    @classmethod
    def get_masker_class(cls, config_class: Type[MaskerConfig]) -> Type["ResearchMasker"]:
        for klass in config_class.__mro__:
            if klass in cls._maskers:
                return cls._maskers[klass]
        raise ConfigError(f"no masker is registered for {config_class.__name__}; register one with "
                          f"@MaskerRegistry.register({config_class.__name__})")

    @classmethod
    def config_class(cls, name: str, where: str = "") -> Type[MaskerConfig]:
        if not isinstance(name, str) or name not in cls._configs:
            prefix = f"{where}: " if where else ""
            raise ConfigError(f"{prefix}unknown masker type {short_repr(name)}; known types: "
                              f"{', '.join(cls.config_names())}")
        return cls._configs[name]

    @classmethod
    def config_names(cls) -> List[str]:
        return sorted(cls._configs)


class ResearchMasker(ABC):
    """Base of every masker: adds active positions to the mask of the masker before it."""

    config_class: Type[MaskerConfig] = MaskerConfig
    #: True for maskers whose weights are inclusion probabilities below 1.
    is_sampling: bool = False
    #: True when the positions added to a row depend only on that row (its query, its
    #: position, the previous mask's row) and on the keys, never on the call's other
    #: queries or on random draws: a call may then be computed in chunks of queries.
    rows_independent: bool = False

    def __init__(self, config: MaskerConfig) -> None:
        self.config = config

    @abstractmethod
    def add_mask(self, keys: torch.Tensor, queries: torch.Tensor, values: torch.Tensor,
                 attention_mask: Optional[torch.Tensor], scaling: float, dropout: float,
                 sparse_meta_data: Dict[Any, Any], previous_mask: Mask,
                 **kwargs: Any) -> Mask:
        """Return ``previous_mask`` plus this masker's positions (a new mask)."""

    def aux_bits_per_token(self, head_dim: int) -> float:
        """Auxiliary memory this method keeps per key and KV head, in bits per token."""
        return 0.0

    @classmethod
    def create_from_config(cls, config: MaskerConfig) -> "ResearchMasker":
        masker_class = MaskerRegistry.get_masker_class(type(config))
        if cls is not ResearchMasker and not issubclass(masker_class, cls):
            raise ValueError(f"{cls.__name__} cannot be built from {type(config).__name__}")
        return masker_class(config)

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _extract_tensor_dimensions(keys: torch.Tensor, queries: torch.Tensor) -> AttentionTensorDimensions:
        return tensor_dimensions(keys, queries)

    @staticmethod
    def context(keys: torch.Tensor, queries: torch.Tensor, values: torch.Tensor,
                attention_mask: Optional[torch.Tensor], scaling: Optional[float],
                kwargs: Dict[str, Any]) -> AttentionContext:
        """The chain's shared :class:`AttentionContext` if one was passed, else a new one."""
        ctx = kwargs.get("context")
        if isinstance(ctx, AttentionContext):
            return ctx
        return AttentionContext(queries, keys, values, scaling=scaling,
                                query_positions=kwargs.get("query_positions"),
                                attention_mask=attention_mask)


class FixedMasker(ResearchMasker):
    """Maskers whose picks carry weight 1.0."""


class SamplingMasker(ResearchMasker):
    """Maskers whose picks carry their inclusion probability. At most one per chain."""

    is_sampling = True

    @staticmethod
    def generator(kwargs: Dict[str, Any], seed: int, device: torch.device) -> torch.Generator:
        """``kwargs['generator']`` if given, else a new generator seeded with ``seed`` (plus
        ``layer_idx`` so layers draw differently)."""
        gen = kwargs.get("generator")
        if isinstance(gen, torch.Generator):
            return gen
        gen = torch.Generator(device=device)
        gen.manual_seed(int(seed) + int(kwargs.get("layer_idx") or 0))
        return gen
