"""What ``custom_attention`` accepts and refuses: bad calls are refused with the reason,
values may have their own head dim, and non-contiguous inputs (as a model passes them) give
the same masks and outputs for every masker as contiguous copies."""

import pytest
import torch

from helpers import call, chain, estimate_ref, random_qkv
from sah import AttentionContext, OracleTopKConfig, SinkMaskerConfig
from sah.estimator import evaluate_mask
from sah.maskers.base import MaskerRegistry


def test_custom_attention_refuses_bad_calls():
    """More queries than keys (in custom_attention and evaluate), zero keys, negative or
    float query positions and integer inputs are refused with the reason (never zeros, an
    error of 0.0, truncated positions or an int64 output); python int positions are fine."""
    attention = chain(SinkMaskerConfig(2))
    q, k, v = random_qkv(b=1, h=4, hk=2, q=6, n=4, d=8)
    with pytest.raises(ValueError, match=r"more queries \(6\) than keys \(4\)"):
        call(attention, q, k, v)
    with pytest.raises(ValueError, match=r"more queries \(6\) than keys \(4\)"):
        attention.evaluate(AttentionContext(q, k, v))
    q, k, v = random_qkv(b=1, h=4, hk=2, q=2, n=6, d=8)
    with pytest.raises(ValueError, match="keys: shape .* zero-size"):
        call(attention, q, k[:, :, :0], v[:, :, :0])
    with pytest.raises(ValueError, match="query position -1 is negative"):
        call(attention, q, k, v, query_positions=torch.tensor([-1, 5]))
    with pytest.raises(ValueError, match=r"query_positions: got dtype torch.float32.*nothing is rounded"):
        call(attention, q, k, v, query_positions=torch.tensor([3.7, 5.0]))
    with pytest.raises(ValueError, match="queries: dtype torch.int64 is not a floating-point type"):
        call(attention, q.long(), k.long(), v.long())
    with pytest.raises(ValueError, match="values: dtype torch.int64"):
        call(attention, q, k, v.long())
    out, weights = call(attention, q, k, v, query_positions=[4, 5])  # python ints are fine
    assert out.dtype == torch.float32 and weights is None


@pytest.mark.parametrize("threshold", [0.0, 1.0])
def test_values_may_have_their_own_head_dim(monkeypatch, threshold):
    """Values whose head dim differs from the keys' are supported (output (b, h, q, dv)) on
    the dense and the gathered path, against a float64 reference."""
    import sah.estimator as est
    monkeypatch.setattr(est, "SPARSE_PATH_MAX_DENSITY", threshold)
    monkeypatch.setattr(est, "SPARSE_PATH_MAX_DENSITY_WITH_LOGITS", threshold)
    q, k, _ = random_qkv(b=2, h=4, hk=2, q=3, n=20, d=8, seed=3)
    v = torch.randn(2, 2, 20, 5, generator=torch.Generator().manual_seed(4))
    pos = torch.tensor([9, 14, 19])
    attention = chain(SinkMaskerConfig(3), OracleTopKConfig(4))
    out, _ = call(attention, q, k, v, query_positions=pos)
    assert out.shape == (2, 4, 3, 5)
    ctx = AttentionContext(q, k, v, query_positions=pos)
    mask = attention.compute_mask(ctx)
    assert torch.allclose(out.double(), estimate_ref(q, k, v, pos, mask.to_dense()), atol=1e-5)
    dense = estimate_ref(q, k, v, pos, torch.ones(ctx.mask_shape))
    assert torch.allclose(ctx.dense_output.double(), dense, atol=1e-5)
    assert evaluate_mask(ctx, mask).output_error > 0


