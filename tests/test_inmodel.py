"""In-model validation with the real embedded model (SmolLM2-135M, all 30 layers).

Short windows (96 tokens, the last 16 sparse) keep each forward pass small; the chain runs
in every layer, as the protocol says.
"""

import json

import pytest
import torch

from sah import AttentionContext, ResearchAttention, ResearchAttentionConfig
from sah.inmodel import InModelValidator, sparse_attention_in, validate_configs, window_span
from sah.maskers.base import MaskerRegistry
from sah.recording.default_model import load_default_model

pytestmark = pytest.mark.slow

TOKENS, POSITIONS = 96, 16
SINK_LOCAL = [{"type": "SinkMaskerConfig", "sink_size": 4},
              {"type": "LocalMaskerConfig", "window_size": 8}]


def chain(*maskers):
    return ResearchAttentionConfig.from_dict(list(maskers))


@pytest.fixture(scope="module")
def model_and_tokenizer():
    model, tokenizer = load_default_model(attn_implementation="sdpa")
    return model, tokenizer


@pytest.fixture(scope="module")
def validator(model_and_tokenizer):
    return InModelValidator(*model_and_tokenizer, TOKENS, POSITIONS)


@pytest.fixture(scope="module")
def reference(validator):
    return validator.dense(validator.window("docs"))


def test_dense_chains_reproduce_dense_attention(model_and_tokenizer):
    configs = {"empty": chain(), "causal": chain({"type": "CausalMaskerConfig"})}
    results = validate_configs(configs, ["docs"], TOKENS, POSITIONS, model=model_and_tokenizer)
    assert [p.config for p in results.pairs] == ["empty", "causal"]
    for pair in results.pairs:
        f = pair.figures
        assert f.kl < 1e-6 and f.top1_agreement == 1.0 and abs(f.ppl_ratio - 1) < 1e-6
        assert f.density == 1.0 and [lf.layer for lf in f.per_layer] == list(range(30))
        assert max(lf.output_error for lf in f.per_layer) < 1e-5
    dense = results.dense[0]
    assert (dense.token_start, dense.token_end) == (0, TOKENS + 1)
    assert abs(dense.nll - results.pairs[0].figures.nll_dense) < 1e-9
    assert 0.5 < dense.nll < 10  # a language model on real text, not noise


def test_sparse_chain_per_layer_figures_match_offline(validator, reference):
    """kl > 0, and each layer's in-model density and error equal the chain's own figures
    computed offline on the same (contiguous) q/k/v that layer saw."""
    attention = ResearchAttention.create_from_config(
        chain(*SINK_LOCAL, {"type": "OracleTopKConfig", "heavy_size": 0.05}))
    seen = {}

    def observer(layer, q, k, v, mask, positions, output):
        seen[layer] = (q.clone(), k.clone(), v.clone(), mask, positions, output.clone(),
                       q.is_contiguous())

    figures = validator.sparse(reference, attention, observer=observer)
    assert figures.kl > 1e-4 and figures.ppl_ratio > 1.0
    assert 0 < figures.density < 0.5
    assert sorted(seen) == list(range(30)) and not all(s[-1] for s in seen.values())
    for lf in figures.per_layer:
        q, k, v, mask, positions, output, _ = seen[lf.layer]
        assert q.shape == (1, 9, POSITIONS, 64) and k.shape == (1, 3, TOKENS, 64)
        assert positions.tolist() == list(range(TOKENS - POSITIONS, TOKENS))
        ctx = AttentionContext(q.contiguous(), k.contiguous(), v.contiguous(), scaling=64 ** -0.5)
        offline, _ = attention.evaluate(ctx, layer_idx=lf.layer)
        assert lf.density == pytest.approx(offline.density, abs=1e-12)
        assert lf.output_error == pytest.approx(offline.output_error, rel=1e-4, abs=1e-6)
    assert figures.density == pytest.approx(sum(lf.density for lf in figures.per_layer) / 30)
    # the sparse pass leaves the dense cache as it was: the dense chunk reproduces exactly
    again = validator.forward(validator.chunk_ids(reference.window), reference.cache)
    validator._crop(reference.cache)
    assert torch.equal(again, reference.logits)


def test_dense_chunk_equals_full_forward(model_and_tokenizer, validator, reference):
    model, _ = model_and_tokenizer
    with torch.no_grad():
        full = model(input_ids=reference.window.ids[:, :TOKENS], use_cache=False).logits[0]
    assert torch.allclose(full[TOKENS - POSITIONS:], reference.logits, atol=1e-4)
    assert torch.equal(reference.targets, reference.window.ids[0, TOKENS - POSITIONS + 1:])


