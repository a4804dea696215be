"""Evaluate a chain config on a recording, layer by layer (no Ray here).

A trial scores one :class:`~sah.attention.ResearchAttentionConfig` on every recorded layer
(or a chosen subset): it builds the chain's mask, runs the sparse attention estimator and
compares it with dense attention. Everything that does not depend on the chain's
parameters (GQA-expanded logits, row maxima, exponentiated scores, the dense output...)
lives in the layer's :class:`~sah.context.AttentionContext`; a :class:`ContextCache` keeps
those contexts for the whole process, so all trials scored in one worker share them.

:func:`iter_evaluation` yields a :class:`PartialEvaluation` after each group of layers (a
Ray Tune trial reports it so ASHA can stop a bad trial early); :func:`evaluate_config`
returns the final :class:`ChainEvaluation`: mean ``output_error`` and mean ``density``
over the layers, the per-layer table, the chain's auxiliary bits per token and wall time.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch

from sah.attention import ResearchAttention, ResearchAttentionConfig
from sah.context import AttentionContext
from sah.recording.format import Recording

#: What :func:`evaluate_config` / :func:`iter_evaluation` take as a recording.
RecordingLike = Union[Recording, str, "os.PathLike[str]"]


@dataclass
class LayerScore:
    """How the chain does on one recorded layer."""

    layer: int                 # model layer id
    output_error: float        # ||O_dense - O_sparse|| / ||O_dense||
    density: float             # active share of the allowed (causal) positions
    density_rect: float        # active share of the full (q x n) rectangle
    empty_rows: int
    seconds: float             # wall time of mask + estimator on this layer
    per_head_error: List[float] = field(default_factory=list)
    per_head_density: List[float] = field(default_factory=list)


@dataclass
class PartialEvaluation:
    """The figures after some groups of layers (``complete`` after the last group)."""

    layers: List[LayerScore]
    num_layers_total: int

    @property
    def complete(self) -> bool:
        return len(self.layers) == self.num_layers_total

    @property
    def output_error(self) -> float:
        return _mean([lf.output_error for lf in self.layers])

    @property
    def density(self) -> float:
        return _mean([lf.density for lf in self.layers])


@dataclass
class ChainEvaluation:
    """A chain's figures on a recording: means over the evaluated layers."""

    output_error: float
    density: float
    aux_bits_per_token: float  # auxiliary memory per key and KV head
    seconds: float             # wall time of the whole evaluation
    layers: List[LayerScore]

    def per_layer_table(self) -> List[Dict[str, float]]:
        """One row per layer: layer, output_error, density, density_rect, empty_rows, seconds."""
        return [{k: v for k, v in asdict(lf).items() if not k.startswith("per_head")}
                for lf in self.layers]

    def to_dict(self) -> Dict[str, object]:
        return {"output_error": self.output_error, "density": self.density,
                "aux_bits_per_token": self.aux_bits_per_token, "seconds": self.seconds,
                "layers": self.per_layer_table()}


def _mean(values: Sequence[float]) -> float:
    return float(sum(values) / len(values)) if values else math.nan


