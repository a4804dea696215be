"""``--storage-path`` (or the study's ``storage_path``) that cannot be written is refused with
one line before anything is written, so no ``run.yaml`` stub blocks the retry with a
corrected path."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sah.infra.checks import ConfigError
from sah.recording import make_synthetic_recording, save_recording
from sah.tuning.runner import RunOptions, run_study

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def study(tmp_path):
    rec = tmp_path / "rec.safetensors"
    save_recording(make_synthetic_recording(num_layers=1, num_heads=2, num_kv_heads=1,
                                            head_dim=8, num_keys=32, num_queries=2, seed=0), rec)
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({"name": "st", "recording": str(rec), "searcher": "random",
                                    "num_samples": 1, "chains": [{"name": "c", "maskers": [
                                        {"type": "LocalMaskerConfig", "window_size": 4}]}]}))
    return path


@pytest.mark.parametrize("where", ["/proc/nope", "file", "file/below"])
def test_an_unwritable_storage_path_is_refused_before_anything_is_written(tmp_path, study, where):
    (tmp_path / "file").write_text("x")
    storage = where if where.startswith("/") else str(tmp_path / where)
    results = tmp_path / "results"
    with pytest.raises(ConfigError) as info:
        run_study(RunOptions(config=str(study), results_dir=str(results), storage_path=storage,
                             progress=False))
    message = str(info.value)
    assert message.startswith(f"--storage-path {storage}: ") and "\n" not in message
    assert "pass a folder you can write to" in message
    assert not results.exists()


def test_the_cli_refusal_is_one_line_and_leaves_no_stub(tmp_path, study):
    results = tmp_path / "results"
    proc = subprocess.run([sys.executable, "-m", "sah.cli", "tune", "--config", str(study),
                           "--results-dir", str(results), "--storage-path", "/proc/nope",
                           "--quiet"], capture_output=True, text=True, cwd=str(ROOT),
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "--storage-path /proc/nope: cannot write" in proc.stderr
    assert not (results / "st").exists()
