"""Run a chain inside a Hugging Face model through transformers' ``AttentionInterface``.

One attention function is registered under :data:`ATTENTION_NAME` (with the ``sdpa`` mask
function, so the model passes a boolean mask, True = allowed, or None). While a
:func:`sparse_attention_in` block is active, every attention call of the model goes to
:meth:`ResearchAttention.custom_attention` with what the model passes, unchanged (queries
``(b, h, q, d)`` as non-contiguous views, keys and values ``(b, hk, n, d)`` of the KV heads
from the cache, the model's mask and scaling), ``layer_idx=module.layer_idx`` and the
query positions the model uses (``position_ids``); the output goes back to the model as
``(b, q, h, d)``, as transformers expects. Per layer it records the chain's in-model
figures: the output error against dense attention on the same inputs and the density.
Each layer's attention type (full, sliding window, chunked) is read from the model's config
(:func:`sah.layer_types.layer_types_from_config`) and limits the keys its queries may see;
the keys must be the full sequence so far (a full, non-sliding cache): key ``j`` is token ``j``.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional

import torch

from sah.attention import ResearchAttention
from sah.context import AttentionContext
from sah.estimator import output_error
from sah.layer_types import LayerType, layer_types_from_config
from sah.mask import Mask

ATTENTION_NAME = "sah_inmodel"

#: ``observer(layer_idx, queries, keys, values, attention_mask, query_positions, output)``:
#: sees every call's inputs as the model passed them and the chain's output ``(b, h, q, d)``.
Observer = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor, Optional[torch.Tensor],
                     Optional[torch.Tensor], torch.Tensor], None]


@dataclass
class InModelLayerFigures:
    """The chain in one layer of the model (one attention call)."""

    layer: int
    output_error: float   # ||O_dense - O_sparse||_F / ||O_dense||_F on this call's inputs
    density: float        # active allowed positions / allowed positions

    def to_dict(self) -> Dict[str, float]:
        return {"layer": self.layer, "output_error": self.output_error, "density": self.density}


def mask_density(ctx: AttentionContext, mask: Mask) -> float:
    """Active allowed positions / allowed positions of ``mask`` on the call ``ctx``."""
    allowed = float(ctx.allowed_per_head.sum())
    if allowed == 0:
        return 0.0
    if mask.is_full():
        return 1.0
    if mask.is_empty(scan=False):
        return 0.0
    return float(torch.count_nonzero(mask.active() & ctx.allowed)) / allowed


def dense_attention(ctx: AttentionContext) -> torch.Tensor:
    """Dense attention ``(b, h, q, d)`` over the allowed positions of ``ctx``, float32, with
    torch's fused ``scaled_dot_product_attention`` (no ``(b, h, q, n)`` logits kept)."""
    d = ctx.dims
    keys, values = ctx.keys.float(), ctx.values.float()
    if d.group_size > 1:
        keys = keys.repeat_interleave(d.group_size, dim=1)
        values = values.repeat_interleave(d.group_size, dim=1)
    return torch.nn.functional.scaled_dot_product_attention(
        ctx.queries.float(), keys, values, attn_mask=ctx.allowed, scale=ctx.scaling)


