"""Fit HashAttention hash functions on recorded attention, so that signature dot products
rank keys like the true scores.

No pretrained hash weights can be downloaded here, so :func:`fit_hash_attention` learns
them: per layer and head, the query and key MLPs start from the seeded random
initialisation of :func:`sah.maskers.hash_attention.random_hat_weights` and are trained
with Adam on a relaxed problem: ``sign(x)`` is replaced by ``tanh(s x)`` (the sharpness
``s`` rises linearly from 1 to ``1 + anneal`` over the steps), and the scaled
relaxed dot products ``a * tanh(f_q(q)) . tanh(f_k(k))`` (``a`` learned per head) are fed
to a listwise cross-entropy against the true softmax of the logits over allowed keys,
sharpened or softened by ``target_temperature``. This pushes the true top keys to the top
of the signature ranking. The report gives the top-k recall (share of the true top-k keys
of a row, among allowed keys, that the hash top-k also picks; mean over rows) before and
after fitting, on the fitted contexts and optionally on held-out ones. Given several
recordings, each layer is fitted on all of their contexts at once (the loss is the mean of
each context's loss) and its recall is the mean over them.

Usage::

    weights, report = fit_hash_attention(recording, hat_bits=32, steps=300)
    save_hat_weights(weights, "hat.safetensors")
    HashAttentionTopKMaskerConfig(heavy_size=0.05, hat_weight_file="hat.safetensors", ...)
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import torch

from sah.context import AttentionContext
from sah.maskers.hash_attention import (ACTIVATIONS, WEIGHT_NAMES, LayerWeights, hash_features,
                                        random_hat_weights, signature_scores, signatures)
from sah.maskers.top_k import top_k_positions
from sah.infra.checks import ConfigError, check_choice, check_int, check_size, resolve_size

Source = Union[AttentionContext, Sequence[AttentionContext], Dict[int, AttentionContext], Any]


@dataclass
class HashFitReport:
    """Top-k recall per layer (fraction in [0, 1]) before and after fitting."""

    recall_k: int
    steps: int
    seconds: float
    recall_before: Dict[int, float] = field(default_factory=dict)
    recall_after: Dict[int, float] = field(default_factory=dict)
    heldout_recall_before: Dict[int, float] = field(default_factory=dict)
    heldout_recall_after: Dict[int, float] = field(default_factory=dict)
    final_loss: Dict[int, float] = field(default_factory=dict)

    @property
    def mean_recall_before(self) -> float:
        return sum(self.recall_before.values()) / max(1, len(self.recall_before))

    @property
    def mean_recall_after(self) -> float:
        return sum(self.recall_after.values()) / max(1, len(self.recall_after))


def as_layer_contexts(source: Source) -> Dict[int, AttentionContext]:
    """A recording (``sah.recording.format.Recording``), one context, a list (layers 0..) or
    a ``{layer: context}`` mapping -> ``{layer: context}``."""
    if isinstance(source, AttentionContext):
        return {0: source}
    if isinstance(source, dict):
        return {int(k): v for k, v in source.items()}
    if hasattr(source, "layers") and hasattr(source, "context"):
        return {int(lr.layer): source.context(i) for i, lr in enumerate(source.layers)}
    if isinstance(source, (list, tuple)):
        return dict(enumerate(source))
    raise ConfigError(f"fit_hash_attention: cannot fit on a {type(source).__name__}; pass a "
                      f"Recording, an AttentionContext, a list or a {{layer: context}} mapping")


def as_layer_context_lists(source: Source) -> Dict[int, List[AttentionContext]]:
    """Like :func:`as_layer_contexts`, but a list or tuple of recordings gives, for every
    layer all of them hold, one context per recording."""
    if isinstance(source, (list, tuple)) and source and all(
            hasattr(s, "layers") and hasattr(s, "context") for s in source):
        per = [as_layer_contexts(s) for s in source]
        common = [layer for layer in per[0] if all(layer in p for p in per)]
        return {layer: [p[layer] for p in per] for layer in common}
    return {layer: [ctx] for layer, ctx in as_layer_contexts(source).items()}


def hash_top_k_recall(weights: LayerWeights, ctx: AttentionContext, k: int,
                      activation: str) -> float:
    """Mean over rows of |hash top-k & true top-k| / |true top-k| (among allowed keys)."""
    with torch.no_grad():
        w = {name: [t.to(ctx.device, torch.float32) for t in ts] for name, ts in weights.items()}
        keys = ctx.keys.float()
        if w["key_matrix"][0].shape[0] != ctx.dims.num_kv_heads:
            keys = keys.repeat_interleave(ctx.dims.group_size, dim=1)
        q_sig = signatures(hash_features(ctx.queries.float(), w["query_matrix"], w["query_bias"], activation))
        k_sig = signatures(hash_features(keys, w["key_matrix"], w["key_bias"], activation))
        allowed = ctx.allowed_full
        truth = top_k_positions(ctx.logits, allowed, k)
        picked = top_k_positions(signature_scores(q_sig, k_sig), allowed, k)
        hits = (truth & picked).sum(-1).float()
        return float((hits / truth.sum(-1).clamp_min(1).float()).mean())


def _fit_layer(contexts: List[AttentionContext], init: LayerWeights, activation: str,
               steps: int, lr: float, target_temperature: float, anneal: float = 0.0) -> tuple:
    """Fit one layer's weights on every context of ``contexts`` (one optimiser step per
    step on the mean of the contexts' losses)."""
    device = contexts[0].device
    params = {name: [t.clone().to(device).requires_grad_(True) for t in init[name]]
              for name in WEIGHT_NAMES}
    d = contexts[0].dims
    bits = init["query_matrix"][-1].shape[-1]
    log_scale = torch.full((1, d.num_heads, 1, 1), float(torch.log(torch.tensor(4.0 / bits ** 0.5))),
                           device=device, requires_grad=True)
    flat = [t for name in WEIGHT_NAMES for t in params[name]] + [log_scale]
    optimizer = torch.optim.Adam(flat, lr=lr)
    data = [(ctx.allowed_full, torch.softmax(ctx.logits / target_temperature, dim=-1).detach(),
             ctx.queries.float(), ctx.keys.float()) for ctx in contexts]
    loss = torch.zeros(())
    for step in range(steps):
        sharp = 1.0 + anneal * step / max(1, steps)
        optimizer.zero_grad()
        loss = torch.zeros((), device=device)
        for allowed, target, queries, keys in data:
            q_soft = torch.tanh(sharp * hash_features(queries, params["query_matrix"], params["query_bias"], activation))
            k_soft = torch.tanh(sharp * hash_features(keys, params["key_matrix"], params["key_bias"], activation))
            relaxed = signature_scores(q_soft, k_soft) * log_scale.exp()
            log_prob = torch.log_softmax(relaxed.masked_fill(~allowed, float("-inf")), dim=-1)
            loss = loss - (target * log_prob.masked_fill(~allowed, 0.0)).sum(-1).mean() / len(data)
        loss.backward()
        optimizer.step()
    fitted = {name: [t.detach().cpu() for t in params[name]] for name in WEIGHT_NAMES}
    return fitted, float(loss.detach())


