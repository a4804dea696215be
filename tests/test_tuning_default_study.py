"""configs/default.yaml and configs/long_context.yaml validate (scored recordings of
different texts, fit recordings disjoint from them, the count/fraction chain pairs, the
default study's in-model validation on held-out text), and the
HashAttention fitting option wires fitted weights into every HashAttention masker (fitted
once, saved in the run folder)."""

from pathlib import Path

import pytest

from sah.study.parse import load_study

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("sah.maskers.hash_attention_fit")


def spans(names):
    from sah.recording.embedded import parse_embedded
    from sah.recording.texts import load_text
    items = [parse_embedded(n) for n in names]
    assert all(items), names  # embedded recordings: made from the embedded model on first use
    return [(i.text, load_text(i.text).sha256, i.start, i.start + i.num_tokens, i.num_tokens)
            for i in items]


def assert_fit_disjoint(study):
    from sah.recording.texts import spans_overlap
    for fit in spans(study.fit_recordings):
        for scored in spans(study.recordings):
            assert not spans_overlap(fit[1:4], scored[1:4]), (fit, scored)


def test_default_study_validates_and_covers_the_required_chains():
    study = load_study(ROOT / "configs" / "default.yaml")
    assert study.objective == "sparsity_10" and study.density_targets == [0.05, 0.10, 0.20]
    scored = spans(study.recordings)
    assert len(scored) >= 2 and len({s[0] for s in scored}) == len(scored)  # different texts
    assert study.fit_recordings and study.fit_hash_attention
    assert {s[0] for s in spans(study.fit_recordings)}.isdisjoint({s[0] for s in scored})
    assert_fit_disjoint(study)
    assert {s[4] for s in scored} == {2048}
    kinds = {c.name: [m.config_class.__name__ for m in c.maskers] for c in study.chains}
    wanted = [
        ["SinkMaskerConfig", "LocalMaskerConfig"],
        ["SinkMaskerConfig", "LocalMaskerConfig", "OracleTopKConfig"],
        ["SinkMaskerConfig", "LocalMaskerConfig", "OracleTopPMaskerConfig"],
        ["SinkMaskerConfig", "LocalMaskerConfig", "RandomSamplingMaskerConfig"],
        ["SinkMaskerConfig", "LocalMaskerConfig", "MagicPigConfig"],
        ["SinkMaskerConfig", "LocalMaskerConfig", "OracleTopKConfig", "AdaptiveSamplingMaskerConfig"],
    ]
    for chain in wanted:
        assert chain in kinds.values(), chain
    flat = [k for ks in kinds.values() for k in ks]
    for kind in ("QuestTopKMaskerConfig", "HashAttentionTopKMaskerConfig", "StridedPatternConfig"):
        assert kind in flat


def test_default_study_validates_its_density_0_1_picks_on_held_out_text():
    from sah.inmodel import window_span
    from sah.recording.texts import spans_overlap
    study = load_study(ROOT / "configs" / "default.yaml")
    section = study.validate
    assert section is not None and "density_0.1" in section.picks and section.texts
    for text in section.texts:
        window = window_span(text, section.tokens)
        for rec in spans(study.recordings) + spans(study.fit_recordings):
            assert not spans_overlap(window, rec[1:4]), (text, rec)


def test_default_study_measures_every_pick_speed():
    study = load_study(ROOT / "configs" / "default.yaml")
    assert study.speed is not None and study.speed.long_keys == 32768
    assert study.speed.picks == ["best"] + [f"density_{t:g}" for t in study.density_targets]
    assert study.speed.repeats <= 5  # the default study stays under 10 minutes


def test_default_study_pairs_counts_with_fractions():
    """The transfer question (does a count or a fraction keep its figures at 8192 tokens?)
    needs chain pairs that differ only in the unit of their sizes and score the SAME masks at
    the study's 2048 keys: each fraction f resolves to the count int(f * 2048)."""
    from sah.infra.checks import resolve_size
    study = load_study(ROOT / "configs" / "default.yaml")
    pairs = [(c, study.chain(c.name.replace("_fraction", "_count")))
             for c in study.chains if c.name.endswith("_fraction")]
    assert len(pairs) >= 2
    for frac, count in pairs:
        assert frac.searcher == count.searcher == "grid"
        assert [m.config_class for m in frac.maskers] == [m.config_class for m in count.maskers]
        sized = 0
        for fm, cm in zip(frac.maskers, count.maskers):
            for name in set(fm.fixed) | set(fm.domains):
                a = fm.domains[name].values if name in fm.domains else [fm.fixed[name]]
                b = cm.domains[name].values if name in cm.domains else [cm.fixed[name]]
                assert [resolve_size(x, 2048) for x in a] == b, (frac.name, name)
                if any(isinstance(x, float) for x in a):
                    sized += 1
                    assert all(isinstance(x, int) for x in b)
        assert sized >= 1


