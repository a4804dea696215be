"""configs/default.yaml validates, and the HashAttention fitting option wires fitted
weights into every HashAttention masker (fitted once, saved in the run folder)."""

from pathlib import Path

import pytest

from sah.tuning.study import load_study

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("sah.maskers.hash_attention_fit")


def test_default_study_validates_and_covers_the_required_chains():
    study = load_study(ROOT / "configs" / "default.yaml")
    assert study.objective == "sparsity_10" and study.density_targets == [0.05, 0.10, 0.20]
    assert study.recording == "default"
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
    assert study.fit_hash_attention


def test_fitted_weights_reach_every_hash_attention_trial(tmp_path):
    from sah.evaluate import evaluate_config
    from sah.recording import make_synthetic_recording
    from sah import HashAttentionTopKMaskerConfig, ResearchAttentionConfig
    from sah.tuning.artefacts import RunArtefacts
    from sah.tuning.hash_fit import (FITTED_NAME, attach_weights, prepare_hash_attention,
                                     weights_path)
    from sah.tuning.study import parse_study
    from sah.validation import ConfigError

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
    with pytest.raises(ConfigError, match="fit_hash_attention.nope"):
        attach_weights(parse_study({**data, "fit_hash_attention": {"nope": 1}}, "s.yaml"), run_dir)
