import dataclasses
import json
import subprocess
import sys

import pytest
import yaml

import sah
from sah import (ConfigError, LocalMaskerConfig, ResearchAttentionConfig, SinkMaskerConfig,
                 StridedPatternConfig)
from sah.maskers.base import MaskerConfig, MaskerRegistry


def example_chain():
    return ResearchAttentionConfig([
        SinkMaskerConfig(sink_size=16),
        LocalMaskerConfig(window_size=0.125, search_space={"window_size": [0.1, 0.2]}),
        StridedPatternConfig(window_size=8, stride=4),
    ])


def test_dict_yaml_json_hub_and_file_roundtrips(tmp_path):
    cfg = example_chain()
    assert ResearchAttentionConfig.from_dict(cfg.to_dict()) == cfg
    assert ResearchAttentionConfig.from_yaml(cfg.to_yaml()) == cfg
    assert ResearchAttentionConfig.from_json(cfg.to_json()) == cfg
    hub = cfg.to_hub_dict()
    assert hub["type"] == "ResearchAttentionConfig"
    assert hub["masker_configs"][0] == {"type": "SinkMaskerConfig", "params": {"sink_size": 16}}
    assert ResearchAttentionConfig.from_json(json.dumps(hub)) == cfg
    for name in ("c.yaml", "c.json"):
        path = cfg.to_file(tmp_path / name)
        assert ResearchAttentionConfig.from_file(path) == cfg
    cfg.to_file(tmp_path / "h.json", hub=True)
    assert json.loads((tmp_path / "h.json").read_text())["masker_configs"][1]["type"] == "LocalMaskerConfig"
    assert ResearchAttentionConfig.from_file(tmp_path / "h.json") == cfg
    assert isinstance(ResearchAttentionConfig.from_dict(cfg.to_dict()).masker_configs[1].window_size, float)


def test_every_registered_config_roundtrips_with_defaults():
    for name in MaskerRegistry.config_names():
        klass = MaskerRegistry.config_class(name)
        fields = dataclasses.fields(klass)
        if any(f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
               for f in fields):
            continue  # needs required values: covered by the masker's own tests
        cfg = klass()
        assert MaskerConfig.from_dict(cfg.to_dict()) == cfg
        assert yaml.safe_load(yaml.safe_dump(cfg.to_dict())) == cfg.to_dict()


@pytest.mark.parametrize("factory,message", [
    (lambda: SinkMaskerConfig(sink_size=-1), r"SinkMaskerConfig.sink_size: got -1; a count of keys must be >= 0"),
    (lambda: SinkMaskerConfig(sink_size=1.5), r"SinkMaskerConfig.sink_size: got 1.5; a fraction of the keys must be in \[0, 1\]"),
    (lambda: SinkMaskerConfig(sink_size=True), r"SinkMaskerConfig.sink_size: got True"),
    (lambda: SinkMaskerConfig(sink_size="8"), r"SinkMaskerConfig.sink_size: got '8'"),
    (lambda: LocalMaskerConfig(window_size=float("nan")), r"LocalMaskerConfig.window_size: got nan"),
    (lambda: StridedPatternConfig(window_size=0), r"StridedPatternConfig.window_size: got 0; must be an int in \[1, inf\]"),
    (lambda: StridedPatternConfig(stride=2.5), r"StridedPatternConfig.stride: got 2.5"),
])
def test_invalid_fields_are_named(factory, message):
    with pytest.raises(ConfigError, match=message):
        factory()


def test_from_dict_errors_name_the_path():
    with pytest.raises(ConfigError, match=r"study.yaml.masker_configs\[1\]: unknown masker type 'NoSuchConfig'"):
        ResearchAttentionConfig.from_dict(
            {"masker_configs": [{"type": "SinkMaskerConfig"}, {"type": "NoSuchConfig"}]}, "study.yaml")
    with pytest.raises(ConfigError, match=r"masker_configs\[0\]: SinkMaskerConfig has no field 'size'"):
        ResearchAttentionConfig.from_dict({"masker_configs": [{"type": "SinkMaskerConfig", "size": 3}]})
    with pytest.raises(ConfigError, match=r"masker_configs\[0\]: missing 'type'"):
        ResearchAttentionConfig.from_dict({"masker_configs": [{"sink_size": 3}]})
    with pytest.raises(ConfigError, match=r"masker_configs\[0\]: SinkMaskerConfig.sink_size: got -3"):
        ResearchAttentionConfig.from_dict({"masker_configs": [{"type": "SinkMaskerConfig", "sink_size": -3}]})
    with pytest.raises(ConfigError, match="not valid YAML"):
        ResearchAttentionConfig.from_yaml("masker_configs: [")
    with pytest.raises(ConfigError, match="no such config file"):
        ResearchAttentionConfig.from_file("/nonexistent/x.yaml")


def test_seed_style_custom_masker_registers_and_runs():
    import torch
    from dataclasses import dataclass, field
    from typing import Any, Dict
    from sah import Mask, ResearchAttention
    from sah.maskers.base import ResearchMasker

    @dataclass
    class EveryOtherKeyConfig(MaskerConfig):
        offset: int
        another_param: int = 10
        search_space: Dict[str, Any] = field(default_factory=dict)

    @MaskerRegistry.register(EveryOtherKeyConfig)
    class EveryOtherKey(ResearchMasker):
        def add_mask(self, keys, queries, values, attention_mask, scaling, dropout,
                     sparse_meta_data, previous_mask, **kwargs):
            ctx = self.context(keys, queries, values, attention_mask, scaling, kwargs)
            picks = (ctx.key_index % 2 == self.config.offset).view(1, 1, 1, -1) & ctx.allowed
            return previous_mask.merge_mask(Mask.from_bool(picks, ctx.mask_shape), inplace=False)

    cfg = ResearchAttentionConfig([EveryOtherKeyConfig(offset=1)])
    attn = ResearchAttention.create_from_config(cfg)
    q, k, v = torch.randn(1, 2, 1, 4), torch.randn(1, 2, 8, 4), torch.randn(1, 2, 8, 4)
    out, weights = attn.custom_attention(None, q, k, v, None, 0.5, 0.0, {}, layer_idx=0,
                                         return_weights=True)
    assert out.shape == (1, 2, 1, 4)
    assert (weights[..., ::2] == 0).all() and (weights[..., 1::2] > 0).all()
    assert ResearchAttentionConfig.from_dict(cfg.to_dict()) == cfg


def test_import_sah_does_not_import_ray():
    code = "import sys, sah; assert 'ray' not in sys.modules, 'ray imported'; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert sah.__version__
