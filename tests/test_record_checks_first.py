"""``sah record`` checks what it can before the slow model load: ``--query-fraction`` is
refused naming the flag, and a text too short for ``--tokens`` is found with the tokenizer
alone (here a model folder that holds only a tokenizer: the text's length is reported, not
the missing weights)."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def record(*argv):
    proc = subprocess.run([sys.executable, "-m", "sah.cli", "record", *map(str, argv)],
                          capture_output=True, text=True, cwd=str(ROOT),
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin",
                               "HF_HUB_OFFLINE": "1"}, timeout=300)
    return proc.returncode, proc.stderr


@pytest.mark.parametrize("fraction", ["0", "-0.5", "1.5", "nan"])
def test_query_fraction_is_refused_naming_the_flag(tmp_path, fraction):
    code, err = record("--query-fraction", fraction, "--out", tmp_path / "r.safetensors")
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("sah record: error: --query-fraction: got ")
    assert "final_fraction" not in err and "(0, 1]" in err
    assert not (tmp_path / "r.safetensors").exists()


def test_a_short_text_is_refused_with_the_tokenizer_alone(tmp_path):
    from sah.recording.default_model import load_default_tokenizer
    tokenizer_only = tmp_path / "tokenizer-only"
    load_default_tokenizer().save_pretrained(str(tokenizer_only))  # no model weights in it
    text = tmp_path / "short.txt"
    text.write_text("A short text of a few words.\n")
    code, err = record("--model", tokenizer_only, "--text", text, "--tokens", 64, "--queries", 4,
                       "--out", tmp_path / "r.safetensors")
    assert code == 2, err
    assert err.count("\n") == 1 and f"--text {text}" in err and "need 64" in err, err
    assert "cannot load a causal LM" not in err
