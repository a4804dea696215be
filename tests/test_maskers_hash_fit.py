"""HashAttention weights: file formats, the pickle guard, size and finiteness checks, seeded
random initialisation, and fitting on a recording the test makes (fitted top-k recall must
clearly beat the random initialisation; each layer's progress is reported)."""

import pickle
import re

import pytest
import torch

from sah import (AttentionContext, ConfigError, HashAttentionTopKMaskerConfig, Mask,
                 ResearchAttention, ResearchAttentionConfig, fit_hash_attention,
                 load_hat_weights, save_hat_weights)
from sah.maskers.base import ResearchMasker
from sah.maskers.hash_attention import random_hat_weights
from sah.infra.pickle_opt_in import allow_pickle
from sah.maskers.hash_attention_fit import hash_top_k_recall
from sah.recording import make_synthetic_recording
from sah.recording.format import LayerRecording, Recording
from tuning_support import SMALL

H, HK, D = 4, 2, 16


def clustered_layer(seed, n=384, nq=96, clusters=6):
    """Keys and queries around shared per-KV-head cluster centres (like real attention,
    where queries attend to groups of related keys); decode-style query positions."""
    centres = torch.randn(HK, clusters, D, generator=torch.Generator().manual_seed(99)) * 2
    gen = torch.Generator().manual_seed(seed)
    ka = torch.randint(0, clusters, (1, HK, n), generator=gen)
    keys = centres[torch.arange(HK).view(1, HK, 1), ka] + 0.7 * torch.randn(1, HK, n, D, generator=gen)
    qa = torch.randint(0, clusters, (1, H, nq), generator=gen)
    qc = centres.repeat_interleave(H // HK, 0)
    queries = qc[torch.arange(H).view(1, H, 1), qa] + 0.7 * torch.randn(1, H, nq, D, generator=gen)
    values = torch.randn(1, HK, n, D, generator=gen)
    return queries, keys, values, torch.arange(n - nq, n)


def make_recording(seed):
    layers, pos = [], None
    for layer in (0, 3):
        q, k, v, pos = clustered_layer(seed + layer)
        layers.append(LayerRecording(layer, q, k, v))
    return Recording(layers=layers, query_positions=pos, scaling=D ** -0.5)


@pytest.mark.slow
def test_fitting_raises_recall_well_above_random_init(tmp_path):
    train, held = make_recording(0), make_recording(100)
    weights, report = fit_hash_attention(train, hat_bits=32, hat_mlp_layers=2,
                                         hat_mlp_hidden_size=48, steps=60, lr=2e-2, recall_size=0.05,
                                         heldout=held)
    assert set(weights) == {0, 3} and report.recall_k == int(0.05 * 384)
    for layer in (0, 3):
        assert report.recall_after[layer] > report.recall_before[layer] + 0.15, report
        assert report.heldout_recall_after[layer] > report.heldout_recall_before[layer] + 0.02, report
    # The weights work in the masker after a safetensors round trip, with the same recall.
    path = save_hat_weights(weights, tmp_path / "hat.safetensors")
    loaded = load_hat_weights(path)
    ctx = train.context(1)
    k = report.recall_k
    assert hash_top_k_recall(loaded[3], ctx, k, "silu") == pytest.approx(report.recall_after[3])
    cfg = HashAttentionTopKMaskerConfig(heavy_size=k, hat_bits=32, hat_mlp_layers=2,
                                        hat_mlp_hidden_size=48, hat_weight_file=str(path))
    attn = ResearchAttention.create_from_config(ResearchAttentionConfig([cfg]))
    picks = attn.compute_mask(ctx, layer_idx=3).to_dense() > 0
    top = ctx.logits.topk(k, dim=-1).indices
    recall = picks.gather(-1, top).float().mean().item()
    assert recall == pytest.approx(report.recall_after[3], abs=1e-6)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_weight_file_formats_and_pickle_guard(tmp_path):
    weights = {1: random_hat_weights(H, HK, D, 8, 2, 6, seed=3)}
    cfg_kw = dict(heavy_size=5, hat_bits=8, hat_mlp_layers=2, hat_mlp_hidden_size=6)
    q, k, v, pos = clustered_layer(1, n=40, nq=4)
    ctx = AttentionContext(q, k, v, query_positions=pos)
    reference = ResearchMasker.create_from_config(
        HashAttentionTopKMaskerConfig(**cfg_kw, hat_weights=weights)).scores(ctx, {}, layer_idx=1)

    nested = tmp_path / "w.pt"
    torch.save(weights, nested)
    pkl = tmp_path / "w.pkl"
    pkl.write_bytes(pickle.dumps(weights))
    st = save_hat_weights(weights, tmp_path / "w.safetensors")
    for path in (nested, st, pkl):
        with allow_pickle(path == pkl):  # the person's opt-in, never the config's
            masker = ResearchMasker.create_from_config(
                HashAttentionTopKMaskerConfig(**cfg_kw, hat_weight_file=str(path)))
        assert torch.equal(masker.scores(ctx, {}, layer_idx=1), reference), path
    with pytest.raises(ConfigError, match="allow-pickle"):
        ResearchMasker.create_from_config(HashAttentionTopKMaskerConfig(**cfg_kw, hat_weight_file=str(pkl)))

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))
    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"x": Evil()}))
    with pytest.raises(ConfigError, match="weights_only"):
        load_hat_weights(evil)
    with pytest.raises(ConfigError, match="no such file"):
        load_hat_weights(tmp_path / "missing.safetensors")


