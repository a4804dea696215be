"""A study's recording sets: the scored ``recordings`` and the ``fit_recordings``.

:func:`load_recording_sets` turns the names a study gives (embedded names such as ``docs``,
``code-8192``, ``prose@4096``, or files) into loaded recordings, refusing, before anything
is written to the run folder:

- a fit recording whose text span overlaps a scored recording's (same text sha256 and
  intersecting token spans; for embedded names this is checked before any of them is
  made), or that IS a scored recording (same content hash);
- the same recording listed twice in one set (same content hash, or same label);
- recordings that disagree on the model's shape (heads, KV heads, head dim) or lack a layer
  the study evaluates (``layers``, default: the first scored recording's layers).

Each recording gets a *label*, the name its figures carry (``output_error[docs]`` in
``trials.csv``, ``per_layer.csv``, the summary): the embedded name as written, or a file's
stem (its path as written when two stems collide). :meth:`StudyRecording.describe` is what
``run.yaml`` stores for it (name, path, content hash, text, span, shape); ``--resume``
compares those hashes with the files found now (:func:`check_resume_hashes`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from sah.recording.format import Recording, RecordingError
from sah.infra.checks import ConfigError

SCORED, FIT = "recordings", "fit_recordings"


def parse_recording_lists(data: Dict[str, Any]) -> tuple:
    """``recordings`` (or the one-element ``recording``) and ``fit_recordings``: lists of
    embedded recording names or file paths; names are checked here (no file is read)."""
    from sah.recording.embedded import parse_embedded
    _require(not ("recording" in data and "recordings" in data), "recording",
             "give either recording (one) or recordings (a list), not both")
    if "recordings" in data:
        scored, key = data["recordings"], "recordings"
        _require(isinstance(scored, list) and bool(scored), key,
                 f"got {scored!r}; expected a non-empty list of embedded recording names "
                 f"(docs, code, prose, manual, docs-8192, ...) or recording files")
    else:
        scored, key = [data.get("recording", "default")], "recording"
    fit = data.get("fit_recordings", [])
    _require(isinstance(fit, list), "fit_recordings",
             f"got {fit!r}; expected a list of embedded recording names or recording files")
    for where, items in ((key, scored), ("fit_recordings", fit)):
        for i, item in enumerate(items):
            path = where if where == "recording" else f"{where}[{i}]"
            _require(isinstance(item, str) and item.strip() != "", path,
                     f"got {item!r}; expected an embedded recording name (default, docs, code, "
                     f"prose, docs-8192, ...) or the path of a recording file")
            try:
                parse_embedded(item, path)
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
    return [str(x) for x in scored], [str(x) for x in fit]


def _require(cond: bool, path: str, message: str) -> None:
    if not cond:
        raise ConfigError(f"{path}: {message}")


def recording_labels(names: Sequence[str]) -> List[str]:
    """The labels of a list of recordings as a study writes them (no file is read)."""
    from sah.recording.embedded import is_embedded_name
    stems = [name if is_embedded_name(name) else Path(name).stem for name in names]
    return [stem if stems.count(stem) == 1 else name for stem, name in zip(stems, names)]


@dataclass
class StudyRecording:
    """One recording of a study: its label, what the study wrote, where it was found."""

    label: str
    source: str          # as written in the study
    where: str           # its YAML path, e.g. "recordings[1]"
    path: Path
    recording: Recording

    @property
    def content_hash(self) -> str:
        from sah.evaluate import recording_key
        return recording_key(self.recording)

    @property
    def tensors_hash(self) -> str:
        """The hash of the tensors alone (no metadata): the same data saved with and without
        a text span, or with another scaling, is still the same recording here."""
        from sah.recording.format import _tensors_of, content_hash
        return content_hash(_tensors_of(self.recording), version=1)

    @property
    def span(self) -> Optional[Tuple[str, int, int]]:
        from sah.recording.texts import text_of
        return text_of(self.recording.metadata or {})

    def describe(self) -> Dict[str, Any]:
        """What run.yaml stores for the recording."""
        r, meta = self.recording, self.recording.metadata or {}
        return {"name": self.label, "source": self.source, "path": str(Path(self.path).resolve()),
                "hash": self.content_hash, "text": meta.get("text_name"),
                "text_source": meta.get("text_source"), "text_sha256": meta.get("text_sha256"),
                "token_start": meta.get("token_start"), "token_end": meta.get("token_end"),
                "num_keys": r.num_keys, "num_queries": r.num_queries, "layers": r.layer_ids,
                "num_heads": r.num_heads, "num_kv_heads": r.num_kv_heads,
                "head_dim": r.head_dim, "model": meta.get("model_id")}


@dataclass
class RecordingSets:
    scored: List[StudyRecording]
    fit: List[StudyRecording]    # empty: learned maskers are fitted on the scored ones

    @property
    def fit_or_scored(self) -> List[StudyRecording]:
        return self.fit or self.scored

    @property
    def fit_is_scored(self) -> bool:
        return not self.fit

    def describe(self, fitting: bool) -> Dict[str, List[Dict[str, Any]]]:
        """run.yaml's ``recordings`` and ``fit_recordings`` (what learned maskers were
        fitted on: the scored ones when the study names none; empty when nothing is fitted)."""
        return {SCORED: [r.describe() for r in self.scored],
                FIT: [r.describe() for r in self.fit_or_scored] if fitting else []}


def _span_of_name(name: str) -> Optional[Tuple[str, int, int]]:
    """The text span an embedded name stands for (None for a file), without making it."""
    from sah.recording.embedded import parse_embedded
    from sah.recording.texts import load_text
    item = parse_embedded(name)
    if item is None:
        return None
    return load_text(item.text).sha256, item.start, item.start + item.num_tokens


def _describe_span(label: str, span: Tuple[str, int, int]) -> str:
    return f"{label} (text sha256 {span[0][:12]}..., tokens [{span[1]}, {span[2]}))"


def _check_spans(source: str, scored: List[Tuple[str, str, Any]],
                 fit: List[Tuple[str, str, Any]]) -> None:
    """``(where, label, span or None)`` of each recording: refuse fit/scored overlaps."""
    from sah.recording.texts import spans_overlap
    for f_where, f_label, f_span in fit:
        for s_where, s_label, s_span in scored:
            if f_span is not None and s_span is not None and spans_overlap(f_span, s_span):
                raise ConfigError(
                    f"{source}: {f_where}: the fit recording {_describe_span(f_label, f_span)} "
                    f"overlaps the scored recording {s_where} {_describe_span(s_label, s_span)}; "
                    f"fit on another text or a disjoint span (e.g. prose, or docs-2048@8192)")


def _resolve(name: str, where: str, source: str) -> Path:
    from sah.recording.embedded import resolve_recording
    try:
        return resolve_recording(name, f"{source}: {where}")
    except (FileNotFoundError, ValueError) as exc:
        raise RecordingError(str(exc)) from None


def _load(path: Path, where: str, source: str) -> Recording:
    from sah.recording.format import load_recording
    try:
        return load_recording(path)
    except RecordingError as exc:
        raise RecordingError(f"{source}: {where}: {exc}") from None


def load_recording_sets(study: Any) -> RecordingSets:
    """Make (embedded, one model load for all), load and check the study's recordings."""
    from sah.recording.embedded import ensure_recordings, parse_embedded
    source = study.source
    scored_where = (["recording"] if getattr(study, "recordings_key", SCORED) == "recording"
                    else [f"recordings[{i}]" for i in range(len(study.recordings))])
    entries = {SCORED: list(zip(scored_where,
                                recording_labels(study.recordings), study.recordings)),
               FIT: list(zip([f"fit_recordings[{i}]" for i in range(len(study.fit_recordings))],
                             recording_labels(study.fit_recordings), study.fit_recordings))}
    for role, items in entries.items():
        first_seen: Dict[str, str] = {}
        for where, label, _ in items:
            if label in first_seen:
                raise ConfigError(f"{source}: {where}: {label!r} is listed twice in {role} "
                                  f"(also {first_seen[label]}); list each recording once")
            first_seen[label] = where
    # 1. spans of embedded names, before any of them is made
    _check_spans(source, [(w, lb, _span_of_name(n)) for w, lb, n in entries[SCORED]],
                 [(w, lb, _span_of_name(n)) for w, lb, n in entries[FIT]])
    # 2. files that exist, embedded recordings made (one model load for all missing ones)
    embedded = [n for _, _, n in entries[SCORED] + entries[FIT] if parse_embedded(n) is not None]
    if embedded:
        ensure_recordings(list(dict.fromkeys(embedded)))
    loaded: Dict[str, List[StudyRecording]] = {}
    for role, items in entries.items():
        loaded[role] = []
        for where, label, name in items:
            path = _resolve(name, where, source)
            loaded[role].append(StudyRecording(label, name, where, path, _load(path, where, source)))
    sets = RecordingSets(loaded[SCORED], loaded[FIT])
    _check_loaded(sets, source, study.layers)
    return sets


