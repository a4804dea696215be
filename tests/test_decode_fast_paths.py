"""The decoding fast paths (one or a few query rows per KV head, long contexts) against the
plain references, on contiguous and non-contiguous inputs: the logits as query rows
times a transposed view of the keys, the skipped masking when every key is allowed, the
CSR x dense product for long-context values, the bucketed top-p on broadcast candidates
and strided scores, and the machine and verdict lines of benchmark/perf_chain.py."""

import importlib.util
from pathlib import Path

import pytest
import torch

import sah.estimator as est
from helpers import logits_ref, random_qkv, sparse_attention_ref
from sah import AttentionContext
from sah.estimator import sparse_attention
from sah.mask import Mask
from sah.maskers.top_k import top_p_positions, top_p_positions_fast

REPO = Path(__file__).resolve().parents[1]


def layout(t: torch.Tensor, kind: str) -> torch.Tensor:
    """The same values as ``t`` ``(b, hk, n, d)`` in another memory layout."""
    if kind == "contiguous":
        return t.contiguous()
    if kind == "cache slice":  # the first n keys of a longer preallocated cache
        b, hk, n, d = t.shape
        cache = torch.zeros(b, hk, n + 5, d, dtype=t.dtype)
        cache[:, :, :n] = t
        return cache[:, :, :n]
    if kind == "heads last":  # stored (b, n, hk, d), viewed as (b, hk, n, d)
        return t.transpose(1, 2).contiguous().transpose(1, 2)
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["contiguous", "cache slice", "heads last"])
@pytest.mark.parametrize("heads, kv_heads, queries", [(4, 4, 1), (4, 1, 1), (6, 2, 3), (4, 2, 9)])
def test_logits_equal_the_reference_in_every_layout(kind, heads, kv_heads, queries):
    q, k, v = random_qkv(b=2, h=heads, hk=kv_heads, q=queries, n=23, d=8, seed=heads + queries)
    q = q.transpose(2, 3).contiguous().transpose(2, 3)  # non-contiguous queries too
    ctx = AttentionContext(q, layout(k, kind), layout(v, kind), scaling=0.3)
    ref = logits_ref(q, k, 0.3)
    allowed = ctx.allowed_full
    assert torch.allclose(ctx.logits[allowed].double(), ref[allowed], atol=1e-5)
    assert torch.all(torch.isinf(ctx.logits[~allowed]))


def test_half_precision_keys_are_converted_block_by_block(monkeypatch):
    import sah.context as context_module
    q, k, v = random_qkv(b=1, h=4, hk=2, q=1, n=30, d=8, seed=3)
    monkeypatch.setattr(context_module, "KEY_BLOCK", 7)
    half = AttentionContext(q, layout(k.bfloat16(), "cache slice"), v.bfloat16())
    ref = logits_ref(q, k.bfloat16().float(), half.scaling)
    assert torch.allclose(half.logits.double(), ref, atol=1e-4)


def test_every_key_allowed_only_for_a_decoding_step_without_a_mask():
    q, k, v = random_qkv(b=1, h=2, hk=1, q=1, n=10, d=4, seed=4)
    decode = AttentionContext(q, k, v)
    assert decode.every_key_allowed and bool(decode.allowed_full.all())
    assert torch.isfinite(decode.logits).all()
    earlier = AttentionContext(q, k, v, query_positions=torch.tensor([6]))
    assert not earlier.every_key_allowed
    assert torch.isinf(earlier.logits[..., 7:]).all() and torch.isfinite(earlier.logits[..., :7]).all()
    user = torch.ones(1, 1, 1, 10, dtype=torch.bool)
    user[..., 3] = False
    masked = AttentionContext(q, k, v, attention_mask=user)
    assert not masked.every_key_allowed
    assert torch.isinf(masked.logits[..., 3]).all()
    q2, k2, v2 = random_qkv(b=1, h=2, hk=1, q=3, n=10, d=4, seed=5)
    assert not AttentionContext(q2, k2, v2).every_key_allowed  # earlier queries see fewer keys


