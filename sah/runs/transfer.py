"""Re-score a run's tuned configs on other recordings: do they keep their figures?

``sah transfer RUN_DIR --recording R [--recording R2 ...]`` takes, for every chain of the
run, its best config and its pick at each density target (what ``tuned/`` holds), scores
each on every recording ``R`` (embedded names such as ``docs-8192`` or files) over the
run's layers, and prints one row per (chain, pick, recording) with the run's figures (means
over its scored recordings) beside the new ones and their ratios (new / run). A config
tuned at 2048 tokens whose error ratio at 8192 tokens stays near 1 transfers; a density
ratio far from 1 says its sizes do not scale with the context (an int count of keys
covers a smaller share of a longer context, a float fraction the same share).

A recording of the run's model shape (heads, KV heads, head dim) must hold the run's
layers. A recording of **another model** (another shape, e.g. Gemma-3-270M against a
SmolLM2 run) is scored over its own recorded layers, each with its own layer type (a
fraction size is a fraction of the keys each layer allows), and only with the picks that
carry nothing of the run's model: picks with ``layer_overrides`` (per-layer or per-head
values) or HashAttention (hashes fitted on the run's model's heads) are left out for it,
with a note. A recording whose text span overlaps one the run fitted HashAttention on is
flagged (its HashAttention figures are optimistic).
"""

from __future__ import annotations

import csv
import io
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from sah.runs.artefacts import RunArtefacts
from sah.runs.outputs.picks import best_row, target_row
from sah.runs.folder import check_finished
from sah.runs.outputs.trials import load_run, row_config
from sah.infra.checks import ConfigError

COLUMNS = ("chain", "pick", "trial", "recording", "run output_error", "output_error",
           "error ratio", "run density", "density", "density ratio")


@dataclass
class TransferRow:
    chain: str
    pick: str            # "best" or "density <= t"
    trial: int
    recording: str
    run_error: float
    run_density: float
    error: float
    density: float

    @property
    def error_ratio(self) -> float:
        return self.error / self.run_error if self.run_error else float("nan")

    @property
    def density_ratio(self) -> float:
        return self.density / self.run_density if self.run_density else float("nan")

    def cells(self, fmt: str) -> List[str]:
        def num(x: float) -> str:
            return repr(x) if fmt == "csv" else f"{x:.4g}"

        def ratio(x: float) -> str:
            return repr(x) if fmt == "csv" else f"{x:.2f}x"
        return [self.chain, self.pick, str(self.trial), self.recording, num(self.run_error),
                num(self.error), ratio(self.error_ratio), num(self.run_density),
                num(self.density), ratio(self.density_ratio)]


@dataclass
class Transfer:
    run: str
    run_recordings: List[str]
    layers: List[int]
    recordings: List[Tuple[str, int]]   # (label, keys)
    rows: List[TransferRow]
    notes: List[str]


def _picks(study: Any, rows: List[Dict[str, Any]]) -> List[Tuple[str, str, Dict[str, Any]]]:
    out = []
    for chain in study.chains:
        best = best_row(rows, chain.name)
        if best is not None:
            out.append((chain.name, "best", best))
        for target in study.density_targets:
            row = target_row(rows, chain.name, target)
            if row is not None:
                out.append((chain.name, f"density <= {target:g}", row))
    return out


def _load_recordings(names: Sequence[str]) -> List[Tuple[str, Any]]:
    from sah.recording.embedded import ensure_recordings, parse_embedded, resolve_recording
    from sah.recording.format import load_recording
    from sah.study.recordings import recording_labels
    embedded = [n for n in names if parse_embedded(n, "--recording") is not None]
    if embedded:
        ensure_recordings(list(dict.fromkeys(embedded)))
    labels = recording_labels(list(names))
    if len(set(labels)) < len(labels):
        raise ConfigError(f"--recording: {', '.join(names)} names a recording twice")
    return [(label, load_recording(resolve_recording(name, "--recording")))
            for label, name in zip(labels, names)]


SHAPE_KEYS = ("num_heads", "num_kv_heads", "head_dim")


def _other_model(described: Dict[str, Any], rec: Any) -> Optional[str]:
    """How the recording's model shape differs from the run's, or None when it is the same."""
    mine = {key: getattr(rec, key) for key in SHAPE_KEYS}
    if all(described.get(key) in (None, mine[key]) for key in SHAPE_KEYS):
        return None
    def shape(s: Dict[str, Any]) -> str:
        return f"{s.get('num_heads')} heads, {s.get('num_kv_heads')} KV, head dim {s.get('head_dim')}"
    return f"{shape(mine)}; the run's: {shape(described)}"


def _model_specific(config: Any) -> bool:
    """Whether a config carries values of the run's model: per-layer or per-head values,
    or HashAttention (hashes fitted on its heads)."""
    from sah.maskers import HashAttentionTopKMaskerConfig
    return bool(config.layer_overrides) or any(
        isinstance(m, HashAttentionTopKMaskerConfig) for m in config.masker_configs)


