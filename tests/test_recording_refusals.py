"""Regression tests for issue 15 items 3, 9 and 21 (the recording side of the hardening issue).

Each test fails on the code before its fix (checked against main at 16205eb).
"""

import json
import struct

import pytest
import torch

from sah.attention import ResearchAttentionConfig
from sah.cli import main as sah_main
from sah.maskers.local import LocalMaskerConfig
from sah.maskers.sink import SinkMaskerConfig
from sah.recording.format import (FORMAT_VERSION, LayerRecording, Recording, RecordingError, load_recording,
                                  save_recording, write_raw_recording)
from sah.recording.synthetic import make_synthetic_recording


def small(**kw):
    args = dict(num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16, num_keys=256,
                num_queries=8, seed=5)
    args.update(kw)
    return make_synthetic_recording(**args)


def edit_header(path, edit):
    """Rewrite a safetensors file's JSON header with ``edit(header)`` applied, keeping the
    tensor bytes (and so the stored content hash) exactly as they are."""
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + length])
    edit(header)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + length:])


def edit_sah_metadata(path, edit):
    def apply(header):
        meta = json.loads(header["__metadata__"]["sah"])
        edit(meta)
        header["__metadata__"]["sah"] = json.dumps(meta)
    edit_header(path, apply)


def chain_file(tmp_path):
    cfg = ResearchAttentionConfig([SinkMaskerConfig(sink_size=4), LocalMaskerConfig(window_size=8)])
    return str(cfg.to_file(tmp_path / "chain.yaml"))


# ------------------------------------------------------------------------------ item 3
def test_issue15_item3_hash_covers_scaling(tmp_path):
    """Issue 15 item 3: the content hash did not cover ``scaling``; editing it in the header
    loaded silently and changed output_error. Now the edit is refused as a hash mismatch."""
    path = save_recording(small(), tmp_path / "r.safetensors")
    before = load_recording(path)
    edit_sah_metadata(path, lambda m: m.update(scaling=m["scaling"] * 1000))
    with pytest.raises(RecordingError, match=r"r.safetensors content hash mismatch"):
        load_recording(path)
    # the text span (what keeps fit and scored recordings apart) is covered too
    path2 = save_recording(Recording(before.layers, before.query_positions, before.scaling,
                                     {"text_sha256": "ab" * 32, "token_start": 0,
                                      "token_end": 256}), tmp_path / "t.safetensors")
    load_recording(path2)
    edit_sah_metadata(path2, lambda m: m.update(token_start=4096, token_end=4352))
    with pytest.raises(RecordingError, match="content hash mismatch"):
        load_recording(path2)


def test_issue15_item3_version1_files_still_verified(tmp_path, capsys):
    """Issue 15 item 3 (old files): a format-version-1 file loads, verified with the v1 hash
    (tensors only); a damaged tensor is still caught, and `sah inspect` says how to have
    scaling covered."""
    rec = small()
    path = save_recording(rec, tmp_path / "v1.safetensors")
    from safetensors import safe_open
    with safe_open(str(path), "pt") as fh:
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
        meta = json.loads(fh.metadata()["sah"])
    meta["format_version"] = 1
    write_raw_recording(tensors, meta, path)  # hash by the version-1 definition
    back = load_recording(path)
    assert back.metadata["format_version"] == 1 and torch.equal(back.layers[1].keys,
                                                                rec.layers[1].keys)
    assert sah_main(["inspect", str(path)]) == 0
    assert "version 1 (its content hash does not cover scaling" in capsys.readouterr().out
    tensors["layer.1.keys"][0, 0, 0, 0] += 1
    from safetensors.torch import save_file
    save_file(tensors, str(path), metadata={"sah": json.dumps(meta)})  # old hash kept
    with pytest.raises(RecordingError, match="content hash mismatch"):
        load_recording(path)