def test_long_context_study_scores_8192_tokens_and_fits_on_a_disjoint_span():
    study = load_study(ROOT / "configs" / "long_context.yaml")
    assert {s[4] for s in spans(study.recordings)} == {8192}
    assert study.fit_recordings and study.fit_hash_attention
    assert_fit_disjoint(study)
    kinds = {m.config_class.__name__ for c in study.chains for m in c.maskers}
    assert {"OracleTopKConfig", "QuestTopKMaskerConfig", "HashAttentionTopKMaskerConfig"} <= kinds


def test_fitted_weights_reach_every_hash_attention_trial(tmp_path, monkeypatch):
    monkeypatch.setenv("SAH_CACHE_DIR", str(tmp_path / "cache"))
    from sah.evaluate import evaluate_config
    from sah.recording import make_synthetic_recording
    from sah import HashAttentionTopKMaskerConfig, ResearchAttentionConfig
    from sah.runs.artefacts import RunArtefacts
    from sah.runs.artefacts import FITTED_NAME, weights_path
    from sah.tuning.steps.hash_fit import attach_weights, prepare_hash_attention
    from sah.study.parse import parse_study
    from sah.infra.checks import ConfigError

    data = {"name": "h", "recording": "x", "fit_hash_attention": {"bits": 8, "steps": 2,
                                                                "hat_mlp_layers": 1},
            "chains": [{"name": "hat", "maskers": [
                {"type": "HashAttentionTopKMaskerConfig",
                 "heavy_size": {"search": "uniform", "low": 0.05, "high": 0.2}}]}]}
    study = parse_study(data, "s.yaml")
    run_dir = tmp_path / "run"
    attach_weights(study, run_dir)
    fixed = study.chains[0].maskers[0].fixed
    # a portable name, never a driver-side path (the study goes to run.yaml and the trials)
    assert fixed["hat_weight_file"] == FITTED_NAME and fixed["hat_bits"] == 8
    rec = make_synthetic_recording(num_layers=2, num_heads=2, num_kv_heads=1, head_dim=16,
                                   num_keys=128, num_queries=4)
    path = prepare_hash_attention(study, rec, run_dir)
    assert path == weights_path(run_dir)
    assert path.is_file() and (path.parent / "report.json").is_file()
    stamp = path.stat().st_mtime_ns
    assert prepare_hash_attention(study, rec, run_dir).stat().st_mtime_ns == stamp  # reused
    cfg = study.chains[0].build({"HashAttentionTopKMaskerConfig_heavy_size": 0.1})
    artefacts = RunArtefacts.of_run(study, run_dir)
    resolved = artefacts.resolved(cfg)  # the weights in memory, as a trial gets them
    assert resolved.masker_configs[0].hat_weight_file is None
    from_file = HashAttentionTopKMaskerConfig(**{**cfg.masker_configs[0].params(),
                                                 "hat_weight_file": str(path)})
    assert evaluate_config(resolved, rec).density > 0
    assert evaluate_config(resolved, rec).output_error == evaluate_config(
        ResearchAttentionConfig([from_file]), rec).output_error

    clash = parse_study({**data, "chains": [{"name": "hat", "maskers": [
        {"type": "HashAttentionTopKMaskerConfig", "hat_bits": 16}]}]}, "s.yaml")
    with pytest.raises(ConfigError, match=r"chains\[0\].maskers\[0\].hat_bits"):
        attach_weights(clash, run_dir)
    with pytest.raises(ConfigError, match="s.yaml: fit_hash_attention.nope: unknown option"):
        parse_study({**data, "fit_hash_attention": {"nope": 1}}, "s.yaml")