# ---------------------------------------------------------------------- the cache
def recording_key(recording: Recording) -> str:
    """A key that identifies a recording's content (its stored hash when it has one)."""
    meta = recording.metadata or {}
    for name in ("content_hash", "hash", "sha256"):
        if meta.get(name):
            return str(meta[name])
    digest = hashlib.sha256()
    types = (meta["layer_types"],) if "layer_types" in meta else ()  # older keys unchanged
    digest.update(repr((recording.scaling, recording.layer_ids,
                        recording.query_positions.tolist()) + types).encode())
    for lr in recording.layers:
        for t in (lr.queries, lr.keys, lr.values):
            digest.update(repr((tuple(t.shape), str(t.dtype))).encode())
            flat = t.reshape(-1)
            digest.update(flat[:: max(1, flat.numel() // 4096)].float().numpy().tobytes())
    return "fingerprint:" + digest.hexdigest()


class ContextCache:
    """Per-layer :class:`AttentionContext` objects of the most recent recordings.

    Keyed by ``(recording key, layer index, device)``; the derived tensors a context caches
    (logits, row maxima, dense output...) are computed by the first trial that needs them
    and reused by every later trial in the process. ``max_recordings`` bounds memory.
    """

    def __init__(self, max_recordings: int = 1) -> None:
        self.max_recordings = max(1, int(max_recordings))
        self._store: "OrderedDict[str, Dict[Tuple[int, str], AttentionContext]]" = OrderedDict()

    def get(self, recording: Recording, index: int, device: Union[str, torch.device]) -> AttentionContext:
        key = recording_key(recording)
        layers = self._store.get(key)
        if layers is None:
            layers = self._store[key] = {}
            while len(self._store) > self.max_recordings:
                self._store.popitem(last=False)
        else:
            self._store.move_to_end(key)
        slot = (int(index), str(torch.device(device)))
        ctx = layers.get(slot)
        if ctx is None:
            ctx = layers[slot] = recording.context(index, device)
            ctx.shared = True  # every trial in this process reuses it
        return ctx

    def clear(self) -> None:
        self._store.clear()


#: The process-wide cache the Ray trainable uses (one per worker process).
PROCESS_CACHE = ContextCache()


# ---------------------------------------------------------------------- evaluation
def as_recording(recording: RecordingLike, where: str = "recording") -> Recording:
    """A loaded :class:`Recording` as is; a file path or an embedded recording name
    (``default``, ``docs``, ``docs-8192``...) loaded (embedded ones made if needed).
    Anything else raises ``TypeError`` naming ``where`` and the type."""
    if isinstance(recording, Recording):
        return recording
    if isinstance(recording, (str, os.PathLike)):
        from sah.recording.embedded import resolve_recording
        from sah.recording.format import load_recording
        return load_recording(resolve_recording(os.fspath(recording), where))
    raise TypeError(f"{where}: got {type(recording).__name__}; give a Recording, a recording "
                    f"file path or an embedded recording name (default, docs, docs-8192...)")


def layer_indices(recording: Recording, layers: Optional[Sequence[int]] = None) -> List[int]:
    """Indices into ``recording.layers`` of the model layer ids ``layers`` (all if None)."""
    if layers is None:
        return list(range(len(recording.layers)))
    ids = recording.layer_ids
    out = []
    for layer in layers:
        if layer not in ids:
            raise ValueError(f"layer {layer} is not in the recording (recorded layers: {ids}); "
                             f"pick layers from that list")
        out.append(ids.index(layer))
    return out


def layer_groups(indices: Sequence[int], group_size: int) -> List[List[int]]:
    """Split layer indices into consecutive groups of ``group_size`` (the last may be shorter)."""
    size = max(1, int(group_size))
    return [list(indices[i:i + size]) for i in range(0, len(indices), size)]


def default_group_size(num_layers: int, reports: int = 4) -> int:
    """Layers per report so that a trial reports about ``reports`` times."""
    return max(1, math.ceil(num_layers / max(1, reports)))


def evaluate_layer(attention: ResearchAttention, ctx: AttentionContext, layer: int) -> LayerScore:
    start = time.perf_counter()
    # The dense output (and the logits under it) first: the estimator then takes the same
    # path whether the context is fresh or cached, so figures are identical bit for bit.
    ctx.dense_output
    evaluation, _ = attention.evaluate(ctx, layer_idx=layer)
    return LayerScore(layer=layer, output_error=evaluation.output_error,
                        density=evaluation.density, density_rect=evaluation.density_rect,
                        empty_rows=evaluation.empty_rows, seconds=time.perf_counter() - start,
                        per_head_error=list(evaluation.per_head_error),
                        per_head_density=list(evaluation.per_head_density))


def iter_evaluation(config: ResearchAttentionConfig, recording: RecordingLike,
                    layers: Optional[Sequence[int]] = None, group_size: Optional[int] = None,
                    cache: Optional[ContextCache] = None,
                    device: Union[str, torch.device, None] = None) -> Iterator[PartialEvaluation]:
    """Score ``config`` layer by layer; yield the figures so far after each group of layers.

    ``layers``: model layer ids (default all recorded layers). ``group_size``: layers per
    yield (default: about four yields). ``cache``: where layer contexts live (default a
    fresh cache, so nothing is shared). ``device``: where to compute (default the
    recording's device). ``recording``: a :class:`Recording`, a file path or an embedded
    recording name (loaded once here).
    """
    recording = as_recording(recording, "iter_evaluation: recording")
    indices = layer_indices(recording, layers)
    if not indices:
        raise ValueError("no layers to evaluate: the recording or the layer subset is empty")
    cache = cache if cache is not None else ContextCache()
    dev = torch.device(device) if device is not None else recording.layers[0].keys.device
    attention = ResearchAttention.create_from_config(config)
    done: List[LayerScore] = []
    for group in layer_groups(indices, group_size or default_group_size(len(indices))):
        for index in group:
            ctx = cache.get(recording, index, dev)
            done.append(evaluate_layer(attention, ctx, recording.layers[index].layer))
        yield PartialEvaluation(list(done), len(indices))


def evaluate_config(config: ResearchAttentionConfig, recording: RecordingLike,
                    layers: Optional[Sequence[int]] = None,
                    cache: Optional[ContextCache] = None,
                    device: Union[str, torch.device, None] = None) -> ChainEvaluation:
    """Mean ``output_error`` and ``density`` of ``config`` over the recording's layers.

    ``recording``: a :class:`Recording`, a recording file path or an embedded recording
    name (``default``, ``docs``, ``docs-8192``...; made on first use)."""
    start = time.perf_counter()
    recording = as_recording(recording, "evaluate_config: recording")
    last: Optional[PartialEvaluation] = None
    for last in iter_evaluation(config, recording, layers, None, cache, device):
        pass
    assert last is not None and last.complete
    attention = ResearchAttention.create_from_config(config)
    aux = _mean([attention.aux_bits_per_token(recording.head_dim, lf.layer) for lf in last.layers])
    return ChainEvaluation(output_error=last.output_error, density=last.density,
                           aux_bits_per_token=aux, seconds=time.perf_counter() - start,
                           layers=last.layers)
