"""``resources/<chain>.json``: the resource analysis of each tuned chain's mask.

The mask analysed is the best config's mask on the first evaluated layer of the first
scored recording, batch 0, query head 0, within the causally allowed positions: a 2-D
``(queries x keys)`` boolean mask. It goes to
:func:`sah.resources.analyse_mask` with the seed calculator's defaults (64 simultaneous
multiplications, read limit 1000, row-first order).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional

from sah.evaluate import ContextCache, layer_indices
from sah.infra.files import atomic_write_text
from sah.runs.outputs.picks import best_row
from sah.runs.outputs.trials import row_config
from sah.study.spec import Study

NUM_MULTIPLICATIONS = 64
READ_LIMIT = 1000


def chain_mask_2d(config: Any, recording: Any, layers: Any) -> Any:
    """The chain's boolean mask ``(queries, keys)`` on the first evaluated layer, head 0."""
    from sah.attention import ResearchAttention
    index = layer_indices(recording, layers)[0]
    ctx = ContextCache().get(recording, index, recording.layers[index].keys.device)
    mask = ResearchAttention.create_from_config(config).compute_mask(
        ctx, layer_idx=recording.layers[index].layer)
    return (mask.active() & ctx.allowed_full)[0, 0], recording.layers[index].layer


def write_resources(run_dir: Path, study: Study, rows: List[Dict[str, Any]], recording: Any,
                    artefacts: Optional[Any] = None) -> None:
    """``artefacts``: the run's :class:`~sah.runs.artefacts.RunArtefacts` (weights in memory)."""
    from sah.resources.calculator import analyse_mask
    for chain in study.chains:
        best = best_row(rows, chain.name)
        if best is None:
            continue
        config = row_config(chain, best)
        if artefacts is not None:
            config = artefacts.resolved(config)
        mask, layer = chain_mask_2d(config, recording, study.layers)
        source = {"chain": chain.name, "trial": best["trial"], "layer": layer, "batch": 0,
                  "head": 0, "shape": list(mask.shape), "active": int(mask.sum())}
        analysis = analyse_mask(mask.cpu().numpy(), NUM_MULTIPLICATIONS, READ_LIMIT,
                                name=f"{chain.name} layer {layer} head 0", parameters=source)
        doc: Dict[str, Any] = {"source": source, "analysis": analysis.to_dict()}
        atomic_write_text(run_dir / "resources" / f"{chain.name}.json",
                          json.dumps(doc, indent=2, default=str) + "\n")
