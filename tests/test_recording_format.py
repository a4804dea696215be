"""Round trips of the recording format and one test per kind of bad file."""

import hashlib
import json
import os
import struct

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from sah.recording.format import (LayerRecording, Recording, RecordingError, load_recording,
                                  save_recording, write_raw_recording)
from sah.recording.synthetic import make_synthetic_recording


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
