"""The run folder of a study: the check that an existing folder is only ever continued
with ``resume`` (and only with the same study), the resolved study stored in ``run.yaml``,
and ``progress.json`` (the chains whose experiments finished)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict

import yaml

from sah.tuning.study import Study


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
    stored = yaml.safe_load(run_yaml.read_text()).get("study")
    if stored != _comparable(study):
        raise FileExistsError(f"{run_dir} holds a different study ({stored.get('name') if stored else '?'}); "
                              f"--resume must use the same study and flags, or pick another --name")


def _comparable(study: Study) -> Dict[str, Any]:
    return json.loads(json.dumps(study.to_dict()))


def read_progress(run_dir: Path) -> Dict[str, str]:
    path = run_dir / "progress.json"
    return json.loads(path.read_text()) if path.is_file() else {}
