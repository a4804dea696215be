"""sah.speed: block density and bytes per decoded token against plain-loop references,
how each built-in masker is counted, the interleaved decode timing (decoder-style kept
state), the `speed:` study section's parser, and `sah speed` (figures, JSON, refusals)."""

import json

import pytest
import torch

from sah.attention import ResearchAttention, ResearchAttentionConfig
from sah.cli import main
from sah.infra.checks import ConfigError
from sah.maskers.base import MaskerRegistry
from sah.maskers.magic_pig import KEPT_CODES_KEY
from sah.maskers.quest import KEPT_BOUNDS_KEY
from sah.recording import make_synthetic_recording
from sah.speed import (DecodeShape, block_density, chain_call, cpu_model, decode_tensors,
                       key_reading, mask_traffic, time_chain)
from sah.study.parse import parse_study

SINK_LOCAL = [{"type": "SinkMaskerConfig", "sink_size": 8},
              {"type": "LocalMaskerConfig", "window_size": 16}]


# ---------------------------------------------------------------------- references
def block_density_ref(active, allowed, block, query_block=1):
    b, h, q, n = active.shape
    allowed = allowed.expand(active.shape)
    shares = []
    for bi in range(b):
        for hi in range(h):
            for q0 in range(0, q, query_block):
                rows = range(q0, min(q, q0 + query_block))
                allowed_blocks = active_blocks = 0
                for k0 in range(0, n, block):
                    cols = range(k0, min(n, k0 + block))
                    if any(bool(allowed[bi, hi, r, c]) for r in rows for c in cols):
                        allowed_blocks += 1
                        if any(bool(active[bi, hi, r, c] and allowed[bi, hi, r, c])
                               for r in rows for c in cols):
                            active_blocks += 1
                if allowed_blocks:
                    shares.append(active_blocks / allowed_blocks)
    return sum(shares) / len(shares)


def bytes_ratio_ref(active, allowed, kv_heads, every_key, aux_bits, d, dv, kv_bits=16):
    """Per (batch, KV head, query): union of the group's active keys; plain loops."""
    b, h, q, n = active.shape
    g = h // kv_heads
    allowed = allowed.expand(active.shape)
    read = dense = 0.0
    for bi in range(b):
        for kv in range(kv_heads):
            for qi in range(q):
                allowed_keys = [j for j in range(n) if allowed[bi, kv * g, qi, j]]
                union = {j for hi in range(kv * g, kv * g + g) for j in allowed_keys
                         if active[bi, hi, qi, j]}
                keys = len(allowed_keys) if every_key else len(union)
                read += (keys * d + len(union) * dv) * kv_bits / 8 + len(allowed_keys) * aux_bits / 8
                dense += len(allowed_keys) * (d + dv) * kv_bits / 8
    return read / dense


@pytest.fixture(scope="module")
def rec():
    return make_synthetic_recording(num_layers=1, num_heads=4, num_kv_heads=2, head_dim=16,
                                    num_keys=300, num_queries=5, seed=4, dtype=torch.float32)


# ---------------------------------------------------------------------- block density
@pytest.mark.parametrize("block,query_block", [(64, 1), (128, 1), (16, 3), (7, 2)])
def test_block_density_matches_a_plain_loop(block, query_block):
    g = torch.Generator().manual_seed(block)
    b, h, q, n = 2, 3, 5, 150  # n not a multiple of the block: a short last block
    active = torch.rand(b, h, q, n, generator=g) < 0.03
    positions = torch.tensor([60, 61, 100, 140, 149])
    allowed = (torch.arange(n).view(1, 1, 1, n) <= positions.view(1, 1, q, 1))
    got = block_density(active, allowed, block, query_block)
    assert got == pytest.approx(block_density_ref(active, allowed, block, query_block), abs=1e-12)