def test_declared_sizes_must_match_weights():
    weights = {0: random_hat_weights(H, HK, D, 8, 2, 6, seed=3)}
    q, k, v, pos = clustered_layer(1, n=40, nq=4)
    ctx = AttentionContext(q, k, v, query_positions=pos)
    empty = Mask.create_empty(ctx.mask_shape)
    bad = [
        (dict(hat_bits=16, hat_mlp_layers=2, hat_mlp_hidden_size=6), "hat_bits 16"),
        (dict(hat_bits=8, hat_mlp_layers=3, hat_mlp_hidden_size=6), "hat_mlp_layers declares 3"),
        (dict(hat_bits=8, hat_mlp_layers=2, hat_mlp_hidden_size=7), "hat_mlp_hidden_size 7"),
    ]
    for kw, message in bad:
        masker = ResearchMasker.create_from_config(
            HashAttentionTopKMaskerConfig(heavy_size=4, hat_weights=weights, **kw))
        with pytest.raises(ConfigError, match=message):
            masker.add_mask(k, q, v, None, None, 0.0, {}, empty, context=ctx, layer_idx=0)
    masker = ResearchMasker.create_from_config(HashAttentionTopKMaskerConfig(
        heavy_size=4, hat_bits=8, hat_mlp_layers=2, hat_mlp_hidden_size=6, hat_weights=weights))
    with pytest.raises(ConfigError, match="no layer 5"):
        masker.add_mask(k, q, v, None, None, 0.0, {}, empty, context=ctx, layer_idx=5)
    # Head count of the call differs from the weights' query heads.
    q2 = torch.cat([q, q], dim=1)
    ctx2 = AttentionContext(q2, k, v, query_positions=pos)
    with pytest.raises(ConfigError, match="query_matrix has 4 heads"):
        masker.add_mask(k, q2, v, None, None, 0.0, {}, Mask.create_empty(ctx2.mask_shape),
                        context=ctx2, layer_idx=0)


def test_random_initialisation_is_seeded():
    q, k, v, pos = clustered_layer(2, n=64, nq=4)
    ctx = AttentionContext(q, k, v, query_positions=pos)

    def scores(seed, layer=0):
        m = ResearchMasker.create_from_config(HashAttentionTopKMaskerConfig(
            heavy_size=4, hat_bits=16, hat_mlp_layers=2, hat_mlp_hidden_size=8, hat_init_seed=seed))
        return m.scores(ctx, {}, layer_idx=layer)
    assert torch.equal(scores(1), scores(1))
    assert not torch.equal(scores(1), scores(2))
    assert not torch.equal(scores(1, 0), scores(1, 1))
    assert torch.equal(scores(1, 1), scores(2, 0))  # seed is hat_init_seed + layer


def test_weights_with_nan_or_inf_are_refused():
    """HashAttention weights holding NaN or inf are refused, naming the tensor; finite ones
    are accepted."""
    weights = {"query_matrix": [torch.randn(4, 8, 6)], "query_bias": [torch.zeros(4, 6)],
               "key_matrix": [torch.randn(2, 8, 6)], "key_bias": [torch.zeros(2, 6)]}
    for name, bad in (("key_matrix", float("nan")), ("query_bias", float("inf"))):
        broken = {key: [t.clone() for t in ts] for key, ts in weights.items()}
        broken[name][0].view(-1)[3] = bad
        cfg = HashAttentionTopKMaskerConfig(heavy_size=2, hat_bits=6, hat_mlp_layers=1,
                                            hat_mlp_hidden_size=6, hat_weights={0: broken})
        with pytest.raises(ConfigError, match=f"{name}\\[0\\] contains NaN or infinite values"):
            ResearchMasker.create_from_config(cfg)
    ResearchMasker.create_from_config(HashAttentionTopKMaskerConfig(
        heavy_size=2, hat_bits=6, hat_mlp_layers=1, hat_mlp_hidden_size=6, hat_weights={0: weights}))


def test_fitting_reports_each_layer_and_a_run_prints_what_it_fits(tmp_path, capfd, monkeypatch):
    """The fit reports each layer (with its duration) to a callback, and a run's fit step
    prints what it fits, a progress bar over the layers and the resulting recall: never
    minutes of silence."""
    from sah.tuning.steps.hash_fit import prepare_hash_attention
    from sah.study.parse import parse_study
    monkeypatch.setenv("SAH_CACHE_DIR", str(tmp_path / "cache"))  # fitted here, not copied
    rec = make_synthetic_recording(**{**SMALL, "num_layers": 3, "num_keys": 128, "seed": 1})
    seen = []
    fit_hash_attention(rec, hat_bits=4, hat_mlp_layers=1, hat_mlp_hidden_size=4, steps=2,
                       on_layer=lambda *args: seen.append(args))
    assert [s[:3] for s in seen] == [(0, 1, 3), (1, 2, 3), (2, 3, 3)]
    assert all(isinstance(s[3], float) and s[3] > 0 for s in seen)

    study = parse_study({"name": "p", "recording": "x",
                         "fit_hash_attention": {"bits": 4, "steps": 2, "hat_mlp_layers": 1,
                                                "hat_mlp_hidden_size": 5, "seed": 7},
                         "chains": [{"name": "hat", "maskers": [
                             {"type": "HashAttentionTopKMaskerConfig", "heavy_size": 0.2}]}]},
                        "s.yaml")
    capfd.readouterr()
    prepare_hash_attention(study, {"fitrec": rec}, tmp_path / "run", {"scored": rec},
                           progress=True)
    err = capfd.readouterr().err
    assert "sah: fitting HashAttention hash functions on fitrec: 3 layers, 2 steps each" in err
    assert "HashAttention fit:" in err and "/3 [" in err  # the bar over the 3 layers
    assert re.search(r"sah: HashAttention ready in [0-9.]+ s; top-k recall after \(before\) "
                     r"fitting: fit fitrec [0-9.]+ \([0-9.]+\); scored scored [0-9.]+", err), err
