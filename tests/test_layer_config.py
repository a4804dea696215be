"""Per-layer and per-head values (layer_overrides): masks, figures, files, errors."""

import json

import pytest
import torch

from sah import (AdaptiveSamplingMaskerConfig, ConfigError, HashAttentionTopKMaskerConfig,
                 LocalMaskerConfig, OracleTopKConfig, OracleTopPMaskerConfig,
                 QuestTopKMaskerConfig, RandomSamplingMaskerConfig, ResearchAttention,
                 ResearchAttentionConfig, SinkMaskerConfig)
from sah.context import AttentionContext
from sah.evaluate import evaluate_config
from sah.layer_config import PerHeadMasker, config_for_layer
from sah.per_head_native import native_add_mask
from tuning_support import random_recording

H = 6


def random_call(seed=0, h=H, hk=2, q=8, n=128, d=16, shared=False):
    g = torch.Generator().manual_seed(seed)
    ctx = AttentionContext(torch.randn(1, h, q, d, generator=g),
                           torch.randn(1, hk, n, d, generator=g) * 2,
                           torch.randn(1, hk, n, d, generator=g))
    ctx.shared = shared
    return ctx


def mask_of(config, ctx, layer):
    return ResearchAttention.create_from_config(config).compute_mask(ctx, layer_idx=layer)


# ---------------------------------------------------------------------- per layer
def test_each_layer_gets_the_mask_and_figures_of_its_own_single_config():
    base = [SinkMaskerConfig(2), LocalMaskerConfig(4), OracleTopKConfig(heavy_size=8)]
    cfg = ResearchAttentionConfig(base, layer_overrides={
        10: {2: {"heavy_size": 2}},
        12: {1: {"window_size": 16}, 2: {"heavy_size": 0.25}}})
    singles = {
        10: ResearchAttentionConfig([SinkMaskerConfig(2), LocalMaskerConfig(4), OracleTopKConfig(heavy_size=2)]),
        11: ResearchAttentionConfig([SinkMaskerConfig(2), LocalMaskerConfig(4), OracleTopKConfig(heavy_size=8)]),
        12: ResearchAttentionConfig([SinkMaskerConfig(2), LocalMaskerConfig(16), OracleTopKConfig(heavy_size=0.25)]),
    }
    rec = random_recording(num_layers=3, h=4, hk=2, q=6, n=64)
    attention = ResearchAttention.create_from_config(cfg)
    masks = []
    for index, layer in enumerate(rec.layer_ids):
        ctx = rec.context(index)
        mask = attention.compute_mask(ctx, layer_idx=layer).to_dense()
        assert torch.equal(mask, mask_of(singles[layer], rec.context(index), layer).to_dense())
        masks.append(mask)
        lr = rec.layers[index]
        out, _ = attention.custom_attention(None, lr.queries, lr.keys, lr.values, None, rec.scaling,
                                            layer_idx=layer, query_positions=rec.query_positions)
        ref, _ = ResearchAttention.create_from_config(singles[layer]).custom_attention(
            None, lr.queries, lr.keys, lr.values, None, rec.scaling, layer_idx=layer,
            query_positions=rec.query_positions)
        assert torch.equal(out, ref)
    assert not torch.equal(masks[0], masks[1]) and not torch.equal(masks[1], masks[2])
    whole = evaluate_config(cfg, rec)
    for lf in whole.layers:
        alone = evaluate_config(singles[lf.layer], rec, layers=[lf.layer]).layers[0]
        assert (lf.output_error, lf.density, lf.per_head_error) == (
            alone.output_error, alone.density, alone.per_head_error)
    # a call without a layer index, and layers not listed, run the chain as written
    assert torch.equal(attention.compute_mask(rec.context(1)).to_dense(), masks[1])
    assert config_for_layer(cfg, 12) == singles[12]


# ---------------------------------------------------------------------- per head
def sink_chain(v):
    return [SinkMaskerConfig(v), LocalMaskerConfig(4), OracleTopKConfig(heavy_size=8)]


def local_chain(v):
    return [SinkMaskerConfig(2), LocalMaskerConfig(v), OracleTopKConfig(heavy_size=8)]


def top_k_chain(v):
    return [SinkMaskerConfig(2), LocalMaskerConfig(4), OracleTopKConfig(heavy_size=v)]