def decode_one_at_a_time(validator, window, attention):
    """Prefill dense, then the P tokens one by one with the chain and a growing KV cache."""
    cache = validator.new_cache()
    validator.forward(window.ids[:, :TOKENS - POSITIONS], cache, last_only=True)
    rows = []
    with sparse_attention_in(validator.model, attention, figures=False):
        for t in range(TOKENS - POSITIONS, TOKENS):
            rows.append(validator.forward(window.ids[:, t:t + 1], cache))
    return torch.cat(rows)


def test_chunk_equals_decoding_token_by_token_for_count_sizes(validator, reference):
    """The protocol's central claim: with sizes given as counts, the one-chunk pass equals
    decoding the P tokens one at a time with a full KV cache and the sparse pattern."""
    counts = ResearchAttention.create_from_config(
        chain(*SINK_LOCAL, {"type": "OracleTopKConfig", "heavy_size": 6}))
    chunk, _ = validator.sparse_logits(reference, counts)
    decoded = decode_one_at_a_time(validator, reference.window, counts)
    scale = float(chunk.abs().max())
    assert float((chunk - decoded).abs().max()) < 1e-4 * scale
    assert float((chunk - reference.logits).abs().max()) > 1e-2 * scale  # the chain matters
    # a fraction resolves against the keys of the call (T in the chunk, t + 1 when decoding)
    fraction = ResearchAttention.create_from_config(
        chain(*SINK_LOCAL, {"type": "OracleTopKConfig", "heavy_size": 0.1}))
    chunk, _ = validator.sparse_logits(reference, fraction)
    decoded = decode_one_at_a_time(validator, reference.window, fraction)
    assert float((chunk - decoded).abs().max()) > 1e-3 * scale


# ---------------------------------------------------------------------- every masker
#: One small config per registered masker (a new masker must be added here).
SMALL = {
    "AdaptiveSamplingMaskerConfig": {"base_rate_sampling": 0.1, "epsilon": 0.3, "delta": 0.3,
                                     "init_offset": 2, "local_offset": 4},
    "CausalMaskerConfig": {},
    "DilatedSlidingWindowPatternConfig": {"window_size": 8, "dilation": 2},
    "FixedPatternConfig": {"window_size": 8},
    "HashAttentionTopKMaskerConfig": {"heavy_size": 6, "hat_bits": 16, "hat_mlp_layers": 2,
                                      "hat_mlp_hidden_size": 16},
    "LocalMaskerConfig": {"window_size": 0.1},
    "MagicPigConfig": {"lsh_l": 6, "lsh_k": 3},
    "NormalPatternConfig": {},
    "OracleTopKConfig": {"heavy_size": 0.1},
    "OracleTopPMaskerConfig": {"top_p": 0.5},
    "QuestTopKMaskerConfig": {"heavy_size": 8, "page_size": 4},
    "RandomSamplingMaskerConfig": {"sampling_rate": 0.1},
    "SinkMaskerConfig": {"sink_size": 0.05},
    "SlidingWindowPatternConfig": {"window_size": 8},
    "StridedPatternConfig": {"window_size": 8, "stride": 8},
}


def test_every_registered_masker_has_a_small_config():
    builtin = [name for name in MaskerRegistry.config_names()  # other tests register their own
               if MaskerRegistry.config_class(name).__module__.startswith("sah.")]
    assert sorted(SMALL) == builtin


@pytest.mark.parametrize("masker", sorted(SMALL))
def test_masker_inside_the_model_equals_contiguous_inputs(model_and_tokenizer, masker):
    """sink + local + masker in every layer of a real forward pass (no cache: queries, keys
    and values are all non-contiguous views); each call's output equals the same chain on
    contiguous copies of the same inputs."""
    model, tokenizer = model_and_tokenizer
    attention = ResearchAttention.create_from_config(
        chain(*SINK_LOCAL, {"type": masker, **SMALL[masker]}))
    ids = InModelValidator(model, tokenizer, 48, 1).window("code").ids[:, :48]
    worst, layouts = [], set()

    def observer(layer, q, k, v, mask, positions, output):
        layouts.add((q.is_contiguous(), k.is_contiguous(), v.is_contiguous()))
        copy, _ = attention.custom_attention(
            None, q.contiguous(), k.contiguous(), v.contiguous(),
            None if mask is None else mask.contiguous(), 64 ** -0.5, sparse_meta_data={},
            layer_idx=layer, query_positions=positions)
        worst.append(float((copy - output).abs().max() / output.abs().max().clamp_min(1e-30)))

    with torch.no_grad(), sparse_attention_in(model, attention, observer=observer) as session:
        logits = model(input_ids=ids, use_cache=False).logits
    assert len(worst) == 30 and (False, False, False) in layouts
    assert max(worst) < 1e-5, f"{masker}: worst layer differs by {max(worst):.2e}"
    assert torch.isfinite(logits).all() and 0 < min(lf.density for lf in session.layers) <= 1


