"""The in-model validation protocol: one window of text, a dense pass, one sparse chunk.

For ``tokens`` T and ``positions`` P (``1 <= P <= T - 1``, ``T`` at most the model's
context):

1. the text is tokenised without special tokens; its ``T + 1`` ids from token ``START``
   (``NAME@START``, default 0) form the window; inputs are ids ``[0, T)``, targets ids
   ``[1, T]``;
2. the first ``T - P`` positions run dense (the model's own attention) and fill the KV
   cache; only the last position's logits are computed;
3. the last ``P`` positions run as ONE chunk over that cache, once with dense attention
   (the reference, shared by every chain) and once per chain with the chain in EVERY
   layer: each layer calls the chain once with all ``P`` queries against all ``T`` keys,
   query ``i`` at position ``T - P + i`` attending causally to keys ``[0, T - P + i]``
   (its chunk's earlier positions included), so a size given as a fraction resolves
   against the ``T`` keys of that call. For sizes given as counts this is exactly decoding
   the ``P`` tokens one at a time with a full KV cache and the sparse pattern. The cache
   is cropped back to ``T - P`` after each chunk.

The model runs in float32. Figures over the ``P`` positions: mean KL(dense || sparse) of
the next-token distributions, top-1 agreement, ``ppl_ratio = exp(mean NLL sparse - mean
NLL dense)`` on the targets, and the chain's per-layer output error and density
(:mod:`sah.inmodel.interface`).
"""

from __future__ import annotations

import contextlib
import inspect
import time
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import torch

from sah.attention import ResearchAttention
from sah.inmodel.interface import Observer, sparse_attention_in
from sah.inmodel.results import InModelFigures
from sah.recording.texts import load_text, parse_text_spec, token_window


def model_context(model: torch.nn.Module) -> Optional[int]:
    """The model's context length (``max_position_embeddings``), or None if it has none."""
    cfg = model.config
    cfg = getattr(cfg, "text_config", None) or cfg
    value = getattr(cfg, "max_position_embeddings", None)
    return int(value) if value else None