def top_p_chain(v):
    return [SinkMaskerConfig(2), LocalMaskerConfig(4), OracleTopPMaskerConfig(top_p=v)]


def hash_chain(v):
    return [SinkMaskerConfig(2), LocalMaskerConfig(4),
            HashAttentionTopKMaskerConfig(heavy_size=v, hat_bits=16, hat_mlp_layers=1,
                                          hat_mlp_hidden_size=16, hat_init_seed=3)]


def quest_chain(v):
    return [SinkMaskerConfig(2), LocalMaskerConfig(4),
            QuestTopKMaskerConfig(heavy_size=v, page_size=4)]


def sampling_chain(v):
    return [SinkMaskerConfig(2), LocalMaskerConfig(4), RandomSamplingMaskerConfig(sampling_rate=v)]


CASES = [  # chain, masker index, field, per-head values (ints are counts, floats fractions)
    (sink_chain, 0, "sink_size", [0, 2, 5, 2, 1, 0.1], True),
    (local_chain, 1, "window_size", [1, 4, 16, 4, 0.25, 0], True),
    (top_k_chain, 2, "heavy_size", [0, 3, 8, 8, 0.2, 64], True),
    (top_p_chain, 2, "top_p", [0.0, 0.5, 0.9, 0.5, 1.0, 0.7], True),
    (hash_chain, 2, "heavy_size", [0, 3, 8, 8, 0.2, 64], True),
    (quest_chain, 2, "heavy_size", [0, 16, 32, 32, 64, 8], False),
    (sampling_chain, 2, "sampling_rate", [0.1, 0.2, 0.1, 0.5, 0.0, 0.3], False),
]


@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize("chain, index, field, values, has_native", CASES,
                         ids=[c[2] + "-" + c[0].__name__ for c in CASES])
def test_each_head_gets_the_rows_of_its_single_value_chain(chain, index, field, values,
                                                            has_native, native, shared):
    cfg = ResearchAttentionConfig(chain(values[1]), layer_overrides={3: {index: {field: values}}})
    attention = ResearchAttention.create_from_config(cfg)
    per_head = attention.maskers_for(3)[index]
    assert isinstance(per_head, PerHeadMasker)
    per_head.use_native = native
    mask = attention.compute_mask(random_call(shared=shared), layer_idx=3)
    dense = mask.to_dense()
    for j, value in enumerate(values):
        ref = mask_of(ResearchAttentionConfig(chain(value)), random_call(shared=shared), 3).to_dense()
        assert torch.equal(dense[:, j], ref[:, j]), (j, value)
    # the native path exists exactly where documented
    ctx = random_call(shared=shared)
    groups = per_head.head_groups(H)
    prev = mask_of(ResearchAttentionConfig(chain(values[1])[:index]), ctx, 3) if index else None
    if prev is not None:
        got = native_add_mask(per_head, ctx, groups, prev, {}, {"context": ctx, "layer_idx": 3})
        assert (got is not None) == has_native


def test_two_per_head_maskers_and_two_per_head_fields():
    ks, windows, pages = [0, 4, 8, 16, 4, 32], [2, 2, 8, 8, 16, 1], [2, 4, 4, 8, 2, 4]
    cfg = ResearchAttentionConfig(
        [SinkMaskerConfig(1), LocalMaskerConfig(4), QuestTopKMaskerConfig(heavy_size=8, page_size=4)],
        layer_overrides={0: {1: {"window_size": windows},
                             2: {"heavy_size": ks, "page_size": pages}}})
    dense = mask_of(cfg, random_call(seed=5), 0).to_dense()
    for j in range(H):
        single = ResearchAttentionConfig([SinkMaskerConfig(1), LocalMaskerConfig(windows[j]),
                                          QuestTopKMaskerConfig(heavy_size=ks[j], page_size=pages[j])])
        assert torch.equal(dense[:, j], mask_of(single, random_call(seed=5), 0).to_dense()[:, j])
        assert config_for_layer(cfg, 0, head=j) == single


