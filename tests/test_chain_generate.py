"""A chain config as a Hugging Face model's attention: ``model.generate()`` with its KV cache
on the real embedded model, against the same chain run step by step."""

import pytest
import torch

from sah import ResearchAttentionConfig
from sah.inmodel import chain_attention
from sah.inmodel.interface import sparse_attention_in
from sah.inmodel.hf import chain_of
from sah.maskers.magic_pig import KEPT_CODES_KEY
from sah.maskers.quest import KEPT_BOUNDS_KEY
from sah.recording.default_model import load_default_model
from sah.recording.texts import load_text, token_window

pytestmark = pytest.mark.slow

PROMPT, NEW = 80, 6
CHAIN = [{"type": "SinkMaskerConfig", "sink_size": 4},
         {"type": "LocalMaskerConfig", "window_size": 8},
         {"type": "QuestTopKMaskerConfig", "heavy_size": 8, "page_size": 4},
         {"type": "MagicPigConfig", "lsh_l": 8, "lsh_k": 3}]


@pytest.fixture(scope="module")
def model_and_tokenizer():
    return load_default_model(attn_implementation="sdpa")


@pytest.fixture(scope="module")
def prompt(model_and_tokenizer):
    return token_window(model_and_tokenizer[1], load_text("prose"), 0, PROMPT)


def step_by_step(model, attention, prompt, fresh_state_each_step=False):
    """Greedy decoding by hand: prompt, then one token at a time over a DynamicCache, the
    chain in every layer; the chain's state kept across steps unless told otherwise."""
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    ids, rows = prompt, []
    with torch.no_grad(), sparse_attention_in(model, attention, figures=False) as session:
        for _ in range(NEW):
            if fresh_state_each_step:
                session.sparse_meta_data.clear()
            logits = model(input_ids=ids, past_key_values=cache, use_cache=True).logits[0, -1]
            rows.append(logits.float())
            ids = logits.argmax().view(1, 1)
    return torch.stack(rows), torch.stack(rows).argmax(-1)


def test_generate_equals_the_chain_step_by_step_and_keeps_magic_pig_and_quest_state(
        model_and_tokenizer, prompt, tmp_path):
    model, _ = model_and_tokenizer
    path = tmp_path / "chain.yaml"
    ResearchAttentionConfig.from_dict(CHAIN).to_file(path)
    with torch.no_grad(), chain_attention(model, path) as session:
        out = model.generate(prompt, max_new_tokens=NEW, do_sample=False, min_new_tokens=NEW,
                             output_logits=True, return_dict_in_generate=True)
    assert model.config._attn_implementation == "sdpa"  # restored on exit
    scores = torch.cat([s.float() for s in out.logits])
    tokens = out.sequences[0, PROMPT:]
    # the state a decoder keeps: MagicPig's codes and Quest's page bounds, per layer,
    # covering every key the last step saw (prompt + generated tokens but the last)
    seen = PROMPT + NEW - 1
    codes = session.sparse_meta_data[KEPT_CODES_KEY]
    bounds = session.sparse_meta_data[KEPT_BOUNDS_KEY]
    assert sorted(slot[0] for slot in codes) == list(range(30))
    assert sorted(slot[0] for slot in bounds) == list(range(30))
    assert {kept.count for kept in codes.values()} == {seen}
    assert {kept.count for kept in bounds.values()} == {seen}

    attention = chain_of(path)
    expected, expected_tokens = step_by_step(model, attention, prompt)
    assert torch.equal(tokens, expected_tokens)
    scale = float(expected.abs().max())
    assert float((scores - expected).abs().max()) < 1e-4 * scale
    # kept state matters: MagicPig re-hashing every step from fresh statistics differs
    fresh, _ = step_by_step(model, attention, prompt, fresh_state_each_step=True)
    assert float((fresh - expected).abs().max()) > 1e-3 * scale


def test_dense_prefill_runs_only_the_generated_tokens_sparse(model_and_tokenizer, prompt):
    model, _ = model_and_tokenizer
    sink_local = ResearchAttentionConfig.from_dict(CHAIN[:2])
    with torch.no_grad():
        dense_first = model(input_ids=prompt).logits[0, -1]
        with chain_attention(model, sink_local, dense_prefill=True):
            out = model.generate(prompt, max_new_tokens=2, do_sample=False, output_logits=True,
                                 return_dict_in_generate=True)
        with chain_attention(model, sink_local):
            sparse = model.generate(prompt, max_new_tokens=1, do_sample=False,
                                    output_logits=True, return_dict_in_generate=True)
    assert torch.allclose(out.logits[0][0].float(), dense_first.float(), atol=1e-3)
    assert float((sparse.logits[0][0].float() - dense_first.float()).abs().max()) > 1e-2


def test_chain_of_refuses_a_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        chain_of(tmp_path / "missing.yaml")