def check_protocol(tokens: Any, positions: Any, context: Optional[int] = None,
                   where: Tuple[str, str] = ("--tokens", "--positions"),
                   model_label: str = "the model") -> None:
    """Refuse a window the protocol cannot run: one line naming the flag, value and fix."""
    wt, wp = where
    for label, value in ((wt, tokens), (wp, positions)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{label}: got {value!r}; expected an int")
    if tokens < 2:
        raise ValueError(f"{wt}: got {tokens}; the window needs at least 2 tokens (one dense "
                         f"position before the sparse chunk)")
    if not 1 <= positions <= tokens - 1:
        raise ValueError(f"{wp}: got {positions} with {wt} {tokens}; the sparse chunk holds 1 to "
                         f"{wt} - 1 = {tokens - 1} positions (at least one position runs dense "
                         f"first): lower {wp} or raise {wt}")
    if context is not None and tokens > context:
        raise ValueError(f"{wt}: got {tokens}; {model_label} has {context} positions: use "
                         f"{wt} {context} or fewer")


def window_span(spec: str, tokens: int, where: str = "--text") -> Tuple[str, int, int]:
    """``(text sha256, start, end)`` of the window ``spec`` gets for ``tokens`` (``end``
    excluded, targets included: ``tokens + 1`` ids), without loading a tokenizer; for
    checking that validation texts are disjoint from recordings
    (:func:`sah.recording.texts.spans_overlap`)."""
    parsed = parse_text_spec(spec, where)
    text = load_text(parsed.text, where)
    return text.sha256, parsed.start, parsed.start + tokens + 1


@dataclass
class Window:
    """The ``tokens + 1`` ids of one text window and where they come from."""

    text: str           # as given (NAME, FILE, NAME@START)
    text_name: str      # the text's name or file path
    sha256: str         # of the whole text's UTF-8 bytes
    start: int          # token offset of the window in the text
    ids: torch.Tensor   # (1, tokens + 1) int64

    @property
    def end(self) -> int:
        return self.start + int(self.ids.shape[1])

    def span(self) -> Tuple[str, int, int]:
        """``(text sha256, start, end)`` with ``end`` excluded (targets included)."""
        return self.sha256, self.start, self.end


@dataclass
class DenseReference:
    """The dense pass of one window: its prefilled KV cache and the chunk's dense logits."""

    window: Window
    cache: Any                 # transformers Cache holding the first T - P positions
    logits: torch.Tensor       # (P, vocab) float32
    targets: torch.Tensor      # (P,) int64: ids [T - P + 1, T]
    seconds: float             # prefill + dense chunk
    distribution: Optional["DenseDistribution"] = None  # made on first comparison

    def dense_distribution(self) -> "DenseDistribution":
        if self.distribution is None:
            self.distribution = DenseDistribution(self.logits, self.targets)
        return self.distribution


class InModelValidator:
    """Runs the protocol for one model, ``tokens`` and ``positions``."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any, tokens: int, positions: int,
                 where: Tuple[str, str] = ("--tokens", "--positions")) -> None:
        if next(model.parameters()).dtype != torch.float32:
            raise ValueError(f"the protocol runs the model in float32; got "
                             f"{next(model.parameters()).dtype} (pass model.float())")
        check_protocol(tokens, positions, model_context(model), where)
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.tokens = tokens
        self.positions = positions
        self.device = next(model.parameters()).device
        params = inspect.signature(model.forward).parameters
        # transformers 5.x renames past_key_values to cache (the old name still works, warned)
        self._cache_kwarg = "cache" if "cache" in params else "past_key_values"
        self._logits_to_keep = "logits_to_keep" in params

    # ------------------------------------------------------------------ windows
    def window(self, spec: str, where: str = "--text") -> Window:
        """The window of ``spec`` (``NAME``, ``FILE``, ``NAME@START``); ValueError if short."""
        parsed = parse_text_spec(spec, where)
        text = load_text(parsed.text, where)
        ids = token_window(self.tokenizer, text, parsed.start, self.tokens + 1,
                           f"{where} {spec}")
        return Window(spec, text.name, text.sha256, parsed.start, ids)

    # ------------------------------------------------------------------ passes
    def new_cache(self) -> Any:
        """A full cache in every layer, never the model's sliding-window layers: a window
        layer's queries then see every key so far (masked to the window by the model and
        by sah), ``crop`` works at any length and key ``j`` stays token ``j``."""
        from transformers import DynamicCache

        return DynamicCache()

    @torch.no_grad()
    def forward(self, ids: torch.Tensor, cache: Any, last_only: bool = False) -> torch.Tensor:
        """Logits ``(q, vocab)`` float32 of ``ids`` ``(1, q)`` appended to ``cache`` (which
        grows by ``q`` positions); ``last_only`` computes only the last position's."""
        kwargs: Dict[str, Any] = {self._cache_kwarg: cache, "use_cache": True}
        if last_only and self._logits_to_keep:
            kwargs["logits_to_keep"] = 1
        out = self.model(input_ids=ids.to(self.device), **kwargs)
        return out.logits[0].float()

    def prefix_length(self) -> int:
        return self.tokens - self.positions

    def chunk_ids(self, window: Window) -> torch.Tensor:
        return window.ids[:, self.prefix_length():self.tokens]

    def _crop(self, cache: Any) -> None:
        cache.crop(-self.positions)
        if cache.get_seq_length() != self.prefix_length():
            raise RuntimeError(f"the KV cache holds {cache.get_seq_length()} positions after "
                               f"cropping; expected {self.prefix_length()}")

    def _restore_prefix(self, cache: Any) -> None:
        """Each layer back to the prefix's ``T - P`` positions, after a chunk stopped
        mid-forward left it in some layers only (a crop by ``-P`` would cut the others)."""
        prefix = self.prefix_length()
        for layer in getattr(cache, "layers", []):
            excess = layer.get_seq_length() - prefix
            if excess > 0:
                layer.crop(-excess)

    def dense(self, window: Window) -> DenseReference:
        """Prefill the first ``T - P`` positions and run the chunk with dense attention."""
        start = time.perf_counter()
        cache = self.new_cache()
        self.forward(window.ids[:, :self.prefix_length()], cache, last_only=True)
        logits = self.forward(self.chunk_ids(window), cache)
        self._crop(cache)
        targets = window.ids[0, self.prefix_length() + 1:self.tokens + 1].to(logits.device)
        return DenseReference(window, cache, logits, targets, time.perf_counter() - start)

    def sparse_logits(self, reference: DenseReference, attention: ResearchAttention,
                      observer: Optional[Observer] = None) -> Tuple[torch.Tensor, list]:
        """The chunk's logits ``(P, vocab)`` with ``attention``'s chain in every layer over
        the dense cache, and the per-layer figures (:class:`InModelLayerFigures`, one per layer)."""
        with sparse_attention_in(self.model, attention, observer=observer) as session:
            try:
                logits = self.forward(self.chunk_ids(reference.window), reference.cache)
            except BaseException:
                # stopped mid-forward (a Ctrl-C, a chain raising): some layers may hold the
                # chunk and others not; crop what can be cropped, and let the original
                # exception through (a failing check here must not replace it)
                with contextlib.suppress(Exception):
                    self._restore_prefix(reference.cache)
                raise
            self._crop(reference.cache)
        return logits, session.layers

    def sparse(self, reference: DenseReference, attention: ResearchAttention,
               observer: Optional[Observer] = None) -> InModelFigures:
        """The chain's figures on ``reference``'s window (:func:`compare_logits` + layers)."""
        start = time.perf_counter()
        logits, layers = self.sparse_logits(reference, attention, observer)
        figures = compare_logits(reference.dense_distribution(), logits)
        return InModelFigures(density=sum(lf.density for lf in layers) / len(layers),
                       per_layer=list(layers), seconds=time.perf_counter() - start, **figures)


class DenseDistribution:
    """The dense next-token distributions of a chunk, in float64, computed once and shared
    by every chain compared with them."""

    def __init__(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        self.log_probs = torch.log_softmax(logits.double(), dim=-1)
        self.probs = self.log_probs.exp()
        self.neg_entropy = (self.probs * self.log_probs).sum(-1)      # (P,)
        self.argmax = logits.argmax(-1)
        self.targets = targets.view(-1, 1)
        self.nll = float(-self.log_probs.gather(1, self.targets).mean())


def compare_logits(dense: "torch.Tensor | DenseDistribution", sparse: torch.Tensor,
                   targets: Optional[torch.Tensor] = None) -> Dict[str, float]:
    """Mean KL(dense || sparse), top-1 agreement, mean NLLs and ``ppl_ratio`` over the rows
    of ``(P, vocab)`` logits (float64). ``dense``: logits (then ``targets`` is needed) or
    their :class:`DenseDistribution`."""
    if not isinstance(dense, DenseDistribution):
        dense = DenseDistribution(dense, targets)
    log_s = torch.log_softmax(sparse.double(), dim=-1)
    kl = dense.neg_entropy - (dense.probs * log_s).sum(-1)
    nll_s = float(-log_s.gather(1, dense.targets).mean())
    return {"kl": float(kl.mean()),
            "top1_agreement": float((dense.argmax == sparse.argmax(-1)).double().mean()),
            "nll_dense": dense.nll, "nll_sparse": nll_s,
            "ppl_ratio": float(torch.exp(torch.tensor(nll_s - dense.nll, dtype=torch.float64)))}