def _check_loaded(sets: RecordingSets, source: str, layers: Optional[List[int]]) -> None:
    _check_spans(source, [(r.where, r.label, r.span) for r in sets.scored],
                 [(r.where, r.label, r.span) for r in sets.fit])
    for role in (sets.scored, sets.fit):
        seen: Dict[str, StudyRecording] = {}
        for r in role:
            if r.tensors_hash in seen:
                raise ConfigError(f"{source}: {r.where}: {r.label} is the same recording as "
                                  f"{seen[r.tensors_hash].where} ({seen[r.tensors_hash].label}); "
                                  f"list each recording once")
            seen[r.tensors_hash] = r
    scored_hashes = {r.tensors_hash: r for r in sets.scored}
    for r in sets.fit:
        if r.tensors_hash in scored_hashes:
            other = scored_hashes[r.tensors_hash]
            raise ConfigError(f"{source}: {r.where}: {r.label} is the scored recording "
                              f"{other.where} ({other.label}); fit on a recording the study "
                              f"does not score")
    first = sets.scored[0]
    wanted = list(layers) if layers else first.recording.layer_ids
    shape = _shape(first.recording)
    for r in sets.scored + sets.fit:
        if _shape(r.recording) != shape:
            raise ConfigError(
                f"{source}: {r.where}: {r.label} has heads/KV heads/head dim "
                f"{_shape(r.recording)} but {first.where} ({first.label}) has {shape}; the "
                f"recordings of a study must come from one model shape")
        missing = [x for x in wanted if x not in r.recording.layer_ids]
        if missing and layers:
            raise ConfigError(f"{source}: layers: layer {missing[0]} is not in the recording "
                              f"{r.label} ({r.where}; recorded layers: "
                              f"{r.recording.layer_ids}); pick layers every recording holds")
        if missing:
            raise ConfigError(
                f"{source}: {r.where}: {r.label} lacks layer {missing[0]} of {first.where} "
                f"({first.label}, layers {wanted}; it holds {r.recording.layer_ids}); set "
                f"layers: to layers every recording holds")