def test_block_density_extremes():
    allowed = torch.ones(1, 1, 1, 256, dtype=torch.bool)
    one_key = torch.zeros(1, 1, 1, 256, dtype=torch.bool)
    one_key[..., 5] = True
    assert block_density(one_key, allowed, 64) == pytest.approx(0.25)  # 1 of 4 blocks
    assert block_density(allowed.clone(), allowed, 128) == 1.0
    # an active position outside the allowed ones counts for nothing
    causal = torch.arange(256).view(1, 1, 1, -1) <= 63
    late = torch.zeros_like(one_key)
    late[..., 200] = True
    assert block_density(late, causal, 64) == 0.0


# ---------------------------------------------------------------------- bytes ratio
@pytest.mark.parametrize("chain,every_key,aux", [
    (SINK_LOCAL, False, 0.0),
    (SINK_LOCAL + [{"type": "OracleTopKConfig", "heavy_size": 0.05}], True, 0.0),
    (SINK_LOCAL + [{"type": "RandomSamplingMaskerConfig", "sampling_rate": 0.05}], False, 0.0),
    ([{"type": "QuestTopKMaskerConfig", "heavy_size": 0.1, "page_size": 16}], False, 2 * 16 * 16 / 16),
    (SINK_LOCAL + [{"type": "MagicPigConfig", "lsh_l": 6, "lsh_k": 4}], False, 24.0),
])
def test_bytes_ratio_matches_a_plain_loop(rec, chain, every_key, aux):
    attention = ResearchAttention.create_from_config(ResearchAttentionConfig.from_dict(chain))
    ctx = rec.context(0)
    mask = attention.compute_mask(ctx, layer_idx=0)
    active = mask.active() & ctx.allowed
    got = mask_traffic(attention, ctx, 0, mask)
    want = bytes_ratio_ref(active, ctx.allowed, 2, every_key, aux, 16, 16)
    assert got["bytes_ratio"] == pytest.approx(want, rel=1e-9)
    assert got["block_density_64"] == pytest.approx(block_density_ref(active, ctx.allowed, 64))
    assert 0 < got["bytes_ratio"] <= 1.0 + aux / 16 / 32


def test_dense_chain_reads_everything_once(rec):
    for chain in ([], [{"type": "CausalMaskerConfig"}]):
        attention = ResearchAttention.create_from_config(ResearchAttentionConfig.from_dict(chain))
        ctx = rec.context(0)
        got = mask_traffic(attention, ctx, 0, attention.compute_mask(ctx, layer_idx=0))
        assert got == {"block_density_64": 1.0, "block_density_128": 1.0, "bytes_ratio": 1.0}


def test_adaptive_sampling_adds_its_base_sample_to_the_keys_read(rec):
    base = SINK_LOCAL + [{"type": "OracleTopKConfig", "heavy_size": 4}]
    adaptive = {"type": "AdaptiveSamplingMaskerConfig", "base_rate_sampling": 0.1,
                "epsilon": 0.25, "delta": 0.25, "init_offset": 8, "local_offset": 16}
    # top-k reads every key already: the base sample adds nothing to the keys
    ctx = rec.context(0)
    attention = ResearchAttention.create_from_config(ResearchAttentionConfig.from_dict(base + [adaptive]))
    mask = attention.compute_mask(ctx, layer_idx=0)
    active = mask.active() & ctx.allowed
    assert mask_traffic(attention, ctx, 0, mask)["bytes_ratio"] == pytest.approx(
        bytes_ratio_ref(active, ctx.allowed, 2, True, 0.0, 16, 16))
    # without top-k: the keys read are the active ones plus each query head's base sample
    attention = ResearchAttention.create_from_config(ResearchAttentionConfig.from_dict(SINK_LOCAL + [adaptive]))
    mask = attention.compute_mask(ctx, layer_idx=0)
    active = mask.active() & ctx.allowed
    values_only = bytes_ratio_ref(active, ctx.allowed, 2, False, 0.0, 16, 16)
    got = mask_traffic(attention, ctx, 0, mask)["bytes_ratio"]
    window = ctx.allowed.expand(ctx.mask_shape).sum(-1) - 8 - 16  # (1, h, q)
    extra_keys = (window.double() * 0.1).floor().clamp_min(2).sum()
    dense_keys = ctx.allowed[0, 0].sum() * 2  # allowed keys over the KV heads
    assert got == pytest.approx(values_only + float(extra_keys) / float(2 * dense_keys), rel=1e-6)