def every_masker_config():
    """One config of every masker sah registers (small sizes, random HashAttention weights);
    maskers that tests register (tuning_support) are left out."""
    configs = []
    for name in MaskerRegistry.config_names():
        cls = MaskerRegistry.config_class(name)
        if not cls.__module__.startswith("sah."):
            continue
        if name in ("TopKMaskerConfig", "TopPMaskerConfig", "PatternMaskerConfig"):
            continue  # bases without a masker of their own
        if name == "HashAttentionTopKMaskerConfig":
            configs.append(cls(heavy_size=5, hat_bits=8, hat_mlp_layers=2, hat_mlp_hidden_size=8))
        elif name == "StridedPatternConfig":
            configs.append(cls(window_size=4, stride=3))
        elif name in ("FixedPatternConfig", "SlidingWindowPatternConfig"):
            configs.append(cls(window_size=4))
        elif name == "DilatedSlidingWindowPatternConfig":
            configs.append(cls(window_size=4, dilation=2))
        elif name in ("SinkMaskerConfig",):
            configs.append(cls(sink_size=2))
        elif name == "LocalMaskerConfig":
            configs.append(cls(window_size=3))
        elif name == "AdaptiveSamplingMaskerConfig":
            configs.append(cls(base_rate_sampling=0.1, epsilon=0.3, delta=0.3, init_offset=2,
                               local_offset=2))
        elif name in ("OracleTopKConfig", "QuestTopKMaskerConfig"):
            configs.append(cls(heavy_size=6) if name == "OracleTopKConfig" else cls(heavy_size=6, page_size=4))
        else:
            configs.append(cls())
    return configs


def non_contiguous(t, how):
    if how == "transposed":  # the layout a model's .view(...).transpose(1, 2) gives
        return t.transpose(1, 2).contiguous().transpose(1, 2)
    if how == "cache_slice":  # the first n keys of a longer preallocated KV cache
        cache = torch.full((t.shape[0], t.shape[1], t.shape[2] + 9, t.shape[3]), 99.0)
        cache[:, :, :t.shape[2]] = t
        return cache[:, :, :t.shape[2]]
    # a strided slice: every other channel of a wider tensor
    wide = torch.stack([t, torch.full_like(t, 99.0)], dim=-1).flatten(-2)
    return wide[..., ::2]


@pytest.mark.parametrize("how", ["transposed", "strided", "cache_slice"])
@pytest.mark.parametrize("config", every_masker_config(), ids=lambda c: type(c).__name__)
def test_every_masker_accepts_non_contiguous_inputs(config, how):
    """A model passes non-contiguous queries, keys and values (transposed views, a slice of
    a longer cache, strided channels); every masker, in a chain after a sink, gives the same
    mask and output as on contiguous copies."""
    q, k, v = random_qkv(b=1, h=4, hk=2, q=3, n=40, d=8, seed=12)
    pos = torch.tensor([20, 30, 39])
    configs = [SinkMaskerConfig(2), config]
    if MaskerRegistry.get_masker_class(type(config)).is_sampling:
        configs.insert(1, OracleTopKConfig(3))
    attention = chain(*configs)
    views = [non_contiguous(t, how) if how != "cache_slice" or t is not q else
             non_contiguous(t, "transposed") for t in (q, k, v)]
    assert not any(t.is_contiguous() for t in views)
    assert all(torch.equal(a, b) for a, b in zip(views, (q, k, v)))
    out_views, _ = call(attention, *views, query_positions=pos)
    out_plain, _ = call(attention, q, k, v, query_positions=pos)
    assert torch.allclose(out_views, out_plain, atol=1e-6)
    mask_views = attention.compute_mask(AttentionContext(*views, query_positions=pos), layer_idx=0)
    mask_plain = attention.compute_mask(AttentionContext(q, k, v, query_positions=pos), layer_idx=0)
    # same picks; weights (sampling probabilities) equal up to float32 reduction order
    assert torch.equal(mask_views.active(), mask_plain.active())
    assert torch.allclose(mask_views.to_dense(), mask_plain.to_dense(), rtol=1e-5, atol=0)
