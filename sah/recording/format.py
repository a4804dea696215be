"""The recording format: one safetensors file, tensors plus JSON metadata, never pickle.

Tensors per recorded layer ``L``: ``layer.L.queries`` ``(b, h, q, d)`` at the recorded
query positions, ``layer.L.keys`` and ``layer.L.values`` ``(b, hk, n, d)`` (post-RoPE, as
attention sees them), and ``query_positions`` ``(q,)`` int64 absolute key positions
(query ``i`` may see keys ``[0, query_positions[i]]``). The safetensors header's
``__metadata__`` holds one key, ``sah``, a JSON document:

``format`` ("sah-recording"), ``format_version``, ``sah_version``, ``model_id``, ``layers``,
``batch_size``, ``num_heads``, ``num_kv_heads``, ``head_dim``, ``num_keys``, ``num_queries``,
``scaling``, ``dtype``, ``query_positions``, ``num_tokens``, ``text_source`` and
``content_hash``, plus any extra keys the maker adds (for example ``generator`` for synthetic
data; recordings of a text add ``text_name``, ``text_sha256``, ``token_start`` and
``token_end``, the token span ``[token_start, token_end)`` of the text they hold), and
``layer_types``: each layer's attention type (:mod:`sah.layer_types`; absent = all full).

``content_hash`` is ``"sha256:<hex>"`` over every tensor's name, dtype, shape and bytes, in
name order (the layer ids and query positions are tensor names and a tensor), then, from
format version 2, over the metadata fields in :data:`HASHED_METADATA` that are present:
``scaling`` (the only metadata that enters a figure) and the text's identity and span (what
studies compare to keep fit and scored recordings apart). Version-1 files (hash over the
tensors only) still load, verified with their own definition; re-make them to have
``scaling`` covered (embedded recordings are re-made automatically).

Tensors are stored in float16, bfloat16 or float32 (one dtype for the file); the
:meth:`Recording.context` view computes in float32. :func:`save_recording` writes a temporary
file next to the target and renames it, so a failed save leaves nothing half-written.
:func:`load_recording` checks everything and raises :class:`RecordingError` naming the file
and what is wrong.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import torch

from sah.context import AttentionContext
from sah.infra.files import atomic_write_with
from sah.layer_types import LayerType, read_layer_types

FORMAT_NAME = "sah-recording"
FORMAT_VERSION = 2
#: Format versions :func:`load_recording` reads (each verified with its own hash definition).
READABLE_VERSIONS = (1, 2)
#: Metadata covered by the content hash (format version >= 2), when present.
HASHED_METADATA = ("scaling", "text_sha256", "token_start", "token_end", "layer_types")
METADATA_KEY = "sah"
STORAGE_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
REQUIRED_METADATA = (
    "format", "format_version", "sah_version", "model_id", "layers", "batch_size", "num_heads",
    "num_kv_heads", "head_dim", "num_keys", "num_queries", "scaling", "dtype", "query_positions",
    "num_tokens", "text_source", "content_hash",
)
# keys save_recording derives from the tensors (a recording's own values are overwritten)
_DERIVED = ("format", "format_version", "sah_version", "layers", "batch_size", "num_heads",
            "num_kv_heads", "head_dim", "num_keys", "num_queries", "scaling", "dtype",
            "query_positions", "content_hash")


class RecordingError(ValueError):
    """A recording file is missing, corrupt or inconsistent. The message says which and why."""


@dataclass
class LayerRecording:
    layer: int
    queries: torch.Tensor  # (b, h, q, d)
    keys: torch.Tensor     # (b, hk, n, d)
    values: torch.Tensor   # (b, hk, n, d)


@dataclass
class Recording:
    layers: List[LayerRecording]
    query_positions: torch.Tensor  # (q,) int64
    scaling: float
    metadata: Dict[str, Any] = field(default_factory=dict)

    @property
    def num_heads(self) -> int:
        return int(self.layers[0].queries.shape[1])

    @property
    def num_kv_heads(self) -> int:
        return int(self.layers[0].keys.shape[1])

    @property
    def head_dim(self) -> int:
        return int(self.layers[0].queries.shape[-1])

    @property
    def num_keys(self) -> int:
        return int(self.layers[0].keys.shape[2])

    @property
    def num_queries(self) -> int:
        return int(self.layers[0].queries.shape[2])

    @property
    def layer_ids(self) -> List[int]:
        return [lr.layer for lr in self.layers]

    @property
    def dtype(self) -> torch.dtype:
        return self.layers[0].keys.dtype

    @property
    def model_id(self) -> str:
        return str(self.metadata.get("model_id", "unknown"))

    @property
    def text_source(self) -> str:
        return str(self.metadata.get("text_source", "unknown"))

    def layer_type(self, index: int) -> LayerType:
        """The attention type of the ``index``-th recorded layer (full when not stored)."""
        layer = self.layers[index].layer
        return read_layer_types(self.metadata.get("layer_types"), self.layer_ids, "recording")[layer]

    def context(self, index: int, device: Union[str, torch.device, None] = None,
                dtype: Optional[torch.dtype] = torch.float32) -> AttentionContext:
        """The :class:`AttentionContext` of the ``index``-th recorded layer.

        ``dtype=torch.float32`` (default) converts the stored tensors once (fastest when a
        context is reused by many trials); ``dtype=None`` keeps the stored half precision,
        and the context converts keys and values block by block (least memory).
        """
        lr = self.layers[index]
        dev = device if device is not None else lr.keys.device
        return AttentionContext(lr.queries.to(dev, dtype or lr.queries.dtype),
                                lr.keys.to(dev, dtype or lr.keys.dtype),
                                lr.values.to(dev, dtype or lr.values.dtype), scaling=self.scaling,
                                query_positions=self.query_positions.to(dev),
                                layer_type=self.layer_type(index))

    def validate(self, source: str = "recording") -> None:
        """Raise :class:`RecordingError` unless shapes, dtypes, positions and values agree."""
        validate_recording(self, source)


# ---------------------------------------------------------------------------- checks
def validate_recording(rec: Recording, source: str = "recording") -> None:
    """Every consistency check the loader makes on the tensors (see the module docstring)."""
    def fail(msg: str) -> None:
        raise RecordingError(f"{source}: {msg}")

    if not rec.layers:
        fail("has no layers; record at least one layer")
    ids = rec.layer_ids
    if len(set(ids)) != len(ids) or any(int(i) < 0 for i in ids):
        fail(f"layer ids must be distinct and >= 0; got {ids}")
    first = rec.layers[0]
    if first.queries.dim() != 4 or first.keys.dim() != 4:
        fail(f"layer {first.layer}: queries must be (b, h, q, d) and keys (b, hk, n, d); got "
             f"{tuple(first.queries.shape)} and {tuple(first.keys.shape)}")
    b, h, q, d = first.queries.shape
    hk, n = first.keys.shape[1], first.keys.shape[2]
    sizes = (("batch size", b), ("query heads", h), ("queries", q), ("head dim", d),
             ("key/value heads", hk), ("keys", n))
    empty = [name for name, size in sizes if size < 1]
    if empty:
        fail(f"layer {first.layer} has {' and '.join(f'0 {e}' for e in empty)} (queries "
             f"{tuple(first.queries.shape)}, keys {tuple(first.keys.shape)}); a recording needs "
             f"at least one of each, re-make it")
    if h % hk != 0:
        fail(f"query heads ({h}) must be a multiple of key/value heads ({hk}) (grouped-query "
             f"attention)")
    dtype = first.keys.dtype
    if dtype not in STORAGE_DTYPES.values():
        fail(f"dtype {dtype} is not one of {sorted(STORAGE_DTYPES)}")
    want_q, want_kv = (b, h, q, d), (b, hk, n, d)
    for lr in rec.layers:
        for name, t, want in (("queries", lr.queries, want_q), ("keys", lr.keys, want_kv),
                              ("values", lr.values, want_kv)):
            if tuple(t.shape) != want:
                fail(f"layer {lr.layer} {name} have shape {tuple(t.shape)} but layer "
                     f"{first.layer} implies {want}; all layers must share one shape")
            if t.dtype != dtype:
                fail(f"layer {lr.layer} {name} are {t.dtype} but layer {first.layer} keys are "
                     f"{dtype}; store every tensor in one dtype")
            if not bool(torch.isfinite(t).all()):
                fail(f"layer {lr.layer} {name} contain NaN or Inf values")
    pos = rec.query_positions
    if not isinstance(pos, torch.Tensor) or pos.dim() != 1 or pos.dtype != torch.int64:
        fail("query_positions must be a 1-D int64 tensor")
    if pos.numel() != q:
        fail(f"query_positions has {pos.numel()} entries but queries have {q}")
    if int(pos.min()) < 0 or int(pos.max()) >= n:
        fail(f"query positions must lie inside the keys [0, {n - 1}]; got "
             f"[{int(pos.min())}, {int(pos.max())}]")
    if q > 1 and not bool((pos[1:] > pos[:-1]).all()):
        fail("query positions must be strictly increasing")
    if not (isinstance(rec.scaling, (int, float)) and math.isfinite(rec.scaling) and rec.scaling > 0):
        fail(f"scaling must be a finite positive number; got {rec.scaling!r}")
    try:
        read_layer_types(rec.metadata.get("layer_types"), ids, "layer_types")
    except ValueError as exc:
        fail(f"{exc}; re-make it")


def content_hash(tensors: Dict[str, torch.Tensor], metadata: Optional[Dict[str, Any]] = None,
                 version: int = FORMAT_VERSION) -> str:
    """``sha256:<hex>`` over each tensor's name, dtype, shape and raw bytes, in name order;
    from ``version`` 2 also over the :data:`HASHED_METADATA` fields of ``metadata`` that are
    present (as canonical JSON), so editing ``scaling`` or a text span in a header is caught."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        digest.update(f"{name}|{str(t.dtype)}|{list(t.shape)}|".encode())
        if t.numel():
            digest.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
    if version >= 2:
        meta = metadata or {}
        covered = {k: meta[k] for k in HASHED_METADATA if k in meta}
        digest.update(b"metadata|" + json.dumps(covered, sort_keys=True).encode())
    return "sha256:" + digest.hexdigest()