# ------------------------------------------------------------------------------ item 9
@pytest.mark.parametrize("edit,message", [
    (lambda h: h.update(__metadata__="sah"), r"__metadata__ is str 'sah', not an object"),
    (lambda h: h["layer.0.keys"].update(data_offsets="0,10"),
     r"tensor 'layer.0.keys' data_offsets is '0,10', not \[begin, end\]"),
    (lambda h: h["layer.0.keys"].update(data_offsets=[]),
     r"tensor 'layer.0.keys' data_offsets is \[\], not \[begin, end\]"),
    (lambda h: h["query_positions"].update(shape="8"), r"tensor 'query_positions' shape is '8'"),
    (lambda h: h.update(extra=3), r"tensor 'extra' entry is int 3, not an object"),
])
def test_issue15_item9_malformed_headers(tmp_path, capsys, edit, message):
    """Issue 15 item 9: a header whose __metadata__ is a string or whose data_offsets is a
    string or [] gave AttributeError/TypeError/IndexError, in `sah inspect` and `sah resources`
    too. Now: a RecordingError naming the file, one error line from both commands."""
    path = save_recording(small(), tmp_path / "bad.safetensors")
    edit_header(path, edit)
    with pytest.raises(RecordingError, match=f"recording {path} has a corrupt header: {message}"):
        load_recording(path)
    assert sah_main(["inspect", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sah inspect: error: recording ") and str(path) in err
    assert err.count("\n") == 1
    assert sah_main(["resources", "--recording", str(path), "--config", chain_file(tmp_path),
                     "--layer", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sah resources: error: recording ") and "corrupt header" in err


def _empty_dim(b=1, h=4, hk=2, q=3, n=16, d=8):
    g = torch.Generator().manual_seed(0)
    layer = LayerRecording(0, torch.randn(b, h, q, d, generator=g).half(),
                           torch.randn(b, hk, n, d, generator=g).half(),
                           torch.randn(b, hk, n, d, generator=g).half())
    return ({"query_positions": torch.arange(n - q, n), "layer.0.queries": layer.queries,
             "layer.0.keys": layer.keys, "layer.0.values": layer.values},
            {"format": "sah-recording", "format_version": FORMAT_VERSION, "sah_version": "0", "model_id": "x",
             "layers": [0], "batch_size": b, "num_heads": h, "num_kv_heads": hk, "head_dim": d,
             "num_keys": n, "num_queries": q, "scaling": 0.125, "dtype": "float16",
             "query_positions": list(range(n - q, n)), "num_tokens": n, "text_source": "x"})


@pytest.mark.parametrize("dims,message", [
    (dict(n=0, q=0), "0 queries and 0 keys"),
    (dict(h=0), "0 query heads"),
    (dict(b=0), "0 batch size"),
    (dict(d=0), "0 head dim"),
])
def test_issue15_item9_empty_dimensions_refused(tmp_path, capsys, dims, message):
    """Issue 15 item 9: zero keys, zero heads or batch 0 loaded and crashed later; head_dim 0
    loaded and scored output_error 0.0. Now each is refused on load, naming the file."""
    tensors, meta = _empty_dim(**dims)
    path = write_raw_recording(tensors, meta, tmp_path / "empty.safetensors")
    with pytest.raises(RecordingError, match=f"recording {path}: layer 0 has {message}"):
        load_recording(path)
    assert sah_main(["inspect", str(path)]) == 2
    assert f"{path}: layer 0 has {message}" in capsys.readouterr().err


def test_issue15_item9_directory_is_reported_as_a_directory(tmp_path, capsys):
    """Issue 15 item 9: a directory given as a recording was reported as "does not exist"."""
    with pytest.raises(RecordingError, match=f"recording {tmp_path} is a directory"):
        load_recording(tmp_path)
    for argv in (["inspect", str(tmp_path)],
                 ["resources", "--recording", str(tmp_path), "--config", chain_file(tmp_path),
                  "--layer", "0"]):
        assert sah_main(argv) == 2
        err = capsys.readouterr().err
        assert f"{tmp_path} is a directory" in err and "not" in err and "exist" not in err


# ----------------------------------------------------------------------------- item 21
@pytest.fixture
def seeded_default(tmp_path, monkeypatch):
    """The embedded recording ``default`` placed in a fresh cache (a small synthetic
    recording stamped with the embedded spec), so that name resolution is tested without
    the model run; ensure_recordings finds and verifies it like any cached file."""
    from sah.recording.embedded import parse_embedded

    monkeypatch.setenv("SAH_CACHE_DIR", str(tmp_path / "cache"))
    item = parse_embedded("default")
    rec = small()
    rec.layers = [LayerRecording(3, lr.queries, lr.keys, lr.values) for lr in rec.layers[:1]]
    rec.metadata["embedded_spec"] = item.spec()
    return save_recording(rec, item.path())


def test_issue15_item21_embedded_names_in_patterns_and_resources(seeded_default, tmp_path, capsys):
    """Issue 15 item 21: `default` was accepted by `sah inspect` and studies but not by
    `sah patterns` / `sah resources` ("recording file not found: default")."""
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


def test_issue15_item21_evaluate_config_takes_a_path_or_name(seeded_default, tmp_path):
    """Issue 15 item 21: evaluate_config given a path raised AttributeError: 'PosixPath'
    object has no attribute 'layer_ids'. Now a path, a str or an embedded name is loaded;
    anything else is a TypeError that says what to give."""
    from sah.evaluate import evaluate_config

    cfg = ResearchAttentionConfig([SinkMaskerConfig(sink_size=4), LocalMaskerConfig(window_size=8)])
    path = save_recording(small(), tmp_path / "r.safetensors")
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