def test_every_built_in_masker_is_counted_by_how_it_selects_keys():
    built_in = [cls for cls in MaskerRegistry._maskers.values()
                if cls.__module__.startswith("sah.maskers.")]
    assert len(built_in) >= 10  # the pattern configs share one masker class

    class Probe:
        def __init__(self, cls):
            self.masker_class = cls

    unknown = [cls.__name__ for cls in built_in if key_reading(Probe(cls)) is None]
    assert unknown == []


# ---------------------------------------------------------------------- timing
def test_time_chain_keeps_codes_and_bounds_between_calls():
    shape = DecodeShape(keys=512, heads=4, kv_heads=2, head_dim=16)
    tensors = decode_tensors(shape)
    assert tensors.queries.shape == (1, 4, 1, 16) and tensors.keys.shape == (1, 2, 512, 16)
    for chain, key in (([{"type": "MagicPigConfig", "lsh_l": 4, "lsh_k": 4}], KEPT_CODES_KEY),
                       ([{"type": "QuestTopKMaskerConfig", "heavy_size": 0.1}], KEPT_BOUNDS_KEY)):
        attention = ResearchAttention.create_from_config(ResearchAttentionConfig.from_dict(chain))
        call = chain_call(attention, tensors)
        call()
        assert key in call.kept
        kept = call.kept[key]
        call()
        assert call.kept[key] is kept  # the second call reuses the first call's state
        timing = time_chain(attention, tensors, repeats=3)
        assert len(timing.chain_samples) == len(timing.dense_samples) == 3
        assert timing.ms > 0 and timing.dense_ms > 0
        assert timing.ratio == pytest.approx(timing.ms / timing.dense_ms)


def test_decode_shape_refusals_name_the_field():
    with pytest.raises(ValueError, match=r"--keys 0: expected an int >= 1"):
        DecodeShape(0, 4, 2, 16).check({"keys": "--keys"})
    with pytest.raises(ValueError, match=r"heads 3 is not a multiple of kv_heads 2"):
        DecodeShape(64, 3, 2, 16).check()
    with pytest.raises(ValueError, match=r"queries 9 exceeds keys 8"):
        DecodeShape(8, 4, 2, 16, queries=9).check()


# ---------------------------------------------------------------------- the study section
def _study(speed):
    return {"name": "s", "recordings": ["docs"], "density_targets": [0.1],
            "speed": speed, "chains": [{"name": "c", "maskers": SINK_LOCAL}]}


def test_speed_section_defaults_and_refusals():
    study = parse_study(_study({}), "x.yaml")
    assert study.speed.to_dict() == {"long_keys": 32768, "repeats": 3,
                                     "picks": ["best", "density_0.1"], "device": "cpu",
                                     "dtype": "float32", "threads": 1}
    assert parse_study(_study(None)).speed is None
    assert "speed" not in parse_study(_study(None)).to_dict()
    for bad, message in (({"long_keys": 0}, "x.yaml: speed.long_keys: got 0"),
                         ({"repeats": True}, "x.yaml: speed.repeats: got True"),
                         ({"picks": ["density_0.2"]}, "x.yaml: speed.picks[0]: got 'density_0.2'"),
                         ({"dtype": "float16"}, "x.yaml: speed.dtype: got 'float16'"),
                         ({"device": "tpu"}, "x.yaml: speed.device: got 'tpu'"),
                         ({"threads": 0}, "x.yaml: speed.threads: got 0"),
                         ({"keys": 5}, "x.yaml: speed.keys: unknown key"),
                         ("yes", "x.yaml: speed: got 'yes'")):
        with pytest.raises(ConfigError) as err:
            parse_study(_study(bad), "x.yaml")
        assert str(err.value).startswith(message) and "\n" not in str(err.value)