# ---------------------------------------------------------------------------- save
def _tensors_of(rec: Recording) -> Dict[str, torch.Tensor]:
    tensors = {"query_positions": rec.query_positions.detach().to("cpu").contiguous()}
    for lr in rec.layers:
        for name in ("queries", "keys", "values"):
            tensors[f"layer.{lr.layer}.{name}"] = getattr(lr, name).detach().to("cpu").contiguous()
    return tensors


def write_raw_recording(tensors: Dict[str, torch.Tensor], metadata: Dict[str, Any],
                        path: Union[str, Path]) -> Path:
    """Write tensors and metadata (plus a fresh content hash) atomically, WITHOUT checks.

    The building block of :func:`save_recording`; tests use it to make inconsistent files.
    """
    path = Path(path)
    meta = dict(metadata)
    version = meta.get("format_version", FORMAT_VERSION)
    meta["content_hash"] = content_hash(tensors, meta, version if isinstance(version, int)
                                        else FORMAT_VERSION)
    from safetensors.torch import save_file

    header = {METADATA_KEY: json.dumps(meta, sort_keys=True)}
    return atomic_write_with(path, lambda tmp: save_file(tensors, str(tmp), metadata=header))


def save_recording(recording: Recording, path: Union[str, Path],
                   dtype: Union[str, torch.dtype, None] = None) -> Path:
    """Check ``recording`` and write it to ``path`` (atomic: temp file, then rename).

    ``dtype`` ("float16", "bfloat16", "float32" or a torch dtype; default: the tensors'
    own) is the storage dtype. Missing ``model_id``/``text_source`` become "unknown" and
    ``num_tokens`` defaults to the number of keys. Returns the path.
    """
    from sah.infra.version import __version__

    if dtype is not None:
        if isinstance(dtype, str):
            if dtype not in STORAGE_DTYPES:
                raise RecordingError(f"dtype {dtype!r} is not one of {sorted(STORAGE_DTYPES)}")
            dtype = STORAGE_DTYPES[dtype]
        recording = Recording(
            layers=[LayerRecording(lr.layer, lr.queries.to(dtype), lr.keys.to(dtype),
                                   lr.values.to(dtype)) for lr in recording.layers],
            query_positions=recording.query_positions, scaling=recording.scaling,
            metadata=recording.metadata)
    validate_recording(recording, f"cannot save recording to {path}")
    meta = {k: v for k, v in recording.metadata.items() if k not in _DERIVED}
    meta.setdefault("model_id", "unknown")
    meta.setdefault("text_source", "unknown")
    meta.setdefault("num_tokens", recording.num_keys)
    b = int(recording.layers[0].queries.shape[0])
    meta.update(
        format=FORMAT_NAME, format_version=FORMAT_VERSION, sah_version=__version__,
        layers=[int(i) for i in recording.layer_ids], batch_size=b,
        num_heads=recording.num_heads, num_kv_heads=recording.num_kv_heads,
        head_dim=recording.head_dim, num_keys=recording.num_keys,
        num_queries=recording.num_queries, scaling=float(recording.scaling),
        dtype=str(recording.dtype).replace("torch.", ""),
        query_positions=[int(p) for p in recording.query_positions.tolist()])
    return write_raw_recording(_tensors_of(recording), meta, path)


