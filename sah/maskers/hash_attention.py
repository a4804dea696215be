"""HashAttention top-k: learned per-head bit signatures of queries and keys; keys whose
signature agrees most with the query's are picked.

``HashAttentionTopKMaskerConfig(heavy_size, hat_bits, hat_mlp_layers, hat_mlp_hidden_size,
hat_mlp_activation, hat_weights | hat_weight_file, hat_init_seed=0)``:

- per head, an MLP of ``hat_mlp_layers`` linear layers (``d -> hidden -> ... -> hat_bits``),
  ``hat_mlp_activation`` between them and none after the last, then ``sign()`` (+1, -1,
  and 0 for a zero feature): queries and keys get ``hat_bits``-entry signatures;
- score = signature dot product; selection = top-k as OracleTopK (allowed, not-yet-active
  keys; ``heavy_size`` int count or float fraction of the keys).

Weights, per layer: ``{"query_matrix": [(h, d_in, d_out), ...], "query_bias": [(h, d_out),
...], "key_matrix": [(hk, d_in, d_out), ...], "key_bias": [(hk, d_out), ...]}``. GQA: the
key hash is per KV head (``hk`` = number of KV heads), so a key's signature is stored once
per KV head: ``hat_bits`` bits per token. Key weights with one entry per *query* head
(``h``, the layout of some published weights) are accepted too; keys are then hashed once
per query head and the auxiliary memory is ``hat_bits * h / hk`` bits per token.

Sources, in order: ``hat_weights`` (``{layer: weights}``), ``hat_weight_file``
(safetensors with tensors named ``layer.L.query_matrix.I`` etc., or ``.pt``/``.pth`` read
with ``torch.load(weights_only=True)`` holding ``{layer: weights}`` or the flat names; a
``.pkl`` pickle only when the person running the process opted in (:mod:`sah.infra.pickle_opt_in`:
``--allow-pickle``, ``SAH_ALLOW_PICKLE=1`` or ``sah.allow_pickle()``), since unpickling runs
code; a config's own ``allow_pickle`` field cannot switch it on), else seeded
random initialisation (seed ``hat_init_seed + layer``; a baseline, or the start of
:func:`sah.maskers.hash_attention_fit.fit_hash_attention`). Declared sizes must match
the weights.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import torch

from sah.context import AttentionContext
from sah.maskers.base import MaskerConfig, MaskerRegistry
from sah.maskers.top_k import TopKMasker
from sah.infra.pickle_opt_in import HOW, pickle_allowed
from sah.infra.checks import ConfigError, check_choice, check_int, check_size, short_repr

WEIGHT_NAMES = ("query_matrix", "query_bias", "key_matrix", "key_bias")
ACTIVATIONS = {
    "silu": torch.nn.functional.silu, "relu": torch.relu,
    "gelu": torch.nn.functional.gelu, "tanh": torch.tanh,
}
LayerWeights = Dict[str, List[torch.Tensor]]


@dataclass
class HashAttentionTopKMaskerConfig(MaskerConfig):
    """``heavy_size``: int count or float fraction of the keys; ``hat_bits``: signature bits
    (>= 1); ``hat_mlp_layers``: linear layers per hash (>= 1); ``hat_mlp_hidden_size``: width
    of the hidden layers (>= 1); ``hat_mlp_activation``: one of silu, relu, gelu, tanh;
    ``hat_weights`` (``{layer: weights}``) or ``hat_weight_file`` (path), at most one; none:
    random hashes seeded ``hat_init_seed + layer``; ``allow_pickle``: kept so old configs
    with ``false`` load; ``true`` is refused (the opt-in is the person's, see
    :mod:`sah.infra.pickle_opt_in`)."""

    heavy_size: Union[int, float] = 0.05
    hat_bits: int = 32
    hat_mlp_layers: int = 3
    hat_mlp_hidden_size: int = 128
    hat_mlp_activation: str = "silu"
    hat_weights: Optional[Dict[Any, Any]] = None
    hat_weight_file: Optional[str] = None
    allow_pickle: bool = False
    hat_init_seed: int = 0
    search_space: Dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        owner = type(self).__name__
        check_size(owner, "heavy_size", self.heavy_size)
        check_int(owner, "hat_bits", self.hat_bits, 1)
        check_int(owner, "hat_mlp_layers", self.hat_mlp_layers, 1)
        check_int(owner, "hat_mlp_hidden_size", self.hat_mlp_hidden_size, 1)
        check_choice(owner, "hat_mlp_activation", self.hat_mlp_activation, tuple(ACTIVATIONS))
        check_int(owner, "hat_init_seed", self.hat_init_seed, 0)
        if self.hat_weights is not None and self.hat_weight_file is not None:
            raise ConfigError(f"{owner}: give hat_weights or hat_weight_file, not both")
        if self.hat_weights is not None and not isinstance(self.hat_weights, dict):
            raise ConfigError(f"{owner}.hat_weights: expected {{layer: weights}}, got "
                              f"{type(self.hat_weights).__name__}")
        if self.allow_pickle is not False:
            raise ConfigError(f"{owner}.allow_pickle: got {short_repr(self.allow_pickle)}; a config "
                              f"cannot switch pickle loading on for itself (unpickling runs code); "
                              f"remove the field and, for a file you trust, {HOW}")


# ---------------------------------------------------------------------- weights
def random_hat_weights(num_heads: int, num_key_heads: int, head_dim: int, hat_bits: int,
                       mlp_layers: int, hidden_size: int, seed: int) -> LayerWeights:
    """Seeded random hash MLPs for one layer: normal weights with variance ``1/d_in`` and
    zero biases, drawn per key head; each query head gets a copy of its key head's hash, so
    query and key share one random function (a 1-layer hash is then SimHash, which already
    ranks keys by angle to the query)."""
    gen = torch.Generator().manual_seed(int(seed))
    sizes = [head_dim] + [hidden_size] * (mlp_layers - 1) + [hat_bits]
    out: LayerWeights = {name: [] for name in WEIGHT_NAMES}
    group = num_heads // num_key_heads
    for d_in, d_out in zip(sizes[:-1], sizes[1:]):
        key_w = torch.randn(num_key_heads, d_in, d_out, generator=gen) / d_in ** 0.5
        out["key_matrix"].append(key_w)
        out["key_bias"].append(torch.zeros(num_key_heads, d_out))
        out["query_matrix"].append(key_w.repeat_interleave(group, dim=0).clone())
        out["query_bias"].append(torch.zeros(num_heads, d_out))
    return out


def hash_features(x: torch.Tensor, matrices: List[torch.Tensor], biases: List[torch.Tensor],
                  activation: str) -> torch.Tensor:
    """Per-head MLP ``(b, heads, t, d) -> (b, heads, t, bits)`` before ``sign()``."""
    act = ACTIVATIONS[activation]
    out = x
    for i, (w, bias) in enumerate(zip(matrices, biases)):
        out = torch.einsum("bhtd,hde->bhte", out, w) + bias.unsqueeze(0).unsqueeze(2)
        if i + 1 < len(matrices):
            out = act(out)
    return out


def signatures(features: torch.Tensor) -> torch.Tensor:
    """``sign()`` as the spec states it, float32: +1, -1, and 0 for a zero feature (which
    then adds nothing to any score)."""
    return torch.sign(features).to(torch.float32)


def signature_scores(query_sig: torch.Tensor, key_sig: torch.Tensor) -> torch.Tensor:
    """Dot products ``(b, h, q, n)``; ``key_sig`` has ``hk`` (per KV head) or ``h`` heads."""
    b, h, nq, bits = query_sig.shape
    hk = key_sig.shape[1]
    q = query_sig.view(b, hk, h // hk, nq, bits)
    return torch.matmul(q, key_sig.unsqueeze(2).transpose(-1, -2)).view(b, h, nq, -1)


def check_layer_weights(weights: LayerWeights, cfg: HashAttentionTopKMaskerConfig, layer: Any,
                        num_heads: int, num_kv_heads: int, head_dim: int) -> None:
    """Raise :class:`ConfigError` if the weights do not match the declared sizes or the call."""
    where = f"HashAttention weights of layer {layer}"
    sizes = [head_dim] + [cfg.hat_mlp_hidden_size] * (cfg.hat_mlp_layers - 1) + [cfg.hat_bits]
    for side, allowed_heads in (("query", (num_heads,)), ("key", (num_kv_heads, num_heads))):
        mats, biases = weights[f"{side}_matrix"], weights[f"{side}_bias"]
        if len(mats) != cfg.hat_mlp_layers or len(biases) != cfg.hat_mlp_layers:
            raise ConfigError(f"{where}: {side} hash has {len(mats)} matrices and {len(biases)} "
                              f"biases; hat_mlp_layers declares {cfg.hat_mlp_layers}")
        heads = mats[0].shape[0]
        if heads not in allowed_heads:
            raise ConfigError(f"{where}: {side}_matrix has {heads} heads; the call has "
                              f"{' or '.join(map(str, allowed_heads))} {side} heads")
        for i, (w, bias) in enumerate(zip(mats, biases)):
            want = (heads, sizes[i], sizes[i + 1])
            if tuple(w.shape) != want:
                raise ConfigError(
                    f"{where}: {side}_matrix[{i}] has shape {tuple(w.shape)}; expected {want} "
                    f"(head_dim {head_dim}, hat_mlp_hidden_size {cfg.hat_mlp_hidden_size}, "
                    f"hat_bits {cfg.hat_bits})")
            if tuple(bias.shape) != want[::2]:
                raise ConfigError(f"{where}: {side}_bias[{i}] has shape {tuple(bias.shape)}; "
                                  f"expected {want[::2]}")


def _as_layer_weights(data: Any, where: str) -> LayerWeights:
    if not isinstance(data, dict) or any(name not in data for name in WEIGHT_NAMES):
        raise ConfigError(f"{where}: expected a mapping with {', '.join(WEIGHT_NAMES)}")
    out: LayerWeights = {}
    for name in WEIGHT_NAMES:
        items = data[name]
        if isinstance(items, torch.Tensor):
            items = [items]
        out[name] = [torch.as_tensor(t, dtype=torch.float32) for t in items]
        for i, t in enumerate(out[name]):
            if not bool(torch.isfinite(t).all()):
                raise ConfigError(f"{where}: {name}[{i}] contains NaN or infinite values; hash "
                                  f"weights must be finite (refit or re-export them)")
    _check_structure(out, where)
    return out


def _check_structure(weights: LayerWeights, where: str) -> None:
    """Each hash (query, key) is a chain of (heads, d_in, d_out) matrices, each with its
    (heads, d_out) bias, every d_in the previous d_out: what any call needs, before sizes."""
    for side in ("query", "key"):
        mats, biases = weights[f"{side}_matrix"], weights[f"{side}_bias"]
        if not mats or len(mats) != len(biases):
            raise ConfigError(f"{where}: the {side} hash has {len(mats)} matrices and "
                              f"{len(biases)} biases; expected one bias per matrix, at least one")
        for i, (w, b) in enumerate(zip(mats, biases)):
            if w.dim() != 3 or b.dim() != 2:
                raise ConfigError(f"{where}: {side}_matrix[{i}] has shape {tuple(w.shape)} and "
                                  f"{side}_bias[{i}] {tuple(b.shape)}; expected (heads, d_in, "
                                  f"d_out) and (heads, d_out)")
            if tuple(b.shape) != (w.shape[0], w.shape[2]):
                raise ConfigError(f"{where}: {side}_bias[{i}] has shape {tuple(b.shape)}; "
                                  f"{side}_matrix[{i}] {tuple(w.shape)} needs {(w.shape[0], w.shape[2])}")
            if i and (w.shape[0], w.shape[1]) != (mats[0].shape[0], mats[i - 1].shape[2]):
                raise ConfigError(f"{where}: {side}_matrix[{i}] has shape {tuple(w.shape)}; after "
                                  f"{side}_matrix[{i - 1}] {tuple(mats[i - 1].shape)} it must "
                                  f"be ({mats[0].shape[0]}, {mats[i - 1].shape[2]}, d_out)")


_NAME_HELP = f"expected names 'layer.<L>.<{'|'.join(WEIGHT_NAMES)}>.<I>' with whole numbers L, I"


def _unflatten(flat: Dict[str, torch.Tensor], where: str) -> Dict[int, LayerWeights]:
    """``layer.L.NAME.I`` tensors -> ``{L: {NAME: [I-th tensor, ...]}}``."""
    grouped: Dict[int, Dict[str, Dict[int, torch.Tensor]]] = {}
    for key, tensor in flat.items():
        parts = key.split(".")
        if len(parts) != 4 or parts[0] != "layer" or parts[2] not in WEIGHT_NAMES:
            raise ConfigError(f"{where}: unexpected tensor name {key!r}; {_NAME_HELP}")
        for part, what in ((parts[1], "layer"), (parts[3], "index")):
            if not part.isdigit():
                raise ConfigError(f"{where}: tensor {key!r}: its {what} {part!r} is not a whole "
                                  f"number; {_NAME_HELP}")
        grouped.setdefault(int(parts[1]), {}).setdefault(parts[2], {})[int(parts[3])] = tensor
    out: Dict[int, LayerWeights] = {}
    for layer, names in grouped.items():
        for name in WEIGHT_NAMES:
            found = sorted(names.get(name, {}))
            if found != list(range(len(found))) or not found:
                have = ", ".join(map(str, found)) or "none"
                raise ConfigError(f"{where}: layer {layer}: tensors layer.{layer}.{name}.<I> "
                                  f"have I = {have}; expected 0, 1, ... (one per hash layer)")
        data = {name: [names[name][i] for i in sorted(names[name])] for name in WEIGHT_NAMES}
        out[layer] = _as_layer_weights(data, f"{where} layer {layer}")
    return out


def check_weights_for(weights: Dict[int, LayerWeights], cfg_fields: Dict[str, Any],
                      searched: Any, layers: Any, num_heads: int, num_kv_heads: int,
                      head_dim: int, where: str) -> None:
    """Weights loaded from a file against a study, before anything runs: every scored layer
    present, the heads, KV heads and head dim of the recordings and, when the masker fixes
    them (``searched`` names its searched fields), ``hat_bits`` and the MLP sizes."""
    missing = [layer for layer in layers if int(layer) not in weights]
    if missing:
        raise ConfigError(f"{where}: no weights for layer(s) {', '.join(map(str, missing))} the "
                          f"study scores; the file holds layers {sorted(weights)}")
    sizes = ("hat_bits", "hat_mlp_layers", "hat_mlp_hidden_size")
    cfg = HashAttentionTopKMaskerConfig(**{k: v for k, v in cfg_fields.items() if k in sizes})
    for layer in layers:
        w = weights[int(layer)]
        try:
            if not any(name in searched for name in sizes):
                check_layer_weights(w, cfg, layer, num_heads, num_kv_heads, head_dim)
                continue
            for side, heads in (("query", (num_heads,)), ("key", (num_kv_heads, num_heads))):
                first = w[f"{side}_matrix"][0]
                if first.shape[0] not in heads or first.shape[1] != head_dim:
                    raise ConfigError(f"layer {layer}: {side}_matrix[0] has shape "
                                      f"{tuple(first.shape)}; the "
                                      f"recordings need ({' or '.join(map(str, heads))}, "
                                      f"{head_dim}, d_out)")
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc} (recordings: {num_heads} heads, "
                              f"{num_kv_heads} KV heads, head dim {head_dim})") from None


def normalize_hat_weights(data: Any, where: str) -> Dict[int, LayerWeights]:
    """``{layer: weights}`` (nested) or flat ``layer.L.NAME.I`` tensors -> ``{int: weights}``."""
    if not isinstance(data, dict) or not data:
        raise ConfigError(f"{where}: expected a non-empty mapping of layer -> hash weights")
    if all(isinstance(k, str) and k.startswith("layer.") for k in data):
        return _unflatten(data, where)
    try:
        return {int(layer): _as_layer_weights(w, f"{where} layer {layer}") for layer, w in data.items()}
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"{where}: layer keys must be integers ({exc})") from None


def save_hat_weights(weights: Dict[int, LayerWeights], path: Union[str, Path]) -> Path:
    """Write ``{layer: weights}`` as safetensors (tensor names ``layer.L.NAME.I``)."""
    from safetensors.torch import save_file
    flat = {f"layer.{int(layer)}.{name}.{i}": t.detach().float().contiguous().cpu()
            for layer, w in weights.items() for name in WEIGHT_NAMES for i, t in enumerate(w[name])}
    path = Path(path)
    save_file(flat, str(path), metadata={"format": "sah-hash-attention"})
    return path


WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".pkl")


def check_weight_file(path: Union[str, Path], allow_pickle: Optional[bool] = None) -> None:
    """What can be checked before a run without reading the file: it exists, its extension
    is known, and a ``.pkl`` has the person's opt-in (``allow_pickle=None``: the process's,
    :func:`sah.infra.pickle_opt_in.pickle_allowed`)."""
    path = Path(path)
    where = f"hat_weight_file {path}"
    if not path.is_file():
        raise ConfigError(f"{where}: no such file" + ("" if not path.exists() else
                                                       " (it is a directory)"))
    suffix = path.suffix.lower()
    if suffix not in WEIGHT_SUFFIXES:
        raise ConfigError(f"{where}: unknown extension {suffix!r}; use .safetensors, .pt or .pkl")
    allowed = pickle_allowed() if allow_pickle is None else allow_pickle
    if suffix == ".pkl" and not allowed:
        raise ConfigError(f"{where}: .pkl files can run code when loaded; convert it to "
                          f"safetensors or, only for a file you trust, {HOW}")


def load_hat_weights(path: Union[str, Path], allow_pickle: Optional[bool] = None
                     ) -> Dict[int, LayerWeights]:
    """Read hash weights from safetensors, ``.pt``/``.pth`` (``weights_only``) or a ``.pkl``
    pickle: only with ``allow_pickle=True`` or, by default (``None``), the opt-in of the
    person running the process (:mod:`sah.infra.pickle_opt_in`)."""
    path = Path(path)
    where = f"hat_weight_file {path}"
    check_weight_file(path, allow_pickle)
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors.torch import load_file
        try:
            data: Any = load_file(str(path))
        except Exception as exc:  # safetensors raises its own error types
            raise ConfigError(f"{where}: not a readable safetensors file ({exc})") from None
    elif suffix in (".pt", ".pth", ".bin"):
        try:
            data = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as exc:  # unpickling refused or corrupt
            raise ConfigError(f"{where}: cannot be read with torch.load(weights_only=True) "
                              f"({exc}); convert it to safetensors") from None
    else:  # .pkl, opted in by the person running the process (checked above)
        with path.open("rb") as handle:
            data = pickle.load(handle)  # noqa: S301 (explicitly allowed by the user)
    return normalize_hat_weights(data, where)


# ---------------------------------------------------------------------- masker
@MaskerRegistry.register(HashAttentionTopKMaskerConfig)
class HashAttentionTopKMasker(TopKMasker):
    """Top-k by signature agreement of learned (or random) per-head hashes."""

    def __init__(self, config: HashAttentionTopKMaskerConfig) -> None:
        super().__init__(config)
        self._weights: Dict[Any, LayerWeights] = {}
        self._random = config.hat_weights is None and config.hat_weight_file is None
        if config.hat_weights is not None:
            self._weights = normalize_hat_weights(config.hat_weights, "hat_weights")
        elif config.hat_weight_file is not None:
            self._weights = load_hat_weights(config.hat_weight_file)
        self._key_heads_per_kv_head = 1

    def aux_bits_per_token(self, head_dim: int) -> float:
        return float(self.config.hat_bits * self._key_heads_per_kv_head)

    def layer_weights(self, ctx: AttentionContext, layer: Any) -> LayerWeights:
        """The checked weights of ``layer`` on ``ctx``'s device (random ones made on demand)."""
        d = ctx.dims
        cfg = self.config
        key = (layer, d.num_heads, d.num_kv_heads, d.head_dim) if self._random else layer
        if key not in self._weights:
            if not self._random:
                raise ConfigError(f"HashAttention weights have no layer {layer}; they hold layers "
                                  f"{sorted(k for k in self._weights if isinstance(k, int))}")
            self._weights[key] = random_hat_weights(
                d.num_heads, d.num_kv_heads, d.head_dim, cfg.hat_bits, cfg.hat_mlp_layers,
                cfg.hat_mlp_hidden_size, cfg.hat_init_seed + int(layer))
        weights = self._weights[key]
        check_layer_weights(weights, cfg, layer, d.num_heads, d.num_kv_heads, d.head_dim)
        return {name: [t.to(ctx.device, torch.float32) for t in ts] for name, ts in weights.items()}

    def scores(self, ctx: AttentionContext, sparse_meta_data: Dict[Any, Any],
               **kwargs: Any) -> torch.Tensor:
        layer = kwargs.get("layer_idx")
        layer = 0 if layer is None else int(layer)
        w = self.layer_weights(ctx, layer)
        act = self.config.hat_mlp_activation
        d = ctx.dims
        keys = ctx.keys.float()
        if w["key_matrix"][0].shape[0] != d.num_kv_heads:  # key hash per query head
            keys = keys.repeat_interleave(d.group_size, dim=1)
            self._key_heads_per_kv_head = d.group_size
        query_sig = signatures(hash_features(ctx.queries.float(), w["query_matrix"], w["query_bias"], act))
        key_sig = signatures(hash_features(keys, w["key_matrix"], w["key_bias"], act))
        return signature_scores(query_sig, key_sig)
