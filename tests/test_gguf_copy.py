"""The float32 copy of a GGUF model in sah's cache: the first load writes it, later loads
read it and give the same weights, tokens and logits; a damaged copy is replaced."""

import torch

from sah.recording.default_model import default_model_path, load_default_model
from sah.recording.gguf_cache import MARKER, converted_folder

TEXT = "def area(r):\n    return 3.14159 * r ** 2  # the circle's area, in m\u00b2\n"


def logits_of(model, tokenizer):
    ids = tokenizer(TEXT, return_tensors="pt").input_ids
    with torch.no_grad():
        return ids, model(ids).logits


def test_the_cached_copy_loads_the_same_model_and_a_damaged_copy_is_replaced(
        tmp_path, monkeypatch):
    monkeypatch.setenv("SAH_CACHE_DIR", str(tmp_path / "cache"))
    folder = converted_folder(default_model_path())
    assert str(folder).startswith(str(tmp_path / "cache" / "models" / "converted"))
    assert not folder.exists()

    first, first_tok = load_default_model()  # reads the GGUF file, writes the copy
    assert (folder / MARKER).is_file() and (folder / "model.safetensors").is_file()
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no leftovers
    second, second_tok = load_default_model()  # from the copy
    ids, expected = logits_of(first, first_tok)
    ids2, got = logits_of(second, second_tok)
    assert torch.equal(ids, ids2)
    assert torch.equal(expected, got)
    assert second.config.num_key_value_heads == first.config.num_key_value_heads
    assert getattr(second.config, "quantization_config", None) is None
    assert second.dtype == torch.float32 and not second.training

    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:4096])  # a cut copy, marker still there
    third, third_tok = load_default_model()
    assert torch.equal(logits_of(third, third_tok)[1], expected)
    assert weights.stat().st_size > 4096  # written again, whole