# ---------------------------------------------------------------------------- load
def _check_tensor_entry(path: Path, name: str, info: Any, data_len: int) -> None:
    """One tensor's header entry: ``{"dtype": str, "shape": [int >= 0...], "data_offsets":
    [begin, end]}`` with ``0 <= begin <= end <= data_len``."""
    def bad(what: str) -> RecordingError:
        return RecordingError(f"recording {path} has a corrupt header: tensor {name!r} {what}; "
                              f"re-make it")

    if not isinstance(info, dict):
        raise bad(f"entry is {type(info).__name__} {_short(info)}, not an object")
    if not isinstance(info.get("dtype"), str):
        raise bad(f"dtype is {_short(info.get('dtype'))}, not a string")
    shape = info.get("shape")
    if not isinstance(shape, list) or not all(_is_int(x) and x >= 0 for x in shape):
        raise bad(f"shape is {_short(shape)}, not a list of ints >= 0")
    offsets = info.get("data_offsets")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(x) for x in offsets)
            and 0 <= offsets[0] <= offsets[1]):
        raise bad(f"data_offsets is {_short(offsets)}, not [begin, end] with 0 <= begin <= end")
    if offsets[1] > data_len:
        raise RecordingError(f"recording {path} is truncated: tensor data needs {offsets[1]} "
                             f"bytes but only {data_len} are present; re-make it")


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _read_header(path: Path) -> Dict[str, Any]:
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise RecordingError(f"recording {path} is truncated ({size} bytes): not a safetensors "
                                 f"file; re-make it")
        (header_len,) = struct.unpack("<Q", head)
        if header_len > size - 8:
            raise RecordingError(f"recording {path} is truncated or corrupt: header claims "
                                 f"{header_len} bytes but the file has {size}; re-make it")
        raw = fh.read(header_len)
    try:
        header = json.loads(raw.decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise RecordingError(f"recording {path} has a corrupt header ({exc}); re-make it") from None
    data_len = size - 8 - header_len
    for name, info in header.items():
        if name != "__metadata__":
            _check_tensor_entry(path, name, info, data_len)
    return header


def _metadata_of(path: Path, header: Dict[str, Any]) -> Dict[str, Any]:
    block = header.get("__metadata__")
    if block is not None and not isinstance(block, dict):
        raise RecordingError(f"recording {path} has a corrupt header: __metadata__ is "
                             f"{type(block).__name__} {_short(block)}, not an object of strings; "
                             f"re-make it")
    raw = (block or {}).get(METADATA_KEY)
    if raw is None:
        raise RecordingError(f"{path} has no '{METADATA_KEY}' metadata: it is not a sah recording "
                             f"(make one with `sah record` or save_recording)")
    if not isinstance(raw, str):
        raise RecordingError(f"recording {path} metadata '{METADATA_KEY}' is "
                             f"{type(raw).__name__}, not a JSON string; re-make it")
    try:
        meta = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise RecordingError(f"recording {path} has corrupt metadata JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise RecordingError(f"recording {path} metadata is not a JSON object")
    missing = [k for k in REQUIRED_METADATA if k not in meta]
    if missing:
        raise RecordingError(f"recording {path} metadata lacks {', '.join(missing)}; re-make it "
                             f"with save_recording")
    if meta["format"] != FORMAT_NAME or meta["format_version"] not in READABLE_VERSIONS \
            or isinstance(meta["format_version"], bool):
        raise RecordingError(f"recording {path} has format {_short(meta['format'])} version "
                             f"{_short(meta['format_version'])}; this sah reads {FORMAT_NAME!r} "
                             f"versions {', '.join(map(str, READABLE_VERSIONS))} (re-make it with "
                             f"this sah, or use the sah that made it)")
    if not isinstance(meta["layers"], list) or not all(_is_int(i) for i in meta["layers"]):
        raise RecordingError(f"recording {path} metadata 'layers' is not a list of integers: "
                             f"{_short(meta['layers'])}; re-make it")
    if not isinstance(meta["content_hash"], str):
        raise RecordingError(f"recording {path} metadata 'content_hash' is "
                             f"{_short(meta['content_hash'])}, not a string; re-make it")
    return meta


def load_recording(path: Union[str, Path], device: Union[str, torch.device] = "cpu",
                   verify_hash: bool = True) -> Recording:
    """Load and check a recording (see the module docstring); raises :class:`RecordingError`."""
    path = Path(path)
    if path.is_dir():
        raise RecordingError(f"recording {path} is a directory, not a recording file; give a "
                             f".safetensors recording (or an embedded recording name where a "
                             f"command accepts one)")
    if not path.is_file():
        raise RecordingError(f"recording file not found: {path}; make one with `sah record` "
                             f"(or use the default recording)")
    header = _read_header(path)
    meta = _metadata_of(path, header)
    from safetensors import SafetensorError
    from safetensors.torch import load as load_bytes

    try:
        # read into memory (not mmap): a later in-place rewrite of the file cannot break us
        tensors = load_bytes(path.read_bytes())
    except (SafetensorError, OSError, RuntimeError, ValueError) as exc:
        raise RecordingError(f"recording {path} is corrupt ({exc}); re-make it") from None
    layers = [int(i) for i in meta["layers"]]
    expected = {"query_positions"} | {f"layer.{i}.{n}" for i in layers
                                      for n in ("queries", "keys", "values")}
    missing, extra = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
    if missing or extra:
        raise RecordingError(f"recording {path} tensors do not match its layer list {layers}: "
                             f"missing {missing}, unexpected {extra}")
    if verify_hash:
        actual = content_hash(tensors, meta, meta["format_version"])
        if actual != meta["content_hash"]:
            raise RecordingError(f"recording {path} content hash mismatch: stored "
                                 f"{meta['content_hash']}, computed {actual}; the file was "
                                 f"modified or damaged, re-make it")
    rec = Recording(
        layers=[LayerRecording(i, tensors[f"layer.{i}.queries"], tensors[f"layer.{i}.keys"],
                               tensors[f"layer.{i}.values"]) for i in layers],
        query_positions=tensors["query_positions"], scaling=meta["scaling"], metadata=meta)
    validate_recording(rec, f"recording {path}")
    declared = {"batch_size": int(rec.layers[0].queries.shape[0]), "num_heads": rec.num_heads,
                "num_kv_heads": rec.num_kv_heads, "head_dim": rec.head_dim,
                "num_keys": rec.num_keys, "num_queries": rec.num_queries,
                "dtype": str(rec.dtype).replace("torch.", ""),
                "query_positions": rec.query_positions.tolist()}
    for key, actual_value in declared.items():
        if meta[key] != actual_value:
            shown = "..." if key == "query_positions" else actual_value
            raise RecordingError(f"recording {path} metadata says {key}={meta[key]!r} but the "
                                 f"tensors have {shown}; re-make it")
    if device is not None and torch.device(device).type != "cpu":
        rec = Recording([LayerRecording(lr.layer, lr.queries.to(device), lr.keys.to(device),
                                        lr.values.to(device)) for lr in rec.layers],
                        rec.query_positions.to(device), rec.scaling, meta)
    return rec
