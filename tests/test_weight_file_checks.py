"""HashAttention weight files are checked before anything runs: tensor names (a layer or
index that is not a number), each matrix with its bias, and shapes against the study's
recordings (heads, KV heads, head dim, layers) and the masker's fixed hash sizes. Each
problem is one line naming the study, the masker and the file; nothing is written."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file, save_file

from sah.infra.checks import ConfigError
from sah.maskers.hash_attention import load_hat_weights, random_hat_weights, save_hat_weights
from sah.recording import make_synthetic_recording, save_recording
from sah.tuning.runner import RunOptions, run_study

ROOT = Path(__file__).resolve().parents[1]
HAT = {"type": "HashAttentionTopKMaskerConfig", "heavy_size": 4, "hat_bits": 8,
       "hat_mlp_layers": 2, "hat_mlp_hidden_size": 6}
HEADS, KV_HEADS, HEAD_DIM, LAYERS = 4, 2, 16, 2


@pytest.fixture
def rec_path(tmp_path):
    path = tmp_path / "rec.safetensors"
    save_recording(make_synthetic_recording(num_layers=LAYERS, num_heads=HEADS,
                                            num_kv_heads=KV_HEADS, head_dim=HEAD_DIM,
                                            num_keys=64, num_queries=4, seed=1), path)
    return path


def weights(heads=HEADS, kv=KV_HEADS, dim=HEAD_DIM, bits=8, layers=LAYERS):
    return {layer: random_hat_weights(heads, kv, dim, bits, 2, 6, seed=layer)
            for layer in range(layers)}


def refused(tmp_path, rec_path, weight_file, *fragments, searched=None):
    masker = {**HAT, "hat_weight_file": str(weight_file)}
    if searched:
        masker.update(searched)
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump({"name": "w", "recording": str(rec_path), "searcher": "random",
                                     "num_samples": 2, "chains": [{"name": "h",
                                                                   "maskers": [masker]}]}))
    results = tmp_path / "results"
    with pytest.raises(ConfigError) as info:
        run_study(RunOptions(config=str(study), results_dir=str(results), progress=False))
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{study}: chains[0].maskers[0]"), message
    for fragment in (str(weight_file), *fragments):
        assert fragment in message, message
    assert not results.exists()
    return message


def test_a_tensor_name_with_a_non_numeric_layer_names_the_file_and_the_tensor(tmp_path, rec_path):
    path = save_hat_weights(weights(), tmp_path / "w.safetensors")
    flat = load_file(str(path))
    flat["layer.x.query_matrix.0"] = flat.pop("layer.0.query_matrix.0")
    bad = tmp_path / "bad.safetensors"
    save_file(flat, str(bad))
    with pytest.raises(ConfigError) as info:
        load_hat_weights(bad)
    assert str(bad) in str(info.value) and "'layer.x.query_matrix.0'" in str(info.value)
    assert "layer 'x' is not a whole number" in str(info.value)
    refused(tmp_path, rec_path, bad, "'layer.x.query_matrix.0'")
    # as a user runs it: one line on stderr, exit 2, no traceback
    study = tmp_path / "study.yaml"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmark" / "run_optimize_configs.py"),
                           "--config", str(study), "--results-dir", str(tmp_path / "results"),
                           "--quiet"], capture_output=True, text=True, cwd=str(ROOT),
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert "'layer.x.query_matrix.0'" in proc.stderr


def test_missing_biases_and_gaps_in_the_indices_are_refused(tmp_path, rec_path):
    flat = load_file(str(save_hat_weights(weights(), tmp_path / "w.safetensors")))
    no_bias = {k: v for k, v in flat.items() if ".key_bias." not in k}
    path = tmp_path / "no_bias.safetensors"
    save_file(no_bias, str(path))
    refused(tmp_path, rec_path, path, "layer.0.key_bias.<I> have I = none")
    gap = {k.replace("query_matrix.1", "query_matrix.2"): v for k, v in flat.items()}
    path = tmp_path / "gap.safetensors"
    save_file(gap, str(path))
    refused(tmp_path, rec_path, path, "query_matrix.<I> have I = 0, 2")
    wrong_bias = dict(flat)
    wrong_bias["layer.1.query_bias.0"] = wrong_bias["layer.1.query_bias.0"][:, :3].contiguous()
    path = tmp_path / "wrong_bias.safetensors"
    save_file(wrong_bias, str(path))
    refused(tmp_path, rec_path, path, "layer 1", "query_bias[0] has shape (4, 3)")


def test_shapes_are_checked_against_the_recordings_and_the_masker(tmp_path, rec_path):
    path = save_hat_weights(weights(dim=8), tmp_path / "dim8.safetensors")
    refused(tmp_path, rec_path, path, "head dim 16", "query_matrix[0] has shape (4, 8, 6)")
    path = save_hat_weights(weights(heads=8, kv=2), tmp_path / "heads8.safetensors")
    refused(tmp_path, rec_path, path, "query_matrix has 8 heads", "4 heads, 2 KV heads")
    path = save_hat_weights(weights(bits=4), tmp_path / "bits4.safetensors")
    refused(tmp_path, rec_path, path, "hat_bits 8")
    path = save_hat_weights(weights(layers=1), tmp_path / "one_layer.safetensors")
    refused(tmp_path, rec_path, path, "no weights for layer(s) 1")
    # hat_bits searched: the sizes the recordings fix are still checked
    path = save_hat_weights(weights(dim=8), tmp_path / "dim8b.safetensors")
    refused(tmp_path, rec_path, path, "query_matrix[0] has shape (4, 8, 6)",
            searched={"hat_bits": {"search": "choice", "values": [4, 8]}})


def test_matching_weights_pass_the_checks(tmp_path, rec_path):
    from sah.runs.artefacts import RunArtefacts
    from sah.study.parse import load_study
    path = save_hat_weights(weights(), tmp_path / "good.safetensors")
    study_file = tmp_path / "study.yaml"
    study_file.write_text(yaml.safe_dump({"name": "w", "recording": str(rec_path),
                                          "searcher": "random", "num_samples": 2,
                                          "chains": [{"name": "h", "maskers": [
                                              {**HAT, "hat_weight_file": str(path)}]}]}))
    study = load_study(study_file, {})
    artefacts = RunArtefacts.of_run(study, tmp_path / "results" / "w")
    artefacts.load(fitted=False)
    from sah.recording.format import load_recording
    artefacts.check_shapes(study, load_recording(rec_path))  # no error
