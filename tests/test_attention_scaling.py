"""``custom_attention`` refuses a softmax scale that is not a finite number > 0 (NaN gives
all-NaN output, a negative one inverts the softmax, 0 gives uniform weights); a valid scale
gives dense attention's output when the chain keeps every key, and NaN inside a query
propagates to that query's output as it does in dense attention (see docs/safety.md)."""

import math

import pytest
import torch

from sah.attention import ResearchAttention, ResearchAttentionConfig
from sah.maskers.local import LocalMaskerConfig
from sah.maskers.sink import SinkMaskerConfig


def attention():
    return ResearchAttention.create_from_config(ResearchAttentionConfig(
        [SinkMaskerConfig(sink_size=4), LocalMaskerConfig(window_size=32)]))


def qkv(seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(1, 4, 3, 8, generator=g), torch.randn(1, 2, 16, 8, generator=g),
            torch.randn(1, 2, 16, 8, generator=g))


@pytest.mark.parametrize("scaling", [math.nan, -1.0, 0.0, math.inf, -math.inf, True, "0.5"])
def test_a_scaling_that_is_not_finite_and_positive_is_refused(scaling):
    q, k, v = qkv()
    with pytest.raises(ValueError, match=r"scaling: got .*expected a finite number > 0"):
        attention().custom_attention(None, q, k, v, None, scaling, layer_idx=0)


def test_a_valid_scaling_matches_dense_attention_and_nan_queries_propagate_like_it():
    q, k, v = qkv()
    q[0, 1, 2, 3] = math.nan
    out, _ = attention().custom_attention(None, q, k, v, None, 0.3, layer_idx=0)
    pos = torch.arange(13, 16)
    allowed = torch.arange(16).view(1, -1) <= pos.view(-1, 1)
    kk, vv = k.repeat_interleave(2, dim=1), v.repeat_interleave(2, dim=1)
    logits = (q @ kk.transpose(-1, -2) * 0.3).masked_fill(~allowed, -math.inf)
    dense = torch.softmax(logits, dim=-1) @ vv
    assert torch.equal(torch.isnan(out), torch.isnan(dense))
    assert torch.isnan(out[0, 1, 2]).all() and not torch.isnan(out[0, 1, :2]).any()
    finite = ~torch.isnan(dense)
    assert torch.allclose(out[finite], dense[finite], atol=1e-5)
