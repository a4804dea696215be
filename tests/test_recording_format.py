"""Round trips of the recording format, its content hash (what it covers, version-1 files)
and one test per kind of bad file (each refused on load, naming the file)."""

import hashlib
import json
import os
import struct

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from sah.cli import main as sah_main
from sah.recording.format import (FORMAT_VERSION, LayerRecording, Recording, RecordingError,
                                  load_recording, save_recording, write_raw_recording)
from sah.recording.synthetic import make_synthetic_recording
from tuning_support import chain_file


def small(**kw):
    args = dict(num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16, num_keys=256,
                num_queries=8, seed=3)
    args.update(kw)
    return make_synthetic_recording(**args)


def parts(path):
    """Tensors and the sah metadata of a saved file, read with safetensors directly."""
    with safe_open(str(path), "pt") as fh:
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
        meta = json.loads(fh.metadata()["sah"])
    return tensors, meta


@pytest.fixture
def saved(tmp_path):
    rec = small()
    path = save_recording(rec, tmp_path / "rec.safetensors")
    return rec, path


def test_round_trip_exact(saved):
    rec, path = saved
    back = load_recording(path)
    assert back.layer_ids == rec.layer_ids == [0, 1]
    assert back.scaling == rec.scaling
    assert torch.equal(back.query_positions, rec.query_positions)
    for a, b in zip(rec.layers, back.layers):
        for name in ("queries", "keys", "values"):
            assert torch.equal(getattr(a, name), getattr(b, name))
            assert getattr(b, name).dtype == torch.float16
    m = back.metadata
    assert (m["num_heads"], m["num_kv_heads"], m["head_dim"], m["num_keys"], m["num_queries"]) \
        == (4, 2, 16, 256, 8)
    assert m["model_id"] == "synthetic" and m["dtype"] == "float16" and m["layers"] == [0, 1]
    assert m["query_positions"] == rec.query_positions.tolist()
    assert m["generator"]["seed"] == 3
    # the stored hash is sha256 over name|dtype|shape|bytes in name order, then (format 2)
    # the canonical JSON of the hashed metadata present (recomputed here)
    assert m["format_version"] == 2
    digest = hashlib.sha256()
    tensors, _ = parts(path)
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        digest.update(f"{name}|{t.dtype}|{list(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    digest.update(b"metadata|" + json.dumps({"scaling": m["scaling"]}).encode())
    assert m["content_hash"] == "sha256:" + digest.hexdigest()
    # the float32 context of a loaded layer equals that of the original
    assert torch.allclose(back.context(1).dense_output, rec.context(1).dense_output)


@pytest.mark.parametrize("dtype", ["bfloat16", "float32", torch.float16])
def test_round_trip_storage_dtypes(tmp_path, dtype):
    rec = small(dtype=torch.float32)
    path = save_recording(rec, tmp_path / "r.safetensors", dtype=dtype)
    back = load_recording(path)
    want = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    assert back.dtype == want
    assert torch.equal(back.layers[0].keys, rec.layers[0].keys.to(want))
    assert os.listdir(tmp_path) == ["r.safetensors"]  # no temp file left behind


def test_resave_of_loaded_recording_is_identical(saved, tmp_path):
    _, path = saved
    again = save_recording(load_recording(path), tmp_path / "again.safetensors")
    assert parts(again)[1] == parts(path)[1]


def test_failed_save_writes_nothing_and_keeps_old_file(saved):
    rec, path = saved
    before = path.read_bytes()
    bad = small()
    bad.layers[1].values[0, 0, 5, 0] = float("nan")
    with pytest.raises(RecordingError, match="layer 1 values contain NaN or Inf"):
        save_recording(bad, path)
    assert path.read_bytes() == before
    assert sorted(os.listdir(path.parent)) == ["rec.safetensors"]
    with pytest.raises(RecordingError, match="is not one of"):
        save_recording(rec, path, dtype="int8")


def test_missing_file(tmp_path):
    with pytest.raises(RecordingError, match="recording file not found: .*nope.safetensors"):
        load_recording(tmp_path / "nope.safetensors")


def test_truncated_file(saved):
    _, path = saved
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 1000])
    with pytest.raises(RecordingError, match="is truncated: tensor data needs"):
        load_recording(path)
    path.write_bytes(data[:5])
    with pytest.raises(RecordingError, match=r"is truncated \(5 bytes\)"):
        load_recording(path)
    path.write_bytes(data[:100])
    with pytest.raises(RecordingError, match="truncated or corrupt: header claims"):
        load_recording(path)