# ---------------------------------------------------------------------- the command
@pytest.fixture
def cli(model_and_tokenizer, monkeypatch, capsys):
    """``sah validate`` in-process; the model load returns the module's loaded model."""
    from sah.cli import main
    from sah.recording import default_model

    loads = []
    monkeypatch.setattr(default_model, "load_model",
                        lambda name, **kw: loads.append(name) or model_and_tokenizer)

    def run(*argv):
        code = main(["validate", *map(str, argv)])
        out, err = capsys.readouterr()
        return code, out, err, loads
    return run


def test_validate_command_json_layout(cli, tmp_path):
    dense, sparse = tmp_path / "dense.yaml", tmp_path / "sparse.yaml"
    dense.write_text("masker_configs: []\n")
    chain(*SINK_LOCAL, {"type": "OracleTopKConfig", "heavy_size": 0.05}).to_file(sparse)
    out = tmp_path / "sub" / "v.json"
    code, stdout, _, loads = cli("--config", dense, "--config", sparse, "--text", "docs",
                                 "--text", "prose@40", "--tokens", TOKENS, "--positions",
                                 POSITIONS, "--json", out, "--device", "cpu")
    assert code == 0 and loads == ["default"]
    assert f"| {sparse} | prose@40 |" in stdout and "dense pass" in stdout
    data = json.loads(out.read_text())
    assert set(data) == {"model", "tokens", "positions", "dtype", "device", "dense", "results",
                         "means"}
    assert (data["tokens"], data["positions"], data["dtype"]) == (TOKENS, POSITIONS, "float32")
    assert [(d["text"], d["token_start"], d["token_end"]) for d in data["dense"]] == \
        [("docs", 0, TOKENS + 1), ("prose@40", 40, 40 + TOKENS + 1)]
    pairs = [(r["config"], r["text"]) for r in data["results"]]
    assert pairs == [(str(dense), "docs"), (str(sparse), "docs"), (str(dense), "prose@40"),
                     (str(sparse), "prose@40")]
    for r in data["results"]:
        assert {"kl", "top1_agreement", "ppl_ratio", "density", "per_layer"} <= set(r)
        assert [lf["layer"] for lf in r["per_layer"]] == list(range(30))
        assert set(r["per_layer"][0]) == {"layer", "output_error", "density"}
    last = data["results"][-1]
    assert window_span("prose@40", TOKENS) == (last["text_sha256"], last["token_start"],
                                               last["token_end"])
    assert [m["config"] for m in data["means"]] == [str(dense), str(sparse)]
    sparse_rows = [r for r in data["results"] if r["config"] == str(sparse)]
    mean = data["means"][1]
    assert mean["texts"] == 2
    assert mean["kl"] == pytest.approx(sum(r["kl"] for r in sparse_rows) / 2)
    assert mean["kl"] > 1e-4 and data["means"][0]["kl"] < 1e-6
    assert not [p.name for p in out.parent.iterdir() if p.name != "v.json"]  # no temp left


def test_validate_command_errors(cli, tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("masker_configs: []\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text("masker_configs:\n- {type: NoSuchMasker}\n")
    short = tmp_path / "short.txt"
    short.write_text("just a few words")
    out = tmp_path / "v.json"
    base = ["--tokens", TOKENS, "--positions", POSITIONS, "--json", out, "--quiet"]
    cases = [
        (["--config", good, "--text", "nosuch"], ["--text", "nosuch", "docs, code, prose"], 0),
        (["--config", good, "--text", short], ["--text", "short.txt", "tokens", "Lower"], 1),
        (["--config", good, "--text", "docs", "--positions", TOKENS],
         ["--positions", f"got {TOKENS}", f"--tokens {TOKENS}", f"{TOKENS - 1} positions"], 0),
        (["--config", good, "--text", "docs", "--tokens", 9000],
         ["--tokens", "got 9000", "8192 positions"], 0),
        (["--config", bad, "--text", "docs"], ["bad.yaml", "NoSuchMasker", "known types"], 0),
        (["--config", tmp_path / "missing.yaml", "--text", "docs"],
         ["--config", "missing.yaml", "no such file"], 0),
        (["--config", good, "--text", "docs@x"], ["--text", "docs@x", "NAME@START"], 0),
        (["--config", good, "--config", good, "--text", "docs"], ["given twice"], 0),
    ]
    for argv, needles, model_loads in cases:
        code, stdout, stderr, loads = cli(*base, *argv)
        lines = stderr.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith("sah validate: error: "), \
            (argv, stderr)
        for needle in needles:
            assert needle in lines[0], (needle, lines[0])
        assert not out.exists() and stdout == ""
        assert len(loads) == model_loads, (argv, loads)  # refused before the model loads
        loads.clear()
    code, _, stderr, _ = cli(*base[:-3], "--config", good, "--text", "docs", "--json", tmp_path)
    assert code == 2 and "is a directory" in stderr