# ---------------------------------------------------------------------- sah speed
@pytest.fixture()
def config_file(tmp_path):
    path = tmp_path / "chain.yaml"
    ResearchAttentionConfig.from_dict(SINK_LOCAL).to_file(path)
    return path


def test_sah_speed_prints_and_writes_the_figures(config_file, tmp_path, capsys):
    out = tmp_path / "speed.json"
    assert main(["speed", "--config", str(config_file), "--keys", "1024", "--heads", "4",
                 "--kv-heads", "2", "--head-dim", "16", "--repeats", "3", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    doc = json.loads(out.read_text())
    assert doc["shape"] == {"keys": 1024, "heads": 4, "kv_heads": 2, "head_dim": 16, "queries": 1}
    assert doc["machine"]["cpu"] == cpu_model() and doc["machine"]["gpu"] is None
    assert doc["ratio"] == pytest.approx(doc["ms"] / doc["dense_ms"])
    assert len(doc["chain_samples_ms"]) == 3 and min(doc["dense_samples_ms"]) > 0
    assert f"ratio {doc['ratio']:.3f}x" in printed and cpu_model() in printed


def test_sah_speed_takes_the_shape_of_a_model(config_file, tmp_path, capsys):
    out = tmp_path / "m.json"
    assert main(["speed", "--config", str(config_file), "--model", "default", "--keys", "256",
                 "--repeats", "1", "--queries", "2", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["shape"] == {"keys": 256, "heads": 9, "kv_heads": 3,
                                                    "head_dim": 64, "queries": 2}
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(
        {"num_attention_heads": 8, "num_key_value_heads": 2, "hidden_size": 256}))
    assert main(["speed", "--config", str(config_file), "--model", str(folder), "--keys", "128",
                 "--repeats", "1", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["shape"]["head_dim"] == 32


@pytest.mark.parametrize("flags,message", [
    (["--keys", "0", "--heads", "4", "--kv-heads", "2", "--head-dim", "16"], "--keys 0: expected an int >= 1"),
    (["--heads", "3", "--kv-heads", "2", "--head-dim", "16"], "--heads 3 is not a multiple of --kv-heads 2"),
    (["--heads", "4", "--kv-heads", "2", "--head-dim", "16", "--dtype", "float16"], "--dtype float16: unknown dtype"),
    (["--heads", "4", "--kv-heads", "2"], "--head-dim missing"),
    (["--model", "default", "--heads", "4"], "--model default sets the heads"),
    (["--model", "/nonexistent/model"], "--model /nonexistent/model: no config.json"),
])
def test_sah_speed_refuses_bad_input_in_one_line(config_file, tmp_path, capsys, flags, message):
    out = tmp_path / "never.json"
    assert main(["speed", "--config", str(config_file), *flags, "--json", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sah speed: error: ") and message in err and "\n" not in err
    assert not out.exists()


def test_sah_speed_refuses_a_missing_config_and_cuda_without_a_gpu(tmp_path, config_file, capsys):
    out = tmp_path / "never.json"
    shape = ["--heads", "4", "--kv-heads", "2", "--head-dim", "16", "--json", str(out)]
    assert main(["speed", "--config", str(tmp_path / "nope.yaml"), *shape]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"sah speed: error: --config {tmp_path / 'nope.yaml'}: no such file")
    assert "\n" not in err
    if not torch.cuda.is_available():
        assert main(["speed", "--config", str(config_file), "--device", "cuda", *shape]) == 2
        err = capsys.readouterr().err.strip()
        assert "--device cuda: torch sees no CUDA GPU" in err and "\n" not in err
    assert not out.exists()
