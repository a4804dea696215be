"""Answer a sample's question: dense prefill of the context, then question and greedy
decoding with a chain in every layer (decode-time sparsity).

Per sample, :meth:`Answerer.prefill` runs the context (every token before the question)
once with the model's own attention and keeps its KV cache. :meth:`Answerer.answer` then
runs the question as one chunk and at most ``max_new_tokens`` greedy tokens one at a
time, each call with the chain in every layer (or the model's own attention for the
dense baseline), the chain's ``sparse_meta_data`` kept across the calls of one answer as
a decoder keeps it; afterwards the cache is cropped back to the context, so the same
prefill serves every config. Decoding stops early at the end-of-text token or once the
answer holds the value (the pass rule, "the value appears in the answer", cannot change
after that).
"""

from __future__ import annotations

import contextlib
import inspect
import time
from dataclasses import dataclass
from typing import Any, Dict, Optional

import torch

from sah.attention import ResearchAttention
from sah.inmodel.interface import sparse_attention_in
from sah.inmodel.retrieval.tasks import Sample

MAX_NEW_TOKENS = 8


@dataclass
class Answer:
    text: str
    new_tokens: int
    passed: bool
    seconds: float


class Answerer:
    """Prefill and answer samples with one float32 model."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any,
                 max_new_tokens: int = MAX_NEW_TOKENS) -> None:
        if next(model.parameters()).dtype != torch.float32:
            raise ValueError(f"retrieval runs the model in float32; got "
                             f"{next(model.parameters()).dtype} (pass model.float())")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens
        self.device = next(model.parameters()).device
        params = inspect.signature(model.forward).parameters
        self._cache_kwarg = "cache" if "cache" in params else "past_key_values"
        self._logits_to_keep = "logits_to_keep" in params
        self.eos = getattr(tokenizer, "eos_token_id", None)

    @torch.no_grad()
    def forward(self, ids: torch.Tensor, cache: Any) -> torch.Tensor:
        """Last position's logits ``(vocab,)`` of ``ids`` ``(1, q)`` appended to ``cache``."""
        kwargs: Dict[str, Any] = {self._cache_kwarg: cache, "use_cache": True}
        if self._logits_to_keep:
            kwargs["logits_to_keep"] = 1
        return self.model(input_ids=ids.to(self.device), **kwargs).logits[0, -1].float()

    def prefill(self, sample: Sample) -> Any:
        """The KV cache of the sample's context, filled with the model's own attention."""
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.config)
        self.forward(sample.ids[:, :sample.context], cache)
        return cache

    @staticmethod
    def restore(cache: Any, length: int) -> None:
        """Every layer of ``cache`` back to its first ``length`` positions."""
        for layer in getattr(cache, "layers", []):
            excess = layer.get_seq_length() - length
            if excess > 0:
                layer.crop(-excess)
        if cache.get_seq_length() != length:
            raise RuntimeError(f"the KV cache holds {cache.get_seq_length()} positions after "
                               f"cropping; expected {length}")

    def answer(self, sample: Sample, cache: Any,
               attention: Optional[ResearchAttention] = None) -> Answer:
        """Greedy answer to the sample's question over ``cache`` (the prefilled context),
        with ``attention``'s chain in every layer (None: the model's own attention)."""
        start = time.perf_counter()
        scope = (sparse_attention_in(self.model, attention, figures=False)
                 if attention is not None else contextlib.nullcontext())
        generated = []
        text = ""
        try:
            with scope:
                logits = self.forward(sample.ids[:, sample.context:], cache)
                while True:
                    token = int(logits.argmax())
                    if token == self.eos:
                        break
                    generated.append(token)
                    text = self.tokenizer.decode(generated, skip_special_tokens=True)
                    if len(generated) >= self.max_new_tokens or sample.passed(text):
                        break
                    logits = self.forward(torch.tensor([[token]]), cache)
        finally:
            # also after a stop mid-forward: the prefill stays usable for the next config
            with contextlib.suppress(Exception):
                self.restore(cache, sample.context)
        self.restore(cache, sample.context)
        return Answer(text, len(generated), sample.passed(text), time.perf_counter() - start)
