"""Models with sliding-window layers, end to end on a small randomly initialised Gemma 3
(real transformers model, SmolLM2's tokenizer): chunked-prefill recordings, in-model
validation past the window, and a model whose layer type sah does not know."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sah.attention import ResearchAttentionConfig
from sah.layer_types import FULL, LayerType
from sah.recording.recorder import record_attention

ROOT = Path(__file__).resolve().parents[1]
WINDOW = 8


def _tokenizer():
    from sah.recording.default_model import load_default_tokenizer
    return load_default_tokenizer()


@pytest.fixture(scope="module")
def small_gemma(tmp_path_factory):
    """A 2-layer Gemma 3 (layer 0 sliding with an 8-key window, layer 1 full) saved as a
    local model directory with SmolLM2's tokenizer."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    config = Gemma3TextConfig(vocab_size=49152, hidden_size=64, intermediate_size=128,
                              num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1,
                              head_dim=16, sliding_window=WINDOW, max_position_embeddings=512,
                              layer_types=["sliding_attention", "full_attention"])
    model = Gemma3ForCausalLM(config).eval()
    folder = tmp_path_factory.mktemp("small_gemma")
    model.save_pretrained(folder)
    _tokenizer().save_pretrained(folder)
    return folder


def _load(folder):
    from sah.recording.default_model import load_model
    return load_model(str(folder))


def test_chunked_prefill_records_every_key_of_a_window_layer(small_gemma):
    model, _ = _load(small_gemma)
    ids = torch.randint(0, 49152, (1, 96), generator=torch.Generator().manual_seed(1))
    one_pass = record_attention(model, ids, num_queries=8, dtype="float32", progress=False,
                                chunk_size=96)
    chunked = record_attention(model, ids, num_queries=8, dtype="float32", progress=False,
                               chunk_size=16)
    assert chunked.metadata["prefill_chunks"] == 6
    assert chunked.metadata["layer_types"] == {"0": {"type": "sliding", "window": WINDOW},
                                               "1": {"type": "full"}}
    assert chunked.layer_type(0) == LayerType("sliding", WINDOW) and chunked.layer_type(1) == FULL
    for a, b in zip(one_pass.layers, chunked.layers):
        for name in ("queries", "keys", "values"):
            assert torch.allclose(getattr(a, name), getattr(b, name), atol=1e-4), (a.layer, name)


def test_recorded_window_layer_scores_like_the_models_own_attention(small_gemma):
    # the model's own attention output of the sliding layer (what the next layer reads)
    # equals dense attention over the recording's allowed keys, not over all of them
    from sah.inmodel import sparse_attention_in
    from sah.attention import ResearchAttention

    model, _ = _load(small_gemma)
    ids = torch.randint(0, 49152, (1, 64), generator=torch.Generator().manual_seed(2))
    rec = record_attention(model, ids, layers=[0], num_queries=4, dtype="float32",
                           progress=False)
    outputs = {}

    def observe(layer, queries, keys, values, mask, positions, output):
        outputs[layer] = output

    with torch.no_grad(), sparse_attention_in(model, ResearchAttention.create_from_config(
            ResearchAttentionConfig(masker_configs=[])), figures=False, observer=observe):
        model(input_ids=ids, use_cache=False)
    own = outputs[0][:, :, rec.query_positions]
    ctx = rec.context(0)
    assert torch.allclose(ctx.dense_output, own, atol=1e-5)
    causal = rec.layers[0]
    from sah.context import AttentionContext
    unwindowed = AttentionContext(causal.queries, causal.keys, causal.values,
                                  scaling=rec.scaling, query_positions=rec.query_positions)
    assert not torch.allclose(unwindowed.dense_output, own, atol=1e-3)


def test_in_model_validation_runs_past_the_window(small_gemma):
    from sah.inmodel import validate_configs

    dense = ResearchAttentionConfig.from_dict(
        {"masker_configs": [{"type": "LocalMaskerConfig", "window_size": 1.0}]})
    results = validate_configs({"dense": dense}, ["docs"], tokens=64, positions=16,
                               model=str(small_gemma))
    figures = results.pairs[0].figures
    assert figures.kl < 1e-6 and figures.top1_agreement == 1.0 and figures.density == 1.0


def test_a_layer_type_sah_does_not_know_is_refused_before_anything_is_written(tmp_path):
    from transformers import Lfm2Config, Lfm2ForCausalLM

    config = Lfm2Config(num_hidden_layers=2, hidden_size=32, intermediate_size=64,
                        num_attention_heads=2, num_key_value_heads=1, vocab_size=49152,
                        layer_types=["conv", "full_attention"])
    Lfm2ForCausalLM(config).save_pretrained(tmp_path / "lfm2")
    _tokenizer().save_pretrained(tmp_path / "lfm2")
    out = tmp_path / "rec.safetensors"
    proc = subprocess.run([sys.executable, "-m", "sah.cli", "record", "--model",
                           str(tmp_path / "lfm2"), "--tokens", "64", "--queries", "4",
                           "--out", str(out), "--no-progress"],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "layer 0 has layer type 'conv'" in lines[0], proc.stderr
    assert not out.exists() and list(tmp_path.iterdir()) == [tmp_path / "lfm2"]


def test_a_sliding_window_cache_is_refused_with_the_fix(small_gemma):
    from transformers import DynamicCache

    from sah.attention import ResearchAttention
    from sah.inmodel import sparse_attention_in

    model, _ = _load(small_gemma)
    ids = torch.randint(0, 49152, (1, 40), generator=torch.Generator().manual_seed(3))
    cache = DynamicCache(config=model.config)  # the model's own: window layers keep 8 keys
    dense = ResearchAttention.create_from_config(ResearchAttentionConfig(masker_configs=[]))
    with torch.no_grad():
        model(input_ids=ids[:, :32], use_cache=True, cache=cache)
        with sparse_attention_in(model, dense, figures=False):
            with pytest.raises(ValueError, match="layer 0 .*sliding-window cache.*DynamicCache"):
                model(input_ids=ids[:, 32:], use_cache=True, cache=cache)