def test_per_head_sampling_meta_is_combined_by_head():
    rates = [0.05, 0.2, 0.05, 0.5, 0.1, 0.3]

    def chain(rate):
        return [SinkMaskerConfig(2), LocalMaskerConfig(4),
                AdaptiveSamplingMaskerConfig(base_rate_sampling=rate, epsilon=0.2, delta=0.2)]
    cfg = ResearchAttentionConfig(chain(0.1), layer_overrides={2: {2: {"base_rate_sampling": rates}}})
    meta = {}
    ctx = random_call(seed=2)
    dense = ResearchAttention.create_from_config(cfg).compute_mask(ctx, meta, layer_idx=2).to_dense()
    for j, rate in enumerate(rates):
        ref_meta = {}
        ref = ResearchAttention.create_from_config(ResearchAttentionConfig(chain(rate))).compute_mask(
            random_call(seed=2), ref_meta, layer_idx=2).to_dense()
        assert torch.equal(dense[:, j], ref[:, j])
        assert torch.equal(meta["adaptive_sampling_budget"][:, j], ref_meta["adaptive_sampling_budget"][:, j])


def test_equal_configs_share_one_masker_across_layers_and_heads(tmp_path):
    from sah import save_hat_weights
    from sah.maskers.hash_attention import random_hat_weights

    weights = {layer: random_hat_weights(H, 2, 16, 16, 1, 16, layer) for layer in range(3)}
    save_hat_weights(weights, tmp_path / "hat.safetensors")
    chain = [SinkMaskerConfig(2), LocalMaskerConfig(4),
             HashAttentionTopKMaskerConfig(heavy_size=4, hat_bits=16, hat_mlp_layers=1,
                                           hat_mlp_hidden_size=16,
                                           hat_weight_file=str(tmp_path / "hat.safetensors"))]
    cfg = ResearchAttentionConfig(chain, layer_overrides={
        0: {2: {"heavy_size": 8}}, 1: {2: {"heavy_size": [8, 4, 8, 16, 16, 4]}},
        2: {2: {"heavy_size": 8}, 1: {"window_size": 8}}})
    attention = ResearchAttention.create_from_config(cfg)
    for layer in range(3):
        attention.compute_mask(random_call(seed=layer), layer_idx=layer)
    per_head = attention.maskers_for(1)[2]
    per_head.use_native = False
    attention.compute_mask(random_call(seed=1), layer_idx=1)
    assert attention.maskers_for(0)[2] is attention.maskers_for(2)[2] is per_head.masker_for((8,))
    assert per_head.masker_for((4,)) is attention.maskers[2]   # the chain's own value
    assert attention.maskers_for(2)[0] is attention.maskers[0]
    hash_maskers = {id(m) for m in attention._masker_cache.values()
                    if isinstance(m.config, HashAttentionTopKMaskerConfig)}
    assert len(hash_maskers) == 3   # heavy_size 4, 8 and 16: the weights file read 3 times, not 9


def test_per_head_list_of_the_wrong_length_is_refused_when_the_layer_runs():
    cfg = ResearchAttentionConfig(top_k_chain(8), layer_overrides={1: {2: {"heavy_size": [1, 2, 3, 4]}}})
    attention = ResearchAttention.create_from_config(cfg)
    with pytest.raises(ConfigError, match=r"layer_overrides\[1\]\[2\]\.heavy_size: 4 per-head values, "
                                          r"but the call has 6 query heads"):
        attention.compute_mask(random_call(), layer_idx=1)
    attention.compute_mask(random_call(), layer_idx=0)  # other layers run


# ---------------------------------------------------------------------- files and errors
def per_head_config():
    return ResearchAttentionConfig(top_k_chain(16), layer_overrides={
        0: {1: {"window_size": 0.1}, 2: {"heavy_size": 3}},
        7: {2: {"heavy_size": [0, 8, 16, 0.05, 64, 128]}}})


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_round_trip_through_files(tmp_path, suffix):
    cfg = per_head_config()
    path = cfg.to_file(tmp_path / f"chain{suffix}")
    back = ResearchAttentionConfig.from_file(path)
    assert back == cfg and back.layer_overrides[7][2]["heavy_size"][3] == 0.05
    assert isinstance(back.layer_overrides[0][2]["heavy_size"], int)
    assert ResearchAttentionConfig.from_dict(cfg.to_dict()) == cfg
    if suffix == ".json":
        assert json.loads(path.read_text())["layer_overrides"]["7"]["2"]["heavy_size"][1] == 8
    else:
        assert "heavy_size: [0, 8, 16, 0.05, 64, 128]" in path.read_text()
    # a config without overrides writes no layer_overrides key (files stay as they were)
    assert "layer_overrides" not in ResearchAttentionConfig(top_k_chain(16)).to_dict()