class _Session:
    """One active use of the registered function: the chain and what it records."""

    def __init__(self, attention: ResearchAttention, figures: bool,
                 observer: Optional[Observer], layer_types: List[LayerType]) -> None:
        self.attention = attention
        self.layer_types = layer_types
        self.figures = figures
        self.observer = observer
        self.sparse_meta_data: Dict[Any, Any] = {}
        self.layers: List[InModelLayerFigures] = []
        self.dense_prefill = False  # True: calls with several queries run dense (a prompt)

    def attend(self, module: Any, queries: torch.Tensor, keys: torch.Tensor,
               values: torch.Tensor, attention_mask: Optional[torch.Tensor],
               scaling: Optional[float], position_ids: Optional[torch.Tensor]) -> torch.Tensor:
        layer = getattr(module, "layer_idx", None)
        if layer is None:
            raise RuntimeError(f"{type(module).__name__} has no layer_idx; sah cannot tell its "
                               f"layers apart")
        positions = query_positions(position_ids, queries.shape[0])
        layer_type = self.layer_types[int(layer)]
        if positions is not None and positions.numel() and int(positions.max()) >= keys.shape[2]:
            raise ValueError(
                f"layer {layer} ({layer_type.describe()}): the cache holds {keys.shape[2]} keys "
                f"for a query at position {int(positions.max())}: a sliding-window cache drops "
                f"keys; run the model with a full cache (transformers' DynamicCache() without "
                f"the model config), as sah's own passes do")
        if self.dense_prefill and queries.shape[2] > 1:
            ctx = AttentionContext(queries, keys, values, scaling=scaling,
                                   query_positions=positions, attention_mask=attention_mask,
                                   layer_type=layer_type)
            return dense_attention(ctx).to(queries.dtype)
        output, _, mask = self.attention.custom_attention(
            module, queries, keys, values, attention_mask, scaling, 0.0,
            sparse_meta_data=self.sparse_meta_data, layer_idx=int(layer),
            query_positions=positions, return_mask=True, layer_type=layer_type)
        if self.figures:
            ctx = AttentionContext(queries, keys, values, scaling=scaling,
                                   query_positions=positions, attention_mask=attention_mask,
                                   layer_type=layer_type)
            dense = dense_attention(ctx)
            self.layers.append(InModelLayerFigures(int(layer), output_error(dense, output),
                                            mask_density(ctx, mask)))
        if self.observer is not None:
            self.observer(int(layer), queries, keys, values, attention_mask, positions, output)
        return output


def query_positions(position_ids: Optional[torch.Tensor], batch: int) -> Optional[torch.Tensor]:
    """The query positions of a call from the model's ``position_ids`` ``(b|1, q)``: one row
    when every batch row shares it (the usual case), else per batch row; None if absent."""
    if position_ids is None:
        return None
    if position_ids.dim() == 1:
        return position_ids
    if position_ids.shape[0] == 1 or bool((position_ids == position_ids[:1]).all()):
        return position_ids[0]
    return position_ids.expand(batch, -1)


_ACTIVE: List[_Session] = []


def _sah_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                   **kwargs):
    if not _ACTIVE:
        raise RuntimeError(f"attention implementation {ATTENTION_NAME!r} runs only inside "
                           f"sah.inmodel.sparse_attention_in(...)")
    output = _ACTIVE[-1].attend(module, query, key, value, attention_mask, scaling,
                                kwargs.get("position_ids"))
    return output.transpose(1, 2), None


def register() -> str:
    """Register the attention function (once per process); returns its name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    if ATTENTION_NAME not in ALL_ATTENTION_FUNCTIONS:
        AttentionInterface.register(ATTENTION_NAME, _sah_attention)
        AttentionMaskInterface.register(ATTENTION_NAME, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])
    return ATTENTION_NAME


@contextlib.contextmanager
def sparse_attention_in(model: torch.nn.Module, attention: ResearchAttention,
                        figures: bool = True,
                        observer: Optional[Observer] = None) -> Iterator[_Session]:
    """Inside the block, every attention layer of ``model`` runs ``attention``'s chain.

    Yields the session; after the forward passes ``session.layers`` holds one
    :class:`InModelLayerFigures` per attention call (``figures=False`` skips them). The model's
    previous attention implementation is restored on exit.
    """
    name = register()
    previous = model.config._attn_implementation
    session = _Session(attention, figures, observer, layer_types_from_config(model.config))
    model.set_attn_implementation(name)
    _ACTIVE.append(session)
    try:
        yield session
    finally:
        _ACTIVE.remove(session)
        model.set_attn_implementation(previous)