def _check_shape(run_dir: Path, described: Dict[str, Any], label: str, rec: Any,
                 layers: List[int]) -> None:
    missing = [x for x in layers if x not in rec.layer_ids]
    if missing:
        raise ConfigError(f"--recording {label}: lacks layer {missing[0]} of the run's layers "
                          f"{layers} (it holds {rec.layer_ids})")


def _fit_overlaps(meta: Dict[str, Any], label: str, rec: Any) -> Optional[str]:
    from sah.recording.texts import spans_overlap, text_of
    mine = text_of(rec.metadata or {})
    for item in meta.get("fit_recordings") or []:
        theirs = text_of(item)
        if mine is not None and theirs is not None and spans_overlap(mine, theirs):
            return (f"{label} overlaps the run's fit recording {item.get('name')} (tokens "
                    f"[{theirs[1]}, {theirs[2]})): its HashAttention figures are optimistic")
    return None


def transfer(run_dir: Path, names: Sequence[str], progress: bool = False,
             partial: bool = False) -> Transfer:
    """Score the run's tuned configs (best and density-target picks) on ``names``. A run
    that did not finish is refused unless ``partial``; then the chains without a finished
    trial are named in the notes. A run without any finished trial is refused."""
    from sah.evaluate import ContextCache, evaluate_config
    run_dir = Path(run_dir)
    if not names:
        raise ConfigError("--recording: give at least one recording to transfer to")
    study, rows, meta = load_run(run_dir)
    unfinished = check_finished(run_dir, study, partial, "transferring its picks")
    picks = _picks(study, rows)
    if not picks:
        raise ConfigError(f"{run_dir / 'trials.csv'}: no completed trial in any chain "
                          f"({len(rows)} row(s)); nothing to transfer: finish the run with sah "
                          f"tune --resume (or run the study again)")
    scored = meta.get("recordings") or ([meta["recording"]] if meta.get("recording") else [])
    first = scored[0] if scored else {}
    recs = _load_recordings(names)
    layers = list(study.layers or first.get("layers") or recs[0][1].layer_ids)
    notes = []
    own_layers: Dict[str, List[int]] = {}  # another model's recordings: their own layers
    for label, rec in recs:
        other = _other_model(first, rec)
        if other is None:
            _check_shape(run_dir, first, label, rec, layers)
        else:
            own_layers[label] = rec.layer_ids
            left = sorted({c for c, _, row in picks
                           if _model_specific(row_config(study.chain(c), row))})
            notes.append(f"{label} is another model ({other}): scored over its own layers "
                         f"{rec.layer_ids}" + (f"; {', '.join(left)} left out (per-layer "
                                               f"values or hashes fitted on the run's model)"
                                               if left else ""))
        note = _fit_overlaps(meta, label, rec)
        if note:
            notes.append(note)
    if unfinished:
        notes.append(f"the run did not finish (--partial): chain(s) {', '.join(unfinished)} "
                     f"are incomplete; their picks come from the trials that finished")
    left_out = [c.name for c in study.chains if all(p[0] != c.name for p in picks)]
    if left_out:
        notes.append(f"chain(s) {', '.join(left_out)} have no completed trial and are left out")
    artefacts = RunArtefacts.of_run(study, run_dir)  # weight files, read from the run folder
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(picks) * len(recs), desc="transfer", unit="config", file=sys.stderr,
                   dynamic_ncols=True, leave=False)
    figures: Dict[Tuple[int, str], Any] = {}
    try:  # one recording at a time: its layer contexts are cached while every pick is scored
        for label, rec in recs:
            cache = ContextCache(max_recordings=1)
            for i, (chain, _, row) in enumerate(picks):
                plain = row_config(study.chain(chain), row)
                if label in own_layers and _model_specific(plain):
                    if bar is not None:
                        bar.update(1)
                    continue
                figures[i, label] = evaluate_config(artefacts.resolved(plain), rec,
                                                    own_layers.get(label, layers), cache=cache)
                if bar is not None:
                    bar.update(1)
            cache.clear()
    finally:
        if bar is not None:
            bar.close()
    out = [TransferRow(chain, pick, row["trial"], label, row["output_error"], row["density"],
                       figures[i, label].output_error, figures[i, label].density)
           for i, (chain, pick, row) in enumerate(picks) for label, _ in recs
           if (i, label) in figures]
    return Transfer(study.name, [str(item.get("name")) for item in scored], layers,
                    [(label, rec.num_keys) for label, rec in recs], out, notes)


def transfer_text(result: Transfer, fmt: str = "markdown") -> str:
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(COLUMNS)
        writer.writerows(r.cells("csv") for r in result.rows)
        return buf.getvalue()
    layers = (f"{len(result.layers)} layers" if len(result.layers) > 3
              else "layers " + ", ".join(map(str, result.layers)))
    lines = [f"Run `{result.run}` (scored on {', '.join(result.run_recordings) or '?'}) "
             f"re-scored on " + ", ".join(f"{label} ({keys} keys)" for label, keys in
                                         result.recordings) + f", {layers}; ratios are new / run.",
             ""]
    lines += [f"Note: {n}" for n in result.notes] + ([""] if result.notes else [])
    lines += ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(r.cells("markdown")) + " |" for r in result.rows]
    return "\n".join(lines) + "\n"