def fit_hash_attention(source: Source, hat_bits: int = 32, hat_mlp_layers: int = 3,
                       hat_mlp_hidden_size: int = 128, hat_mlp_activation: str = "silu",
                       steps: int = 300, lr: float = 1e-2, recall_size: Union[int, float] = 0.05,
                       target_temperature: float = 1.0, anneal: float = 3.0, seed: int = 0,
                       heldout: Optional[Source] = None,
                       layers: Optional[List[int]] = None,
                       on_layer: Optional[Callable[[int, int, int, float], None]] = None) -> tuple:
    """Learn per-head query/key hashes for every layer of ``source`` (a recording, a list
    of recordings: each layer fitted on all of them, or contexts).

    Returns ``({layer: weights}, HashFitReport)``; the weights plug into
    ``HashAttentionTopKMaskerConfig(hat_weights=...)`` with the same ``hat_*`` sizes, or
    :func:`sah.maskers.hash_attention.save_hat_weights`. ``recall_size`` (int count or
    float fraction of the keys) sets the ``k`` of the recall figure; ``seed`` seeds the
    initial weights (``seed + layer``), as the masker's ``hat_init_seed`` does.
    ``on_layer(layer, done, total, seconds)`` is called after each layer (progress).
    """
    check_int("fit_hash_attention", "hat_bits", hat_bits, 1)
    check_int("fit_hash_attention", "hat_mlp_layers", hat_mlp_layers, 1)
    check_int("fit_hash_attention", "hat_mlp_hidden_size", hat_mlp_hidden_size, 1)
    check_choice("fit_hash_attention", "hat_mlp_activation", hat_mlp_activation, tuple(ACTIVATIONS))
    check_int("fit_hash_attention", "steps", steps, 0)
    check_size("fit_hash_attention", "recall_size", recall_size)
    contexts = as_layer_context_lists(source)
    held = as_layer_context_lists(heldout) if heldout is not None else {}
    if layers is not None:
        missing = sorted(set(layers) - set(contexts))
        if missing:
            raise ConfigError(f"fit_hash_attention: layer {missing[0]} is not in the source "
                              f"(layers {sorted(contexts)})")
        contexts = {k: contexts[k] for k in layers}
    start = time.perf_counter()
    weights: Dict[int, LayerWeights] = {}
    report = HashFitReport(recall_k=0, steps=steps, seconds=0.0)

    def recall(w: LayerWeights, ctxs: List[AttentionContext]) -> float:
        return sum(hash_top_k_recall(w, c, max(1, resolve_size(recall_size, c.size_keys)),
                                     hat_mlp_activation) for c in ctxs) / len(ctxs)

    for done, (layer, ctxs) in enumerate(contexts.items(), 1):
        layer_start = time.perf_counter()
        d = ctxs[0].dims
        report.recall_k = max(1, resolve_size(recall_size, ctxs[0].size_keys))
        init = random_hat_weights(d.num_heads, d.num_kv_heads, d.head_dim, hat_bits,
                                  hat_mlp_layers, hat_mlp_hidden_size, seed + layer)
        report.recall_before[layer] = recall(init, ctxs)
        with torch.enable_grad():
            fitted, loss = _fit_layer(ctxs, init, hat_mlp_activation, steps, lr, target_temperature,
                                      anneal)
        weights[layer] = fitted
        report.final_loss[layer] = loss
        report.recall_after[layer] = recall(fitted, ctxs)
        if layer in held:
            report.heldout_recall_before[layer] = recall(init, held[layer])
            report.heldout_recall_after[layer] = recall(fitted, held[layer])
        if on_layer is not None:
            on_layer(layer, done, len(contexts), time.perf_counter() - layer_start)
    report.seconds = time.perf_counter() - start
    return weights, report
