"""``tuned/``: the best config of every chain and the best at each density target
(loadable with ``ResearchAttentionConfig.from_file``), plus the prior hub's JSON layout.

A config that needs a weight file (HashAttention) names it relative to itself and the file
is written next to it (``tuned/hash_attention.safetensors``), so ``tuned/`` loads from
anywhere: copied, moved, or on another machine. ``artefacts`` is the run's
:class:`~sah.runs.artefacts.RunArtefacts` (``portable``, ``write_beside``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional

from sah.infra.files import atomic_write_text
from sah.runs.outputs.picks import best_row, target_row
from sah.runs.outputs.trials import row_config
from sah.study.spec import Study


def config_header(run: str, chain: str, row: Dict[str, Any], why: str) -> str:
    return (f"# sah tuned config: run {run}, chain {chain}, {why}\n"
            f"# trial {row['trial']}: output_error {row['output_error']!r}, density "
            f"{row['density']!r}, score {row['score']!r}\n")


def _config(chain: Any, row: Dict[str, Any], folder: Path, artefacts: Optional[Any]) -> Any:
    """The row's config as written in ``folder`` (its weights written next to it)."""
    cfg = row_config(chain, row)
    if artefacts is None:
        return cfg
    artefacts.write_beside(cfg, folder)
    return artefacts.portable(cfg)


def write_tuned(run_dir: Path, study: Study, rows: List[Dict[str, Any]],
                artefacts: Optional[Any] = None) -> None:
    folder = run_dir / "tuned"
    for chain in study.chains:
        best = best_row(rows, chain.name)
        if best is None:
            continue
        cfg = _config(chain, best, folder, artefacts)
        atomic_write_text(run_dir / "tuned" / f"{chain.name}.yaml",
                          config_header(study.name, chain.name, best, f"best {study.objective}")
                          + cfg.to_yaml())
        atomic_write_text(run_dir / "tuned" / f"{chain.name}.hub.json", cfg.to_json(hub=True) + "\n")
        for target in study.density_targets:
            row = target_row(rows, chain.name, target)
            if row is None:
                continue
            atomic_write_text(run_dir / "tuned" / f"{chain.name}.density_{target:g}.yaml",
                              config_header(study.name, chain.name, row,
                                            f"lowest error at density <= {target:g}")
                              + _config(chain, row, folder, artefacts).to_yaml())