def test_relative_weight_files_in_overrides_resolve_against_the_config_folder(tmp_path):
    chain = hash_chain(8)
    cfg = ResearchAttentionConfig(chain, layer_overrides={
        2: {2: {"heavy_size": [1, 2, 3, 4, 5, 6], "hat_weight_file": "layer2.safetensors"}}})
    (tmp_path / "sub").mkdir()
    back = ResearchAttentionConfig.from_file(cfg.to_file(tmp_path / "sub" / "chain.yaml"))
    fields = back.layer_overrides[2][2]
    assert fields["hat_weight_file"] == str(tmp_path / "sub" / "layer2.safetensors")
    assert fields["heavy_size"] == [1, 2, 3, 4, 5, 6]


def test_hub_layout_refuses_overrides():
    with pytest.raises(ConfigError, match="prior hub's JSON layout .* cannot carry layer_overrides"):
        per_head_config().to_json(hub=True)
    assert ResearchAttentionConfig(top_k_chain(16)).to_hub_dict()["masker_configs"][2]["params"] == {
        "heavy_size": 16}


@pytest.mark.parametrize("overrides, message", [
    ({"x": {2: {"heavy_size": 1}}}, r"layer_overrides\['x'\]: layer id 'x' is not valid; use an int >= 0"),
    ({1.5: {2: {"heavy_size": 1}}}, r"layer id 1.5 is not valid"),
    ({1: {3: {"heavy_size": 1}}}, r"layer_overrides\[1\]\[3\]: masker index 3 is out of range; the chain has 3"),
    ({1: {2: {"window_size": 1}}}, r"layer_overrides\[1\]\[2\]\.window_size: OracleTopKConfig has no field 'window_size'"),
    ({1: {2: {"type": "X"}}}, r"OracleTopKConfig has no field 'type'"),
    ({1: {2: {"heavy_size": -3}}}, r"layer_overrides\[1\]\[2\]\.heavy_size: OracleTopKConfig\.heavy_size: got -3"),
    ({1: {2: {"heavy_size": [1, 1.5]}}}, r"layer_overrides\[1\]\[2\]\.heavy_size\[1\]: .*got 1.5"),
    ({1: {2: {"heavy_size": []}}}, r"heavy_size: an empty list"),
    ({1: {2: {"heavy_size": [[1]]}}}, r"heavy_size\[0\]: got \[1\]"),
    ({1: {2: "big"}}, r"layer_overrides\[1\]\[2\]: expected a non-empty mapping"),
    ({1: []}, r"layer_overrides\[1\]: expected a non-empty mapping"),
    ([1, 2], r"layer_overrides: expected a mapping"),
])
def test_bad_overrides_name_the_file_and_path(tmp_path, overrides, message):
    path = tmp_path / "bad.json"
    data = ResearchAttentionConfig(top_k_chain(16)).to_dict()
    data["layer_overrides"] = {str(k) if not isinstance(k, (float, str)) else k: v
                               for k, v in overrides.items()} if isinstance(overrides, dict) else overrides
    if isinstance(overrides, dict) and any(isinstance(k, float) for k in overrides):
        with pytest.raises(ConfigError, match=message):
            ResearchAttentionConfig.from_dict({**data, "layer_overrides": overrides}, "bad.json")
        return
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=message) as info:
        ResearchAttentionConfig.from_file(path)
    assert str(info.value).startswith(str(path))


def test_lists_of_one_override_must_have_one_length_and_fields_are_checked_together():
    with pytest.raises(ConfigError, match=r"per-head lists differ in length"):
        ResearchAttentionConfig(quest_chain(8), layer_overrides={
            0: {2: {"heavy_size": [1, 2], "page_size": [4, 4, 4]}}})
    with pytest.raises(ConfigError, match=r"hat_weights holds a mapping"):
        ResearchAttentionConfig(hash_chain(8), layer_overrides={0: {2: {"hat_weights": None}}})