@pytest.mark.parametrize("kind", ["contiguous", "cache slice", "heads last"])
@pytest.mark.parametrize("binary", [True, False])
def test_long_context_values_through_csr_equal_the_reference(kind, binary, monkeypatch):
    """Values too big for the cache take the CSR x dense product (forced here by a zero
    size limit): the same estimate as the loops, with and without computed logits."""
    q, k, v = random_qkv(b=1, h=4, hk=2, q=2, n=40, d=8, seed=6)
    g = torch.Generator().manual_seed(7)
    weights = torch.rand(1, 4, 2, 40, generator=g)
    weights = torch.where(weights < 0.2, 1.0 if binary else weights + 0.05, 0.0)
    mask = Mask.from_bool(weights > 0) if binary else Mask.from_dense(weights)
    ref, empty = sparse_attention_ref(q, k, v, 0.4, torch.tensor([38, 39]), weights)
    for limit in (0, 1 << 30):
        monkeypatch.setattr(est, "SMALL_VALUES_BYTES", limit)
        for with_logits in (False, True):
            ctx = AttentionContext(q, layout(k, kind), layout(v, kind), scaling=0.4)
            if with_logits:
                ctx.logits
            got = sparse_attention(ctx, mask)
            assert got.empty_rows == empty
            assert torch.allclose(got.output.double(), ref, atol=1e-5), (limit, with_logits)


@pytest.mark.parametrize("seed", range(6))
def test_top_p_fast_on_broadcast_candidates_and_strided_scores(seed):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(2, 3, 300, 5, generator=g).transpose(2, 3)  # (2, 3, 5, 300), strided
    row = torch.rand(1, 1, 1, 300, generator=g) < 0.7
    candidates = row.expand(2, 3, 5, 300)  # one row shared by every head and query
    for top_p in (0.1, 0.5, 0.9, 0.99):
        assert torch.equal(top_p_positions_fast(scores, candidates, top_p),
                           top_p_positions(scores, candidates, top_p)), top_p
    none = torch.zeros(2, 3, 5, 300, dtype=torch.bool)
    none[0, 1, 2, 17] = True  # every row but one without candidates
    for top_p in (0.3, 0.9):
        got = top_p_positions_fast(scores, none, top_p)
        assert torch.equal(got, top_p_positions(scores, none, top_p)) and int(got.sum()) == 1


def load_perf_chain():
    spec = importlib.util.spec_from_file_location("perf_chain", REPO / "benchmark" / "perf_chain.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_perf_chain_names_the_machine_and_judges_each_row():
    perf_chain = load_perf_chain()
    info = perf_chain.cpu_description()
    line = perf_chain.describe_machine(info)
    assert info["cpu"] and info["cpu"] in line and "BLAS" in line and info["blas"] in line
    assert info["blas"] != "unknown"  # torch names its BLAS in __config__.show()
    assert set(info["vector"]) <= set(perf_chain.VECTOR_FLAGS)
    assert perf_chain.verdict(0.8, [0.79, 0.8]) == "PASS"
    assert perf_chain.verdict(0.8, [0.5, 0.81]) == "FAIL"  # one KV setting over: the row fails
    assert perf_chain.verdict(None, [3.0]) == "-"
    assert perf_chain.verdict(1.0, ["RuntimeError: x"]) == "error"
    names = {name for name, _, _ in perf_chain.CHAINS} | {"many"}
    assert set(perf_chain.TARGETS) <= names  # every target names a timed row


def test_perf_many_query_switches_real_paths_and_every_variant_agrees():
    """benchmark/perf_many_query.py (small shape, two query chunks): each switch replaces
    an attribute that exists, every variant's output equals the code as it is (the script
    exits non-zero otherwise), and the table names each variant."""
    import subprocess
    import sys
    done = subprocess.run([sys.executable, str(REPO / "benchmark" / "perf_many_query.py"),
                           "--queries", "128", "--keys", "2048", "--repeats", "1"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    for name in ("all on", "chunks one by one", "boolean top-k merge", "whole-row causal fill",
                 "causal SDPA"):
        assert f"| {name} |" in done.stdout
    assert done.stdout.startswith("# CPU: ")