def test_corrupt_header(saved):
    _, path = saved
    data = bytearray(path.read_bytes())
    data[8:20] = b"\xff" * 12
    path.write_bytes(bytes(data))
    with pytest.raises(RecordingError, match="has a corrupt header"):
        load_recording(path)


def test_not_a_sah_recording(tmp_path):
    path = tmp_path / "plain.safetensors"
    save_file({"x": torch.zeros(3)}, str(path))
    with pytest.raises(RecordingError, match="has no 'sah' metadata: it is not a sah recording"):
        load_recording(path)


def rewrite(path, edit_tensors=None, edit_meta=None):
    """Re-write a saved recording with edited tensors/metadata and a *valid* content hash."""
    tensors, meta = parts(path)
    if edit_tensors:
        edit_tensors(tensors)
    if edit_meta:
        edit_meta(meta)
    write_raw_recording(tensors, meta, path)


def test_shape_mismatch_across_layers(saved):
    _, path = saved
    def shorter(t):
        t["layer.1.keys"] = t["layer.1.keys"][:, :, :200].contiguous()
    rewrite(path, shorter)
    with pytest.raises(RecordingError, match=r"layer 1 keys have shape \(1, 2, 200, 16\) but layer "
                                             r"0 implies \(1, 2, 256, 16\)"):
        load_recording(path)


def test_gqa_mismatch(tmp_path):
    rec = small()
    q = torch.randn(1, 3, 8, 16).half()  # 3 query heads over 2 KV heads
    bad = Recording([LayerRecording(0, q, rec.layers[0].keys, rec.layers[0].values)],
                    rec.query_positions, rec.scaling, dict(rec.metadata))
    with pytest.raises(RecordingError, match=r"query heads \(3\) must be a multiple of key/value "
                                             r"heads \(2\)"):
        save_recording(bad, tmp_path / "g.safetensors")
    path = save_recording(small(), tmp_path / "g.safetensors")
    def three_heads(t):
        for i in (0, 1):
            t[f"layer.{i}.queries"] = t[f"layer.{i}.queries"][:, :3].contiguous()
    rewrite(path, three_heads)
    with pytest.raises(RecordingError, match=r"query heads \(3\) must be a multiple"):
        load_recording(path)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_values(saved, value):
    _, path = saved
    def poison(t):
        t["layer.0.keys"][0, 1, 17, 3] = value
    rewrite(path, poison)
    with pytest.raises(RecordingError, match="layer 0 keys contain NaN or Inf"):
        load_recording(path)


def test_positions_beyond_keys(saved):
    _, path = saved
    def beyond(t):
        t["query_positions"] = t["query_positions"] + 10
    def meta(m):
        m["query_positions"] = [p + 10 for p in m["query_positions"]]
    rewrite(path, beyond, meta)
    with pytest.raises(RecordingError, match=r"query positions must lie inside the keys \[0, 255\]"):
        load_recording(path)


def test_positions_not_increasing(saved):
    _, path = saved
    def swap(t):
        t["query_positions"] = t["query_positions"].flip(0).contiguous()
    rewrite(path, swap)
    with pytest.raises(RecordingError, match="strictly increasing"):
        load_recording(path)


def test_missing_metadata(saved):
    _, path = saved
    rewrite(path, edit_meta=lambda m: (m.pop("model_id"), m.pop("scaling")))
    with pytest.raises(RecordingError, match="metadata lacks model_id, scaling"):
        load_recording(path)


def test_metadata_disagrees_with_tensors(saved):
    _, path = saved
    rewrite(path, edit_meta=lambda m: m.update(num_heads=9))
    with pytest.raises(RecordingError, match="metadata says num_heads=9 but the tensors have 4"):
        load_recording(path)


def test_missing_tensor(saved):
    _, path = saved
    rewrite(path, lambda t: t.pop("layer.1.values"))
    with pytest.raises(RecordingError, match=r"missing \['layer.1.values'\]"):
        load_recording(path)