def _shape(rec: Recording) -> Tuple[int, int, int]:
    return rec.num_heads, rec.num_kv_heads, rec.head_dim


def check_resume_hashes(run_dir: Path, stored: Any, now: Dict[str, List[Dict[str, Any]]]) -> None:
    """``--resume``: every scored and fit recording's content hash (``now``, from
    :meth:`RecordingSets.describe`) must be the one ``run.yaml`` (``stored``) holds."""
    if not isinstance(stored, dict):
        raise FileExistsError(f"{run_dir}/run.yaml is not a mapping; it is not a sah run")
    old_runs = {SCORED: [stored["recording"]]} if "recording" in stored and SCORED not in stored else {}
    for role in (SCORED, FIT):
        before = old_runs.get(role, stored.get(role) or [])
        after = now[role]
        if len(before) != len(after):
            raise FileExistsError(f"{run_dir}: run.yaml lists {len(before)} {role} but the study "
                                  f"now gives {len(after)}; --resume must use the same recordings")
        for i, (b, a) in enumerate(zip(before, after)):
            if not isinstance(b, dict) or b.get("hash") != a["hash"]:
                old = b.get("hash") if isinstance(b, dict) else b
                raise FileExistsError(
                    f"{run_dir}: {role}[{i}] ({a['name']}, {a['path']}) has content hash "
                    f"{a['hash']} but the run was started on {old}; the recording changed "
                    f"since the run began. Put the original recording back to resume, or start "
                    f"a new run with --name")
