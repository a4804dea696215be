"""The run folder of a study: the check that an existing folder is only ever continued
with ``resume`` (and only with the same study), the resolved study stored in ``run.yaml``,
and ``progress.json``: the chains whose experiments finished, the wall time of each part
of the run (a part ends when the run stops or finishes; ``--resume`` starts the next) and
whether the outputs were written and, for a study with ``validate:``, whether its picks
were validated (when both are, ``--resume`` has nothing left to do)."""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from sah.infra.safe_yaml import load_yaml_file
from sah.study.spec import Study
from sah.infra.checks import ConfigError, short_repr

_PARTS = "_wall_seconds"  # reserved progress.json keys start with "_" (no chain name does)
_OUTPUTS = "_outputs"
_VALIDATION = "_validation"  # "complete" once the study's picks were validated in the model


def check_results_dir(results_dir: Path) -> None:
    """``--results-dir`` must be a folder this process can write in (or create)."""
    check_writable_folder(Path(results_dir), "--results-dir",
                          "pass a folder you can write to (default: results)")


def check_writable_folder(path: Path, flag: str, fix: str) -> None:
    """``path`` must be a folder this process can write in (or create): checked by creating
    and removing a temporary folder in it (or in its nearest existing parent), so a refused
    run leaves nothing behind. ``flag`` names the option in the one-line refusal."""
    path = Path(path)
    probe = path
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        where = "is a file" if probe == path else f"lies under {probe}, which is a file"
        raise ConfigError(f"{flag} {path}: {where}, not a folder; {fix}")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".sah-write-test-", dir=probe))
    except OSError as exc:
        raise ConfigError(f"{flag} {path}: cannot write in {probe} ({exc.strerror or exc}); "
                          f"{fix}") from None


def read_run_yaml(run_dir: Path, fix: str) -> Dict[str, Any]:
    """``run.yaml`` checked: a mapping holding the resolved ``study`` (a mapping)."""
    path = Path(run_dir) / "run.yaml"
    meta = load_yaml_file(path)
    if not isinstance(meta, dict) or not isinstance(meta.get("study"), dict):
        if not isinstance(meta, dict):
            got = f"{type(meta).__name__} {short_repr(meta)}"
        elif "study" in meta:
            got = f"'study': {short_repr(meta['study'])}"
        else:
            got = f"a mapping without 'study' (keys: {short_repr(sorted(map(str, meta)))})"
        raise ConfigError(f"{path}: not a run.yaml written by sah (expected a mapping with the "
                          f"resolved 'study', got {got}); {fix}")
    return meta


def check_run_folder(run_dir: Path, study: Study, resume: bool) -> None:
    """An existing run folder is never overwritten; ``resume`` continues the same study."""
    if not run_dir.exists():
        if resume:
            raise FileNotFoundError(f"{run_dir}: no run to resume; drop --resume to start it")
        return
    run_yaml = run_dir / "run.yaml"
    if not resume:
        raise FileExistsError(f"{run_dir} already holds a run; pass --resume to continue it or "
                              f"--name to start a new run")
    if not run_yaml.is_file():
        raise FileExistsError(f"{run_dir} exists but holds no run.yaml (not a sah run); pick "
                              f"another --name or --results-dir")
    stored = read_run_yaml(run_dir, "the run cannot be resumed; pick another --name")["study"]
    if stored != _comparable(study):
        raise FileExistsError(f"{run_dir} holds a different study ({short_repr(stored.get('name', '?'))}); "
                              f"--resume must use the same study and flags, or pick another --name")


def _comparable(study: Study) -> Dict[str, Any]:
    return json.loads(json.dumps(study.to_dict()))


def read_progress(run_dir: Path) -> Dict[str, Any]:
    """``progress.json`` (empty when missing or unreadable: then nothing counts as done)."""
    path = Path(run_dir) / "progress.json"
    try:
        data = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def unfinished_chains(run_dir: Path, study: Study) -> List[str]:
    """The chains of a run whose tuning did not finish (``progress.json``), all of them when
    the run's final outputs (``summary.md``) were never written: empty for a finished run."""
    data = read_progress(run_dir)
    if not (Path(run_dir) / "summary.md").is_file():
        return [c.name for c in study.chains if data.get(c.name) != "complete"] or \
            [c.name for c in study.chains]
    return [c.name for c in study.chains if data.get(c.name) != "complete"]


def check_finished(run_dir: Path, study: Study, partial: bool, what: str) -> List[str]:
    """Refuse (one line) a run whose tuning did not finish unless ``partial`` (the
    ``--partial`` flag); returns the unfinished chains."""
    missing = unfinished_chains(run_dir, study)
    if missing and not partial:
        raise ConfigError(f"{run_dir}: the run did not finish (chain(s) {', '.join(missing)} "
                          f"not complete in progress.json); {what} would use only the trials "
                          f"that finished. Finish it with sah tune --resume, or pass --partial "
                          f"to go ahead with the finished trials")
    return missing


class Progress:
    """``progress.json`` of a run being run: finished chains, the wall time of the earlier
    parts and of this one (which began at ``started``, a ``time.time()``), outputs."""

    def __init__(self, run_dir: Path, started: float) -> None:
        self.run_dir = Path(run_dir)
        data = read_progress(self.run_dir)
        self.chains: Dict[str, str] = {k: v for k, v in data.items() if not k.startswith("_")}
        parts = data.get(_PARTS, [])
        self.earlier: List[float] = [float(x) for x in parts if isinstance(x, (int, float))] \
            if isinstance(parts, list) else []
        self.outputs_written = data.get(_OUTPUTS) == "complete"
        self.validated = data.get(_VALIDATION) == "complete"
        self.started = started

    def tuning_complete(self, study: Study) -> bool:
        """Every chain finished and the tuning outputs written."""
        return (self.outputs_written and all(self.chains.get(c.name) == "complete"
                                             for c in study.chains)
                and (self.run_dir / "summary.md").is_file())

    def complete(self, study: Study) -> bool:
        """Tuning complete and, when the study validates its picks or measures their
        speed, those steps too: nothing left to resume."""
        return (self.tuning_complete(study) and (study.validate is None or self.validated)
                and (getattr(study, "speed", None) is None
                     or (self.run_dir / "speed.csv").is_file()))

    def wall_seconds(self, now: Optional[float] = None) -> float:
        """Total wall time over every part of the run, this one up to ``now``."""
        return sum(self.earlier) + ((now or time.time()) - self.started)

    def save(self, outputs_written: bool = False, now: Optional[float] = None,
             validated: Optional[bool] = None) -> None:
        """Write progress.json; this part's wall time runs up to ``now`` (default: now)."""
        from sah.infra.files import atomic_write_text
        self.outputs_written = outputs_written
        if validated is not None:
            self.validated = validated
        doc: Dict[str, Any] = dict(self.chains)
        doc[_PARTS] = [*self.earlier, round((now or time.time()) - self.started, 3)]
        if outputs_written:
            doc[_OUTPUTS] = "complete"
        if self.validated:
            doc[_VALIDATION] = "complete"
        atomic_write_text(self.run_dir / "progress.json", json.dumps(doc, indent=2))
