"""Embedded recordings: made from the embedded model on first use, cached outside git.

A study, ``sah inspect``, ``sah resources``... accept an embedded recording's NAME wherever a
recording file is asked for:

    TEXT[-TOKENS][@START]      e.g.  docs   code   prose@4096   docs-8192

``TEXT`` is a named text (:mod:`sah.recording.texts`: ``docs``, ``code``, ``prose``, ``manual``;
``default`` = ``docs``), ``TOKENS`` the number of tokens (keys; default 2048, at most the
model's 8192 positions) and ``START`` the token offset where the window starts (default 0).
Every embedded recording holds all 30 layers of SmolLM2-135M-Instruct, 32 decode-style
queries spread over the last 25% of its tokens, in float16; one longer than 2048 tokens is
recorded as a chunked prefill of 2048-token chunks (:mod:`sah.recording.recorder`), so
``docs-8192`` is made with bounded memory. Each stores its text's name, sha256 and source
and its token span ``[START, START + TOKENS)``. ``default`` is the default
recording (``docs``: the first 2048 tokens of the Python documentation topics).

:func:`ensure_recordings` returns the cached files, making the missing ones (one model
load for all of them). The cache is ``$SAH_CACHE_DIR/recordings`` (default
``~/.cache/sah/recordings``); a file's name is derived from its spec (model, text and the
text's sha256, span, queries, layers, dtype), so a spec change or another Python (another
text) makes a new file; a file that is missing, corrupt or of another spec is re-made. A
file lock per recording makes concurrent callers (for example Ray workers) wait for one
maker.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from sah.recording.cache import cache_dir  # noqa: F401 (also imported from here)
from sah.recording.format import FORMAT_VERSION, RecordingError, load_recording, save_recording
from sah.recording.texts import ALIASES, TEXT_NAMES, load_text

SPEC_VERSION = 2
DEFAULT_TOKENS = 2048
DEFAULT_QUERIES = 32
QUERY_FRACTION = 0.25
#: The embedded model's context length (positions).
MAX_TOKENS = 8192
MIN_TOKENS = 64
_NAME = re.compile(r"^(?P<text>[a-z]+)(?:-(?P<tokens>\d+))?(?:@(?P<start>\d+))?$")


@dataclass(frozen=True)
class EmbeddedRecording:
    """One embedded recording: a window of a named text, recorded from the embedded model."""

    name: str        # as given (e.g. "prose@4096")
    text: str        # docs | code | prose | manual
    num_tokens: int
    start: int = 0

    def spec(self) -> Dict[str, Any]:
        """What the recording is; its cache file name is derived from this."""
        from sah.recording.default_model import DEFAULT_MODEL_ID, DEFAULT_MODEL_SHAPE
        from sah.recording.recorder import DEFAULT_CHUNK_TOKENS

        # a recording longer than one prefill chunk is made chunked: the chunk size is part
        # of what it is (shorter ones keep the spec, and so the cache file, they had before)
        chunked = ({"prefill_chunk_tokens": DEFAULT_CHUNK_TOKENS}
                   if self.num_tokens > DEFAULT_CHUNK_TOKENS else {})
        return {
            "spec_version": SPEC_VERSION,
            "model": DEFAULT_MODEL_ID,
            "text": self.text,
            "text_sha256": load_text(self.text).sha256,
            "token_start": self.start,
            "num_tokens": self.num_tokens,
            "num_queries": DEFAULT_QUERIES,
            "query_fraction": QUERY_FRACTION,
            "layers": list(range(DEFAULT_MODEL_SHAPE["num_layers"])),
            "dtype": "float16",
            "attn_implementation": "sdpa",
            **chunked,
        }

    def path(self, cache: Union[str, Path, None] = None) -> Path:
        spec = json.dumps(self.spec(), sort_keys=True).encode()
        label = f"{self.text}-{self.num_tokens}" + (f"@{self.start}" if self.start else "")
        return (cache_dir(cache) / "recordings"
                / f"{label}-{hashlib.sha256(spec).hexdigest()[:12]}.safetensors")


def parse_embedded(name: Any, where: str = "recording") -> Optional[EmbeddedRecording]:
    """The embedded recording ``name`` stands for, or None if it is not such a name (then
    it is a file path). A name of a known text with a bad size raises ``ValueError``."""
    if not isinstance(name, str):
        return None
    match = _NAME.match(name)
    if match is None:
        return None
    text = ALIASES.get(match["text"], match["text"])
    if text not in TEXT_NAMES:
        return None
    if match["text"] in ALIASES and (match["tokens"] or match["start"]):
        raise ValueError(f"{where}: {name!r}: 'default' takes no size or offset; write "
                         f"{text}-TOKENS@START instead")
    tokens = int(match["tokens"]) if match["tokens"] else DEFAULT_TOKENS
    if not MIN_TOKENS <= tokens <= MAX_TOKENS:
        raise ValueError(f"{where}: {name!r}: {tokens} tokens; an embedded recording holds "
                         f"{MIN_TOKENS} to {MAX_TOKENS} tokens (the model's context)")
    return EmbeddedRecording(name, text, tokens, int(match["start"] or 0))


def is_embedded_name(name: Any) -> bool:
    try:
        return parse_embedded(name) is not None
    except ValueError:
        return True


class _Maker:
    """Loads the embedded model once, on the first recording that must be made."""

    def __init__(self, progress: bool) -> None:
        self.progress = progress
        self._model: Optional[Tuple[Any, Any]] = None

    def model(self) -> Tuple[Any, Any]:
        if self._model is None:
            from sah.recording.default_model import load_default_model
            start = time.perf_counter()
            self._model = load_default_model(attn_implementation="sdpa")
            print(f"sah: loaded the embedded model in {time.perf_counter() - start:.0f} s",
                  file=sys.stderr)
        return self._model

    def make(self, item: EmbeddedRecording, path: Path) -> Path:
        from sah.recording.recorder import record_attention
        from sah.recording.texts import token_window, tokenization_metadata

        spec = item.spec()
        start = time.perf_counter()
        model, tokenizer = self.model()
        text = load_text(item.text)
        ids = token_window(tokenizer, text, item.start, item.num_tokens, f"recording {item.name}")
        rec = record_attention(model, ids, layers=spec["layers"], num_queries=spec["num_queries"],
                               query_fraction=spec["query_fraction"], dtype=spec["dtype"],
                               progress=self.progress,
                               chunk_size=spec.get("prefill_chunk_tokens", item.num_tokens),
                               metadata={"text_source": text.source, "text_name": text.name,
                                         "text_sha256": text.sha256,
                                         "token_start": item.start,
                                         "token_end": item.start + item.num_tokens,
                                         "tokenization": tokenization_metadata(tokenizer),
                                         "embedded_spec": spec})
        rec.metadata["make_seconds"] = round(time.perf_counter() - start, 1)
        saved = save_recording(rec, path)
        print(f"sah: made recording {item.name} in {time.perf_counter() - start:.0f} s",
              file=sys.stderr)
        return saved


def _cached(path: Path, spec: Dict[str, Any]) -> Tuple[bool, str]:
    if not path.exists():
        return False, "missing"
    try:
        rec = load_recording(path)
    except RecordingError as exc:
        return False, str(exc)
    if rec.metadata.get("embedded_spec") != spec:
        return False, "it was made to another spec"
    if rec.metadata.get("format_version") != FORMAT_VERSION:
        # one content hash per embedded recording: older formats hash other fields
        return False, (f"it has format version {rec.metadata.get('format_version')}, this sah "
                       f"writes {FORMAT_VERSION}")
    return True, ""


def ensure_recordings(names: Sequence[str], cache: Union[str, Path, None] = None,
                      progress: bool = True) -> List[Path]:
    """The cached file of each embedded recording in ``names``, made (or re-made) when
    missing, corrupt or of another spec; the model is loaded once for all of them."""
    items = []
    for name in names:
        item = parse_embedded(name)
        if item is None:
            raise ValueError(f"{name!r} is not an embedded recording; names are "
                             f"TEXT[-TOKENS][@START] with TEXT one of {', '.join(TEXT_NAMES)}")
        items.append(item)
    maker = _Maker(progress)
    paths: List[Path] = []
    for item in items:
        path = item.path(cache)
        path.parent.mkdir(parents=True, exist_ok=True)
        spec = item.spec()
        with open(path.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                ok, reason = _cached(path, spec)
                if not ok:
                    what = "making" if reason == "missing" else f"re-making ({reason})"
                    print(f"sah: {what} the embedded recording {item.name} at {path}",
                          file=sys.stderr)
                    maker.make(item, path)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
        paths.append(path)
    return paths


def resolve_recording(name_or_path: Any, where: str = "recording") -> Path:
    """An embedded recording's cached file (made if needed), or an existing recording file.

    Raises ``FileNotFoundError`` / ``ValueError`` naming ``where``, the value and the fix."""
    item = parse_embedded(name_or_path, where)
    if item is not None:
        return ensure_recordings([item.name])[0]
    if not isinstance(name_or_path, (str, Path)) or str(name_or_path) == "":
        raise ValueError(f"{where}: got {name_or_path!r}; give an embedded recording name "
                         f"(default, {', '.join(TEXT_NAMES)}, e.g. docs-8192) or a file")
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        raise ValueError(f"{where}: {path} is a directory, not a recording file; give a "
                         f".safetensors recording or an embedded recording name")
    if not path.is_file():
        raise FileNotFoundError(f"{where}: {path} does not exist; record one with 'sah record' "
                                f"or name an embedded recording (default, "
                                f"{', '.join(TEXT_NAMES)}, e.g. docs-8192)")
    return path