def test_hash_mismatch(saved):
    _, path = saved
    data = bytearray(path.read_bytes())
    (header_len,) = struct.unpack("<Q", bytes(data[:8]))
    header = json.loads(bytes(data[8:8 + header_len]))
    start = header["layer.0.values"]["data_offsets"][0]
    data[8 + header_len + start] ^= 0x01  # lowest mantissa bit of the first float16 value
    path.write_bytes(bytes(data))
    with pytest.raises(RecordingError, match="content hash mismatch: stored sha256:"):
        load_recording(path)
    assert load_recording(path, verify_hash=False).num_keys == 256


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


def test_content_hash_covers_scaling_and_the_text_span(tmp_path):
    """The content hash covers ``scaling`` and the text span (what keeps fit and scored
    recordings apart): editing either in the header is refused as a hash mismatch, never
    loaded silently."""
    path = save_recording(small(seed=5), tmp_path / "r.safetensors")
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


def test_format_version_1_files_still_load_verified_by_their_own_hash(tmp_path, capsys):
    """A format-version-1 file loads, verified with the v1 hash (tensors only); a damaged
    tensor is still caught, and `sah inspect` says how to have scaling covered."""
    rec = small(seed=5)
    path = save_recording(rec, tmp_path / "v1.safetensors")
    tensors, meta = parts(path)
    meta["format_version"] = 1
    write_raw_recording(tensors, meta, path)  # hash by the version-1 definition
    back = load_recording(path)
    assert back.metadata["format_version"] == 1 and torch.equal(back.layers[1].keys,
                                                                rec.layers[1].keys)
    assert sah_main(["inspect", str(path)]) == 0
    assert "version 1 (its content hash does not cover scaling" in capsys.readouterr().out
    tensors["layer.1.keys"][0, 0, 0, 0] += 1
    save_file(tensors, str(path), metadata={"sah": json.dumps(meta)})  # old hash kept
    with pytest.raises(RecordingError, match="content hash mismatch"):
        load_recording(path)


@pytest.mark.parametrize("edit,message", [
    (lambda h: h.update(__metadata__="sah"), r"__metadata__ is str 'sah', not an object"),
    (lambda h: h["layer.0.keys"].update(data_offsets="0,10"),
     r"tensor 'layer.0.keys' data_offsets is '0,10', not \[begin, end\]"),
    (lambda h: h["layer.0.keys"].update(data_offsets=[]),
     r"tensor 'layer.0.keys' data_offsets is \[\], not \[begin, end\]"),
    (lambda h: h["query_positions"].update(shape="8"), r"tensor 'query_positions' shape is '8'"),
    (lambda h: h.update(extra=3), r"tensor 'extra' entry is int 3, not an object"),
])
def test_malformed_headers_are_one_error_naming_the_file(tmp_path, capsys, edit, message):
    """A header whose __metadata__ is a string, whose data_offsets is a string or [], whose
    shape is a string, or with a non-object entry: a RecordingError naming the file and the
    fault, and one error line from `sah inspect` and `sah resources`."""
    path = save_recording(small(seed=5), tmp_path / "bad.safetensors")
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
def test_empty_dimensions_are_refused_on_load(tmp_path, capsys, dims, message):
    """Zero keys, zero heads, batch 0 or head_dim 0 are refused on load, naming the file and
    the dimension (never loaded to crash later or score an error of 0.0)."""
    tensors, meta = _empty_dim(**dims)
    path = write_raw_recording(tensors, meta, tmp_path / "empty.safetensors")
    with pytest.raises(RecordingError, match=f"recording {path}: layer 0 has {message}"):
        load_recording(path)
    assert sah_main(["inspect", str(path)]) == 2
    assert f"{path}: layer 0 has {message}" in capsys.readouterr().err


def test_a_directory_given_as_a_recording_is_reported_as_a_directory(tmp_path, capsys):
    """A directory given as a recording is reported as a directory (not as "does not
    exist"), by the loader and by `sah inspect` and `sah resources`."""
    with pytest.raises(RecordingError, match=f"recording {tmp_path} is a directory"):
        load_recording(tmp_path)
    for argv in (["inspect", str(tmp_path)],
                 ["resources", "--recording", str(tmp_path), "--config", chain_file(tmp_path),
                  "--layer", "0"]):
        assert sah_main(argv) == 2
        err = capsys.readouterr().err
        assert f"{tmp_path} is a directory" in err and "not" in err and "exist" not in err
