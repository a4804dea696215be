"""Embedded recording names (``default``, ...) are taken wherever a recording is: `sah
resources`, `sah patterns`, `sah inspect` and evaluate_config, as studies take them."""

import pytest

from sah import LocalMaskerConfig, ResearchAttentionConfig, SinkMaskerConfig
from sah.cli import main as sah_main
from sah.recording.format import LayerRecording, load_recording, save_recording
from sah.recording.synthetic import make_synthetic_recording
from tuning_support import chain_file

SHAPE = dict(num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16, num_keys=256,
             num_queries=8, seed=5)


@pytest.fixture
def seeded_default(tmp_path, monkeypatch):
    """The embedded recording ``default`` placed in a fresh cache (a small synthetic
    recording stamped with the embedded spec), so that name resolution is tested without
    the model run; ensure_recordings finds and verifies it like any cached file."""
    from sah.recording.embedded import parse_embedded

    monkeypatch.setenv("SAH_CACHE_DIR", str(tmp_path / "cache"))
    item = parse_embedded("default")
    rec = make_synthetic_recording(**SHAPE)
    rec.layers = [LayerRecording(3, lr.queries, lr.keys, lr.values) for lr in rec.layers[:1]]
    rec.metadata["embedded_spec"] = item.spec()
    return save_recording(rec, item.path())


def test_patterns_resources_and_inspect_take_an_embedded_name(seeded_default, tmp_path, capsys):
    """`sah resources`, `sah patterns` and `sah inspect` take the embedded name ``default``
    as studies do; an unknown name is one clear line."""
    chain = chain_file(tmp_path)
    assert sah_main(["resources", "--recording", "default", "--config", chain, "--layer", "3",
                     "--heads", "1", "--num_multiplications", "8", "--read_limit", "12"]) == 0
    assert "--- Layer3 Head1 Mask ---" in capsys.readouterr().out
    out_dir = tmp_path / "png"
    assert sah_main(["patterns", "--recording", "default", "--config", chain, "--layer", "3",
                     "--output_dir", str(out_dir)]) == 0
    assert (out_dir / "chain_layer3.png").stat().st_size > 0
    assert sah_main(["inspect", "default"]) == 0
    assert str(seeded_default) in capsys.readouterr().out
    # an unknown name is one clear line
    assert sah_main(["resources", "--recording", "nope", "--config", chain, "--layer", "3"]) == 2
    assert "--recording: nope does not exist" in capsys.readouterr().err


def test_evaluate_config_takes_a_recording_path_str_or_embedded_name(seeded_default, tmp_path):
    """evaluate_config loads a recording given as a path, a str or an embedded name (the
    same figures as the loaded recording); a missing file and anything else are refused
    with what to give."""
    from sah.evaluate import evaluate_config

    cfg = ResearchAttentionConfig([SinkMaskerConfig(sink_size=4), LocalMaskerConfig(window_size=8)])
    path = save_recording(make_synthetic_recording(**SHAPE), tmp_path / "r.safetensors")
    loaded = evaluate_config(cfg, load_recording(path))
    by_path = evaluate_config(cfg, path)
    assert by_path.output_error == loaded.output_error and by_path.density == loaded.density
    assert evaluate_config(cfg, str(path)).output_error == loaded.output_error
    by_name = evaluate_config(cfg, "default")
    assert [lf.layer for lf in by_name.layers] == [3] and by_name.output_error > 0
    with pytest.raises(FileNotFoundError, match="evaluate_config: recording: .*missing.st does "
                                                "not exist"):
        evaluate_config(cfg, tmp_path / "missing.st")
    with pytest.raises(TypeError, match="evaluate_config: recording: got int; give a Recording"):
        evaluate_config(cfg, 42)
