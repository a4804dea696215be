"""What in-model validation reports: figures per (config, text), means per config, JSON, table.

JSON layout (:meth:`ValidationResults.to_dict`)::

    {"model": ..., "tokens": T, "positions": P, "dtype": "float32", "device": "cpu",
     "dense": [{"text", "text_name", "text_sha256", "token_start", "token_end", "seconds",
                "nll"}, ...],                                    # one per text
     "results": [{"config", "text", "kl", "top1_agreement", "ppl_ratio", "density",
                  "nll_dense", "nll_sparse", "seconds", "text_sha256", "token_start",
                  "token_end", "per_layer": [{"layer", "output_error", "density"}, ...]}],
     "means": [{"config", "texts", "kl", "top1_agreement", "ppl_ratio", "density",
                "seconds"}, ...]}                                # one per config

``token_end`` is excluded; the window ``[token_start, token_end)`` holds ``T + 1`` ids.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

from sah.infra.files import atomic_write_text
from sah.inmodel.interface import InModelLayerFigures

#: The figures of one (config, text) pair whose means are taken over a config's texts.
MEAN_KEYS = ("kl", "top1_agreement", "ppl_ratio", "density", "seconds")


@dataclass
class InModelFigures:
    """A chain on one window, over its ``P`` sparse positions."""

    kl: float                 # mean KL(dense || sparse) of the next-token distributions
    top1_agreement: float     # share of positions whose argmax equals dense's
    ppl_ratio: float          # exp(mean NLL sparse - mean NLL dense)
    nll_dense: float
    nll_sparse: float
    density: float            # mean over layers of the in-model density
    per_layer: List[InModelLayerFigures] = field(default_factory=list)
    seconds: float = 0.0      # the sparse chunk: forward pass with the chain in every layer

    @property
    def worst_layer(self) -> Optional[InModelLayerFigures]:
        return max(self.per_layer, key=lambda lf: lf.output_error) if self.per_layer else None


@dataclass
class PairResult:
    config: str               # the config as given (a file, or the caller's name)
    text: str                 # the text as given
    text_sha256: str
    token_start: int
    token_end: int
    figures: InModelFigures

    def to_dict(self) -> Dict[str, Any]:
        f = self.figures
        return {"config": self.config, "text": self.text, "kl": f.kl,
                "top1_agreement": f.top1_agreement, "ppl_ratio": f.ppl_ratio,
                "density": f.density, "nll_dense": f.nll_dense, "nll_sparse": f.nll_sparse,
                "seconds": f.seconds, "text_sha256": self.text_sha256,
                "token_start": self.token_start, "token_end": self.token_end,
                "per_layer": [lf.to_dict() for lf in f.per_layer]}


@dataclass
class DenseResult:
    text: str
    text_name: str
    text_sha256: str
    token_start: int
    token_end: int
    seconds: float            # prefill + dense chunk
    nll: float                # mean NLL of the targets under dense attention

    def to_dict(self) -> Dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class ValidationResults:
    model: str
    tokens: int
    positions: int
    device: str
    dense: List[DenseResult] = field(default_factory=list)
    pairs: List[PairResult] = field(default_factory=list)
    model_seconds: float = 0.0  # loading the model (0 when the caller passed one)

    def get(self, config: str, text: str) -> PairResult:
        for pair in self.pairs:
            if pair.config == config and pair.text == text:
                return pair
        raise KeyError(f"no result for config {config!r} on text {text!r}")

    def means(self) -> List[Dict[str, Any]]:
        """Per config (in the order given): arithmetic means of its figures over its texts."""
        out: List[Dict[str, Any]] = []
        for config in dict.fromkeys(p.config for p in self.pairs):
            rows = [p.to_dict() for p in self.pairs if p.config == config]
            mean = {"config": config, "texts": len(rows)}
            mean.update({k: sum(r[k] for r in rows) / len(rows) for k in MEAN_KEYS})
            out.append(mean)
        return out

    def to_dict(self) -> Dict[str, Any]:
        return {"model": self.model, "tokens": self.tokens, "positions": self.positions,
                "dtype": "float32", "device": self.device,
                "dense": [d.to_dict() for d in self.dense],
                "results": [p.to_dict() for p in self.pairs], "means": self.means()}

    def write_json(self, path: Union[str, Path]) -> Path:
        """Write :meth:`to_dict` atomically (a temp file next to ``path``, then renamed)."""
        path = Path(path)
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    def table(self) -> str:
        """A Markdown table: one row per (config, text), then per-config means over texts."""
        lines = [f"in-model validation: {self.model}, {self.tokens} tokens, last "
                 f"{self.positions} positions sparse in every layer (float32, {self.device})", "",
                 "| config | text | kl | top1_agreement | ppl_ratio | density | worst layer error "
                 "(layer) | seconds |", "|---|---|---|---|---|---|---|---|"]
        for p in self.pairs:
            f = p.figures
            worst = f.worst_layer
            worst_text = f"{worst.output_error:.4g} ({worst.layer})" if worst else "-"
            lines.append(f"| {p.config} | {p.text} | {f.kl:.4g} | {f.top1_agreement:.4f} | "
                         f"{f.ppl_ratio:.4f} | {f.density:.4f} | {worst_text} | {f.seconds:.2f} |")
        means = self.means()
        if any(m["texts"] > 1 for m in means):
            lines += ["", "| config | texts | mean kl | mean top1_agreement | mean ppl_ratio | "
                      "mean density |", "|---|---|---|---|---|---|"]
            lines += [f"| {m['config']} | {m['texts']} | {m['kl']:.4g} | "
                      f"{m['top1_agreement']:.4f} | {m['ppl_ratio']:.4f} | {m['density']:.4f} |"
                      for m in means]
        dense = ", ".join(f"{d.text} {d.seconds:.2f} s" for d in self.dense)
        lines += ["", f"dense pass (prefill + dense chunk, shared by all configs): {dense}"]
        return "\n".join(lines)
