"""Use a chain config as a Hugging Face model's attention, ``model.generate()`` included.

    import sah.inmodel
    with sah.inmodel.chain_attention(model, "results/default/tuned/sink_local_quest.yaml"):
        out = model.generate(input_ids, max_new_tokens=32, do_sample=False)

Inside the block every attention layer of ``model`` runs the chain on what the model
passes (its KV cache included: queries of the new tokens against every cached key), and
the chain's ``sparse_meta_data`` is one dict for the whole block, kept across the
decoding steps as a decoder keeps it: MagicPig hashes each key once (the codes, centring
mean, max norm and hyperplanes of the call that first saw the sequence stay), Quest
computes each full page's bounds once. A later call on another sequence (a second
``generate()``) is recognised and starts its kept state afresh. ``dense_prefill=True``
runs calls with more than one query (the prompt) with dense attention, so only the
generated tokens run the chain (decode-time sparsity, as ``sah validate`` measures).
The model's previous attention implementation is restored on exit.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator, Union

import torch

from sah.attention import ResearchAttention, ResearchAttentionConfig
from sah.inmodel.interface import sparse_attention_in

ChainLike = Union[str, Path, ResearchAttentionConfig, ResearchAttention]


def chain_of(config: ChainLike) -> ResearchAttention:
    """A chain from a config file (YAML/JSON, e.g. ``tuned/<chain>.yaml``), a
    :class:`ResearchAttentionConfig` or a :class:`ResearchAttention` (returned as is)."""
    if isinstance(config, ResearchAttention):
        return config
    if isinstance(config, ResearchAttentionConfig):
        return ResearchAttention.create_from_config(config)
    if isinstance(config, (str, Path)):
        if not Path(config).is_file():
            raise FileNotFoundError(f"chain config {config}: no such file; give a chain config "
                                    f"file (YAML or JSON, e.g. results/<run>/tuned/<chain>.yaml)")
        return ResearchAttention.create_from_config(ResearchAttentionConfig.from_file(config))
    raise ValueError(f"chain config: got {type(config).__name__}; give a file path, a "
                     f"ResearchAttentionConfig or a ResearchAttention")


@contextlib.contextmanager
def chain_attention(model: torch.nn.Module, config: ChainLike, dense_prefill: bool = False,
                    figures: bool = False) -> Iterator[Any]:
    """Inside the block, ``config``'s chain is ``model``'s attention in every layer.

    Yields the session: ``session.sparse_meta_data`` is the state kept across calls
    (``"magic_pig_codes"``, ``"quest_page_bounds"``: per layer); with ``figures=True``,
    ``session.layers`` gets each call's output error against dense attention and density
    (an extra dense pass per call)."""
    attention = chain_of(config)
    with sparse_attention_in(model, attention, figures=figures) as session:
        session.dense_prefill = bool(dense_prefill)
        yield session
