"""Layer types (full, sliding window, chunked): allowed positions, sizes, recordings, configs."""

import math

import pytest
import torch

from sah.attention import ResearchAttention, ResearchAttentionConfig
from sah.context import AttentionContext
from sah.estimator import sparse_attention
from sah.evaluate import evaluate_config
from sah.layer_types import FULL, LayerType, UnknownLayerType, layer_types_from_config
from sah.mask import Mask
from sah.maskers import LocalMaskerConfig, OracleTopKConfig, SinkMaskerConfig
from sah.recording.format import RecordingError, load_recording, save_recording
from sah.recording.synthetic import make_synthetic_recording

WINDOW = 64


def allowed_loops(kind, size, positions, n):
    """Which keys each query may see, by plain loops."""
    out = torch.zeros(len(positions), n, dtype=torch.bool)
    for i, t in enumerate(positions):
        for j in range(n):
            ok = j <= t
            if kind == "sliding":
                ok = ok and j > t - size
            if kind == "chunked":
                ok = ok and j // size == t // size
            out[i, j] = ok
    return out


def windowed_attention_loops(ctx, keep):
    """Dense attention of every row over the keys ``keep[q, n]`` allows, float64 loops."""
    q, k, v = ctx.queries.double(), ctx.keys.double(), ctx.values.double()
    g = ctx.dims.group_size
    out = torch.zeros(q.shape, dtype=torch.float64)
    for h in range(q.shape[1]):
        for i in range(q.shape[2]):
            cols = keep[i].nonzero().view(-1)
            logits = ctx.scaling * (k[0, h // g, cols] @ q[0, h, i])
            out[0, h, i] = torch.softmax(logits, -1) @ v[0, h // g, cols]
    return out


@pytest.mark.parametrize("kind,size", [("full", None), ("sliding", 5), ("sliding", 1),
                                       ("chunked", 4), ("chunked", 7)])
def test_allowed_positions_follow_the_layer_type(kind, size):
    torch.manual_seed(0)
    n, positions = 23, [0, 3, 4, 9, 15, 22]
    q = torch.randn(1, 4, len(positions), 8)
    k, v = torch.randn(1, 2, n, 8), torch.randn(1, 2, n, 8)
    ctx = AttentionContext(q, k, v, query_positions=torch.tensor(positions),
                           layer_type=LayerType(kind, size))
    want = allowed_loops(kind, size, positions, n)
    assert torch.equal(ctx.allowed_full[0, 0], want)
    assert torch.allclose(ctx.dense_output.double(), windowed_attention_loops(ctx, want), atol=1e-5)
    assert ctx.allowed_per_head.tolist() == [float(want.sum())] * 4


def test_sparse_output_reading_only_active_keys_keeps_the_window():
    # a mask marking the last 40 of 400 keys active (more than the 17-key window): the
    # path that reads only the active keys (no dense logits) must leave out those outside it
    torch.manual_seed(1)
    q, k, v = torch.randn(1, 4, 6, 16), torch.randn(1, 2, 400, 16), torch.randn(1, 2, 400, 16)
    window = LayerType("sliding", 17)
    ctx = AttentionContext(q, k, v, layer_type=window)
    last = (torch.arange(400) >= 360).expand(ctx.mask_shape)
    gathered = sparse_attention(ctx, Mask.from_bool(last, ctx.mask_shape)).output
    assert "logits" not in ctx.__dict__  # the path that reads only the active keys
    reference = AttentionContext(q, k, v, layer_type=window).dense_output
    assert torch.allclose(gathered, reference, atol=1e-5)
    causal = AttentionContext(q, k, v)
    unwindowed = sparse_attention(causal, Mask.from_bool(last, ctx.mask_shape)).output
    assert not torch.allclose(gathered, unwindowed, atol=1e-3)


def sliding_recording(tmp_path, window=WINDOW):
    rec = make_synthetic_recording(num_layers=2, num_heads=4, num_kv_heads=2, head_dim=32,
                                   num_keys=512, num_queries=8, seed=3)
    rec.metadata["layer_types"] = {"0": {"type": "sliding", "window": window},
                                   "1": {"type": "full"}}
    return load_recording(save_recording(rec, tmp_path / "sliding.safetensors"))


def test_local_window_of_the_layer_window_scores_dense_on_sliding_layer_only(tmp_path):
    rec = sliding_recording(tmp_path)
    assert rec.layer_type(0) == LayerType("sliding", WINDOW) and rec.layer_type(1) == FULL
    chain = ResearchAttentionConfig(masker_configs=[LocalMaskerConfig(window_size=WINDOW)])
    result = evaluate_config(chain, rec)
    sliding, full = result.layers
    assert sliding.output_error < 1e-6 and sliding.density == 1.0
    assert full.output_error > 0.05 and full.density < 0.5


def test_fraction_sizes_resolve_against_the_keys_the_layer_allows(tmp_path):
    rec = sliding_recording(tmp_path)
    ctx = rec.context(0)
    assert ctx.size_keys == WINDOW and rec.context(1).size_keys == 512
    attention = ResearchAttention.create_from_config(
        ResearchAttentionConfig(masker_configs=[OracleTopKConfig(heavy_size=0.25)]))
    evaluation, mask = attention.evaluate(ctx)
    per_row = (mask.active() & ctx.allowed).sum(-1)
    assert bool((per_row == WINDOW // 4).all())
    assert math.isclose(evaluation.density, 0.25)


def test_sink_keys_outside_a_sliding_window_are_not_added(tmp_path):
    rec = sliding_recording(tmp_path)
    attention = ResearchAttention.create_from_config(
        ResearchAttentionConfig(masker_configs=[SinkMaskerConfig(sink_size=4)]))
    evaluation, mask = attention.evaluate(rec.context(0))
    # every query sits past the window's reach of keys 0..3: the sinks add nothing there
    assert int(rec.query_positions.min()) >= WINDOW + 4
    assert not bool(mask.active().any()) and evaluation.density == 0.0
    evaluation, _ = attention.evaluate(rec.context(1))
    assert evaluation.density > 0.0


def test_recording_without_layer_types_reads_as_full_layers(tmp_path):
    rec = make_synthetic_recording(num_layers=2, num_heads=2, num_kv_heads=1, head_dim=16,
                                   num_keys=128, num_queries=4)
    loaded = load_recording(save_recording(rec, tmp_path / "old.safetensors"))
    assert "layer_types" not in loaded.metadata
    assert loaded.layer_type(0) == FULL and loaded.layer_type(1) == FULL
    ctx = loaded.context(1)
    causal = torch.arange(128).view(1, -1) <= loaded.query_positions.view(-1, 1)
    assert torch.equal(ctx.allowed_full[0, 0], causal)


@pytest.mark.parametrize("types,words", [
    ({"0": {"type": "linear"}, "1": {"type": "full"}}, "'linear'"),
    ({"0": {"type": "sliding"}, "1": {"type": "full"}}, "window"),
    ({"0": {"type": "full"}}, "covers layers"),
])
def test_bad_layer_types_in_a_recording_are_refused_naming_them(tmp_path, types, words):
    rec = make_synthetic_recording(num_layers=2, num_heads=2, num_kv_heads=1, head_dim=16,
                                   num_keys=128, num_queries=4)
    rec.metadata["layer_types"] = types
    with pytest.raises(RecordingError, match=words):
        save_recording(rec, tmp_path / "bad.safetensors")
    assert not (tmp_path / "bad.safetensors").exists()


def test_editing_layer_types_in_a_header_breaks_the_content_hash(tmp_path):
    from sah.recording.format import _read_header, write_raw_recording
    from safetensors.torch import load_file
    import json

    path = save_recording(sliding_recording(tmp_path), tmp_path / "a.safetensors")
    meta = json.loads(_read_header(path)["__metadata__"]["sah"])
    stored_hash = meta["content_hash"]
    meta["layer_types"]["0"]["window"] = 128
    write_raw_recording(load_file(path), meta, tmp_path / "b.safetensors")
    assert json.loads(_read_header(tmp_path / "b.safetensors")["__metadata__"]["sah"])[
        "content_hash"] != stored_hash


def test_layer_types_are_read_from_transformers_configs():
    from transformers import Gemma3TextConfig, LlamaConfig, Llama4TextConfig, MistralConfig

    gemma = Gemma3TextConfig(num_hidden_layers=6, sliding_window=512)
    types = layer_types_from_config(gemma)
    assert types == [LayerType("sliding", 512)] * 5 + [FULL]
    assert layer_types_from_config(LlamaConfig(num_hidden_layers=3)) == [FULL] * 3
    assert layer_types_from_config(MistralConfig(num_hidden_layers=2, sliding_window=4096)) == \
        [LayerType("sliding", 4096)] * 2
    llama4 = Llama4TextConfig(num_hidden_layers=4, attention_chunk_size=8192)
    kinds = {t.kind for t in layer_types_from_config(llama4)}
    assert "chunked" in kinds and LayerType("chunked", 8192) in layer_types_from_config(llama4)


def test_a_layer_type_sah_does_not_know_is_named():
    from transformers import Gemma3TextConfig

    cfg = Gemma3TextConfig(num_hidden_layers=3)
    cfg.layer_types = ["full_attention", "linear_attention", "full_attention"]
    with pytest.raises(UnknownLayerType, match="layer 1 has layer type 'linear_attention'"):
        layer_types_from_config(cfg)


def test_inspect_shows_each_layers_type_and_counts_top_mass_in_its_window(tmp_path):
    from sah.recording.inspect import format_summary, summarize

    rec = sliding_recording(tmp_path)
    info = summarize(rec, top_fraction=1 / WINDOW)
    assert [st["type"] for st in info["layers"]] == [f"sliding (window {WINDOW})", "full"]
    # the top 1/W of a W-key window is its single largest weight
    ctx = rec.context(0)
    largest = float(ctx.probabilities.amax(-1).mean())
    assert info["layers"][0]["top_mass"] == pytest.approx(largest, abs=1e-5)
    assert f"sliding (window {WINDOW})" in format_summary(info)


def _registered_configs():
    from sah.maskers import MaskerRegistry
    return [MaskerRegistry.config_class(name) for name in MaskerRegistry.config_names()]


@pytest.mark.parametrize("config_class", _registered_configs(), ids=lambda c: c.__name__)
@pytest.mark.parametrize("layer_type", [LayerType("sliding", 24), LayerType("chunked", 96)],
                         ids=lambda t: t.kind)
def test_every_masker_adds_only_positions_the_layer_allows(config_class, layer_type):
    torch.manual_seed(4)
    q, k, v = torch.randn(1, 4, 8, 32), torch.randn(1, 2, 300, 32), torch.randn(1, 2, 300, 32)
    ctx = AttentionContext(q, k, v, layer_type=layer_type,
                           query_positions=torch.arange(200, 300, 12)[:8])
    chain = ResearchAttentionConfig(masker_configs=[config_class()])
    evaluation, mask = ResearchAttention.create_from_config(chain).evaluate(ctx)
    # a full mask stands for every allowed position (nothing stored)
    assert mask.is_full() or not bool((mask.active() & ~ctx.allowed_full).any())
    assert math.isfinite(evaluation.output_error) and 0.0 <= evaluation.density <= 1.0


@pytest.mark.parametrize("sampler", [
    dict(type="AdaptiveSamplingMaskerConfig", base_rate_sampling=0.3, init_offset=0,
         local_offset=2),
    dict(type="RandomSamplingMaskerConfig", sampling_rate=0.05)], ids=lambda d: d["type"])
def test_samplers_draw_inside_a_window_shorter_than_the_keys(sampler):
    """Rows are as wide as the call's keys (300) while sizes resolve against the window
    (24): the draw lands inside each query's window and only there."""
    from sah.maskers.base import MaskerConfig
    torch.manual_seed(5)
    q, k, v = torch.randn(1, 4, 8, 32), torch.randn(1, 2, 300, 32), torch.randn(1, 2, 300, 32)
    ctx = AttentionContext(q, k, v, layer_type=LayerType("sliding", 24),
                           query_positions=torch.arange(200, 300, 12)[:8])
    chain = ResearchAttentionConfig([SinkMaskerConfig(sink_size=0), LocalMaskerConfig(window_size=2),
                                     MaskerConfig.from_dict(sampler)])
    meta = {}
    mask = ResearchAttention.create_from_config(chain).compute_mask(ctx, meta, layer_idx=0)
    active = mask.active()
    assert not bool((active & ~ctx.allowed_full).any())
    per_row = active.sum(-1)
    assert bool((per_row > 2).all()) and bool((per_row <= 24).all()), per_row
    assert math.isfinite(sparse_attention(ctx, mask).output.abs().sum().item())


def test_contexts_cached_for_a_recording_in_memory_follow_its_layer_types():
    from sah.evaluate import recording_key

    rec = make_synthetic_recording(num_layers=1, num_heads=2, num_kv_heads=1, head_dim=16,
                                   num_keys=128, num_queries=4)
    full_key = recording_key(rec)
    rec.metadata["layer_types"] = {"0": {"type": "sliding", "window": 16}}
    assert recording_key(rec) != full_key


def test_a_decode_step_in_a_sliding_layer_does_not_see_keys_outside_its_window():
    """The decode fast path (every key allowed) must not apply when the window is shorter
    than the keys: the chain's output equals dense attention over the window only."""
    import torch

    from sah import AttentionContext, LocalMaskerConfig, ResearchAttention, ResearchAttentionConfig
    from sah.layer_types import LayerType
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 1, 8, generator=g), torch.randn(1, 1, 64, 8, generator=g),
               torch.randn(1, 1, 64, 8, generator=g))
    ctx = AttentionContext(q, k, v, layer_type=LayerType("sliding", 16))
    assert not ctx.every_key_allowed
    attention = ResearchAttention.create_from_config(
        ResearchAttentionConfig([LocalMaskerConfig(window_size=16)]))
    evaluation, _ = attention.evaluate(ctx)
    assert evaluation.output_error < 1e-5 and abs(evaluation.density - 1.0) < 1e-9
