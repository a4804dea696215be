import pytest
import torch

from helpers import random_qkv
from sah import (AttentionContext, CausalMaskerConfig, DilatedSlidingWindowPatternConfig,
                 FixedPatternConfig, LocalMaskerConfig, Mask, NormalPatternConfig,
                 ResearchAttention, ResearchAttentionConfig, SinkMaskerConfig,
                 SlidingWindowPatternConfig, StridedPatternConfig)
from sah.maskers.base import ResearchMasker
from sah.patterns import PATTERN_NAMES, and_masks, or_masks, pattern_mask_mod, sparsity, square_mask


def pattern_ref(name, size, w, s, dil):
    """Component labels with loops, straight from the definitions."""
    out = [[0] * size for _ in range(size)]
    for i in range(size):
        for j in range(size):
            diag = j == i
            local = strided = False
            if name == "normal":
                local = j < i
            elif name == "strided":
                local = i - w < j < i
                strided = j <= i - w and (i - w - j) % s == 0
            elif name == "fixed":
                local = j < i and j // w == i // w
                strided = any(j == (c + 1) * w - 1 for c in range(i // w))
            elif name == "sliding_window":
                local = abs(i - j) <= w // 2 and j != i
            else:
                local = j != i and any(j == i + k * dil for k in range(-(w // 2), w // 2 + 1))
            out[i][j] = 1 if diag else 2 if local else 3 if strided else 0
    return torch.tensor(out, dtype=torch.int8)


@pytest.mark.parametrize("name", PATTERN_NAMES)
@pytest.mark.parametrize("w,s,dil", [(8, 5, 3), (4, 4, 2), (7, 3, 1)])
def test_patterns_match_definitions(name, w, s, dil):
    assert torch.equal(square_mask(name, 45, w, s, dil), pattern_ref(name, 45, w, s, dil))


def test_seed_sparsities_at_1024():
    expected = {"normal": 49.9512, "strided": 95.4086, "fixed": 96.8750,
                "sliding_window": 96.8033, "dilated_sliding_window": 96.8292}
    for name, value in expected.items():
        assert round(sparsity(square_mask(name, 1024, 32, 32, 2)) * 100, 4) == value


def test_mask_mods_compose():
    i = torch.arange(20).view(-1, 1)
    j = torch.arange(20).view(1, -1)
    strided = pattern_mask_mod("strided", 4, 4)
    local = pattern_mask_mod("sliding_window", 6)
    assert torch.equal(and_masks(strided, local)(i, j), strided(i, j) & local(i, j))
    assert torch.equal(or_masks(strided, local)(i, j), strided(i, j) | local(i, j))


def test_bad_pattern_parameters():
    with pytest.raises(ValueError, match="window_size: got 0"):
        square_mask("strided", 16, 0, 4)
    with pytest.raises(ValueError, match="stride: got 0"):
        StridedPatternConfig(window_size=4, stride=0)
    with pytest.raises(ValueError, match="size: got 0"):
        square_mask("normal", 0)
    with pytest.raises(ValueError, match="pattern: got 'diagonal'"):
        square_mask("diagonal", 16)


def chain_mask(configs, queries, keys, values, positions, previous=None):
    ctx = AttentionContext(queries, keys, values, query_positions=positions)
    return ResearchAttention.create_from_config(ResearchAttentionConfig(configs)).compute_mask(ctx), ctx


def test_sink_local_match_loops_and_keep_earlier_picks():
    queries, keys, values = random_qkv(b=1, h=4, hk=2, q=4, n=30, d=4)
    pos = torch.tensor([10, 17, 25, 29])
    mask, ctx = chain_mask([SinkMaskerConfig(3), LocalMaskerConfig(5)], queries, keys, values, pos)
    dense = mask.to_dense()
    for qi, t in enumerate(pos.tolist()):
        expect = [1.0 if (j < 3 or t - 5 < j <= t) else 0.0 for j in range(30)]
        for hi in range(4):
            assert dense[0, hi, qi].tolist() == expect
    # Local never removes earlier picks, even past the query position
    prev = Mask.from_dense(torch.zeros(ctx.mask_shape).index_fill_(-1, torch.tensor([12]), 1.0))
    before = prev.to_dense().clone()
    masker = ResearchMasker.create_from_config(LocalMaskerConfig(2))
    out = masker.add_mask(keys, queries, values, None, None, 0.0, {}, prev, context=ctx)
    assert torch.all(out.to_dense()[..., 12] == 1.0)
    assert torch.equal(prev.to_dense(), before)  # previous mask not mutated


def test_fractional_sizes_and_causal_limit():
    queries, keys, values = random_qkv(b=1, h=2, hk=1, q=2, n=40, d=4)
    pos = torch.tensor([5, 39])
    mask, _ = chain_mask([SinkMaskerConfig(0.25), LocalMaskerConfig(0.1)], queries, keys, values, pos)
    dense = mask.to_dense()[0, 0]
    # 0.25 * 40 = 10 sink keys, but query at 5 may only see keys 0..5
    assert dense[0].nonzero().flatten().tolist() == [0, 1, 2, 3, 4, 5]
    assert dense[1].nonzero().flatten().tolist() == list(range(10)) + [36, 37, 38, 39]


def test_causal_masker_is_full_and_dense():
    queries, keys, values = random_qkv(b=1, h=2, hk=1, q=3, n=12, d=4)
    mask, ctx = chain_mask([SinkMaskerConfig(2), CausalMaskerConfig()], queries, keys, values, None)
    assert mask.is_full()
    ev, _ = ResearchAttention.create_from_config(ResearchAttentionConfig([CausalMaskerConfig()])).evaluate(ctx)
    assert ev.output_error == 0.0 and ev.density == 1.0


@pytest.mark.parametrize("config,name,kw", [
    (NormalPatternConfig(), "normal", {}),
    (StridedPatternConfig(window_size=4, stride=3), "strided", {"w": 4, "s": 3}),
    (FixedPatternConfig(window_size=5), "fixed", {"w": 5}),
    (SlidingWindowPatternConfig(window_size=6), "sliding_window", {"w": 6}),
    (DilatedSlidingWindowPatternConfig(window_size=6, dilation=2), "dilated_sliding_window",
     {"w": 6, "dil": 2}),
])
def test_pattern_maskers_are_pattern_rows_within_causal(config, name, kw):
    queries, keys, values = random_qkv(b=1, h=4, hk=2, q=5, n=33, d=4)
    pos = torch.tensor([8, 15, 20, 31, 32])
    mask, _ = chain_mask([config], queries, keys, values, pos)
    ref = pattern_ref(name, 33, kw.get("w", 32), kw.get("s", 32), kw.get("dil", 2)) > 0
    dense = mask.to_dense()
    for qi, t in enumerate(pos.tolist()):
        expect = [float(bool(ref[t, j]) and j <= t) for j in range(33)]
        assert dense[0, 1, qi].tolist() == expect


def test_chain_density_and_error_monotone_in_window():
    queries, keys, values = random_qkv(b=1, h=4, hk=2, q=4, n=64, d=8, seed=3)
    ctx = AttentionContext(queries, keys, values)
    figures = []
    for w in (4, 16, 64):
        attn = ResearchAttention.create_from_config(ResearchAttentionConfig([LocalMaskerConfig(w)]))
        ev, _ = attn.evaluate(ctx)
        figures.append((ev.density, ev.output_error))
    assert figures[0][0] < figures[1][0] < figures[2][0] == 1.0
    assert figures[2][1] == pytest.approx(0.0, abs=1e-6)
