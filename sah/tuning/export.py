"""Export a tuned config from a run: the best row of ``trials.csv`` (or the lowest-error row
at a density target), rebuilt with the run's chain spec, as YAML, JSON or the hub layout."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from sah.attention import ResearchAttentionConfig
from sah.tuning.outputs.picks import best_row, target_row
from sah.tuning.outputs.trials import load_run, row_config
from sah.tuning.outputs.tuned import config_header
from sah.validation import ConfigError

FORMATS = ("yaml", "json", "hub")


def export_config(run_dir: Path, chain: str, density: Optional[float] = None
                  ) -> Tuple[ResearchAttentionConfig, Dict[str, Any]]:
    """The chosen config and its trials.csv row."""
    study, rows, _ = load_run(Path(run_dir))
    spec = study.chain(chain)
    if density is not None and not 0 < density <= 1:
        raise ConfigError(f"--density: got {density}; expected a density in (0, 1]")
    row = best_row(rows, chain) if density is None else target_row(rows, chain, density)
    if row is None:
        why = "no completed trial" if density is None else f"no completed trial with density <= {density:g}"
        raise ConfigError(f"{run_dir}: chain {chain!r} has {why}")
    return row_config(spec, row), row


def render(config: ResearchAttentionConfig, fmt: str, header: str = "") -> str:
    if fmt not in FORMATS:
        raise ConfigError(f"--format: got {fmt!r}; use one of {', '.join(FORMATS)}")
    if fmt == "yaml":
        return header + config.to_yaml()
    return config.to_json(hub=fmt == "hub") + "\n"


def export_text(run_dir: Path, chain: str, density: Optional[float] = None, fmt: str = "yaml") -> str:
    config, row = export_config(run_dir, chain, density)
    why = "best score" if density is None else f"lowest error at density <= {density:g}"
    return render(config, fmt, config_header(Path(run_dir).name, chain, row, why))
