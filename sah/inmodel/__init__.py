"""In-model validation: chains of maskers run inside a real model, compared with dense attention.

- :mod:`sah.inmodel.interface`: the attention function registered with transformers'
  ``AttentionInterface`` (every layer calls ``ResearchAttention.custom_attention`` on the
  inputs the model passes) and the per-layer figures;
- :mod:`sah.inmodel.protocol`: the protocol (window, dense prefill, one sparse chunk) and
  the figures (KL, top-1 agreement, perplexity ratio);
- :mod:`sah.inmodel.results`: results, JSON layout and table;
- :func:`validate_configs`: configs x texts with one model load and one dense pass per text
  (``sah validate``);
- :func:`chain_attention` (:mod:`sah.inmodel.hf`): a chain config as a Hugging Face
  model's attention, ``model.generate()`` included;
- :mod:`sah.inmodel.retrieval`: needle-in-a-haystack retrieval (``sah validate --task``).
"""

from sah.inmodel.hf import chain_attention, chain_of
from sah.inmodel.interface import InModelLayerFigures, mask_density, sparse_attention_in
from sah.inmodel.protocol import (DenseReference, InModelValidator, Window, check_protocol,
                                  compare_logits, window_span)
from sah.inmodel.results import InModelFigures, PairResult, ValidationResults
from sah.inmodel.validate import validate_configs

__all__ = ["chain_attention", "chain_of", "InModelLayerFigures", "mask_density", "sparse_attention_in",
           "DenseReference", "InModelValidator", "Window", "check_protocol", "compare_logits",
           "window_span", "InModelFigures",
           "PairResult", "ValidationResults", "validate_configs"]
