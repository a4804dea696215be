"""Export a tuned config from a run: the best row of ``trials.csv`` (or the lowest-error row
at a density target), rebuilt with the run's chain spec, as YAML, JSON or the hub layout.

Exports are portable: a config that needs a weight file (HashAttention) is written with the
file next to it, as ``<OUT stem>.<name>`` (``best.hash_attention.safetensors`` beside
``best.yaml``), and names it relative to itself; ``ResearchAttentionConfig.from_file``
resolves it against the config's folder. Such a config is never printed: a printed config
could only name a file inside the run folder (:func:`export_text` refuses and says to use
``-o``). The weights are read from the run folder (``tuned/`` first), so a moved or copied
run folder exports the same configs."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from sah.attention import ResearchAttentionConfig
from sah.runs.artefacts import RunArtefacts
from sah.infra.files import atomic_write_text
from sah.runs.outputs.picks import best_row, target_row
from sah.runs.outputs.trials import load_run, row_config
from sah.runs.outputs.tuned import config_header
from sah.infra.checks import ConfigError

FORMATS = ("yaml", "json", "hub")


def _chosen(run_dir: Path, chain: str, density: Optional[float]
            ) -> Tuple[ResearchAttentionConfig, Dict[str, Any], RunArtefacts]:
    study, rows, _ = load_run(Path(run_dir))
    spec = study.chain(chain)
    if density is not None and not 0 < density <= 1:
        raise ConfigError(f"--density: got {density}; expected a density in (0, 1]")
    row = best_row(rows, chain) if density is None else target_row(rows, chain, density)
    if row is None:
        why = "no completed trial" if density is None else f"no completed trial with density <= {density:g}"
        raise ConfigError(f"{run_dir}: chain {chain!r} has {why}")
    return row_config(spec, row), row, RunArtefacts.of_run(study, Path(run_dir))


def export_config(run_dir: Path, chain: str, density: Optional[float] = None
                  ) -> Tuple[ResearchAttentionConfig, Dict[str, Any]]:
    """The chosen config, ready to evaluate (weights loaded from the run folder), and its
    trials.csv row."""
    config, row, artefacts = _chosen(run_dir, chain, density)
    return artefacts.resolved(config), row


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ConfigError(f"--format: got {fmt!r}; use one of {', '.join(FORMATS)}")


def render(config: ResearchAttentionConfig, fmt: str, header: str = "") -> str:
    _check_format(fmt)
    if fmt == "yaml":
        return header + config.to_yaml()
    return config.to_json(hub=fmt == "hub") + "\n"


def _header(run_dir: Path, chain: str, row: Dict[str, Any], density: Optional[float]) -> str:
    why = "best score" if density is None else f"lowest error at density <= {density:g}"
    return config_header(Path(run_dir).resolve().name, chain, row, why)


def export_text(run_dir: Path, chain: str, density: Optional[float] = None, fmt: str = "yaml") -> str:
    """The config as text, for printing; refused when it needs a weight file."""
    _check_format(fmt)
    config, row, artefacts = _chosen(run_dir, chain, density)
    files = [a.name for a in artefacts.needed(config)]
    if files:
        raise ConfigError(f"{run_dir}: chain {chain!r} needs the weight file {files[0]}, which a "
                          f"printed config cannot carry; pass -o FILE to write the config with "
                          f"its weights next to it")
    return render(config, fmt, _header(run_dir, chain, row, density))


def export_to_file(run_dir: Path, chain: str, out: Path, density: Optional[float] = None,
                   fmt: str = "yaml") -> List[Path]:
    """Write the config to ``out`` and its weight files next to it (``<out stem>.<name>``);
    returns every path written, the config first."""
    _check_format(fmt)
    config, row, artefacts = _chosen(run_dir, chain, density)
    out = Path(out)
    prefix = f"{out.stem}."
    weights = artefacts.write_beside(config, out.parent, prefix)
    text = render(artefacts.portable(config, prefix), fmt, _header(run_dir, chain, row, density))
    atomic_write_text(out, text)
    return [out, *weights]
