"""What a retrieval check reports: accuracy per (config, task, tokens), overall and per
depth, each sample's answer, JSON and table.

JSON layout (:meth:`RetrievalResults.to_dict`)::

    {"model": ..., "device": "cpu", "dtype": "float32", "max_new_tokens": 8, "seed": 0,
     "entries": [{"config", "task", "tokens", "samples", "accuracy", "per_depth",
                  "scored", "note", "seconds_per_sample"}, ...],
     "prefill": [{"task", "tokens", "samples", "seconds_per_sample"}, ...],
     "answers": [{"config", "task", "tokens", "index", "depth", "position", "value",
                  "answer", "passed", "seconds"}, ...]}

The dense baseline's entries have ``config: "dense"``. ``per_depth`` maps the depth
(a fraction of the context, as a string such as ``"0.05"``) to the accuracy of the
samples at that depth. Where the dense baseline's accuracy is below
:data:`DENSE_FLOOR`, the other configs' entries are not scored: ``accuracy`` and
``per_depth`` are null, ``scored`` false and ``note`` says why (:data:`UNSCORED`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

from sah.infra.files import atomic_write_text

DENSE = "dense"
DENSE_FLOOR = 0.9
UNSCORED = "the model itself cannot do this task at this length"


def depth_key(depth: float) -> str:
    return f"{depth:.4g}"


@dataclass
class SampleAnswer:
    config: str
    task: str
    tokens: int
    index: int
    depth: float
    position: int
    value: str
    answer: str
    passed: bool
    seconds: float

    def to_dict(self) -> Dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class RetrievalEntry:
    config: str
    task: str
    tokens: int
    samples: int
    accuracy: Optional[float]
    per_depth: Optional[Dict[str, float]]
    seconds_per_sample: float
    scored: bool = True
    note: str = ""

    def to_dict(self) -> Dict[str, Any]:
        return dict(self.__dict__)


def entry_of(config: str, task: str, tokens: int, samples: int, answers: List[SampleAnswer],
             scored: bool = True) -> RetrievalEntry:
    """The entry of one (config, task, tokens) from its answers (unscored: no accuracy;
    then the answers may cover only the first samples)."""
    seconds = sum(a.seconds for a in answers) / max(1, len(answers))
    if not scored:
        return RetrievalEntry(config, task, tokens, samples, None, None, seconds, False,
                              UNSCORED)
    by_depth: Dict[str, List[bool]] = {}
    for a in answers:
        by_depth.setdefault(depth_key(a.depth), []).append(a.passed)
    per_depth = {k: sum(v) / len(v) for k, v in by_depth.items()}
    accuracy = sum(a.passed for a in answers) / len(answers)
    return RetrievalEntry(config, task, tokens, samples, accuracy, per_depth, seconds)


@dataclass
class RetrievalResults:
    model: str
    device: str
    max_new_tokens: int
    seed: int
    entries: List[RetrievalEntry] = field(default_factory=list)
    answers: List[SampleAnswer] = field(default_factory=list)
    prefill: List[Dict[str, Any]] = field(default_factory=list)
    model_seconds: float = 0.0

    def get(self, config: str, task: str, tokens: int) -> RetrievalEntry:
        for e in self.entries:
            if (e.config, e.task, e.tokens) == (config, task, tokens):
                return e
        raise KeyError(f"no retrieval entry for config {config!r}, task {task!r}, {tokens} tokens")

    def to_dict(self) -> Dict[str, Any]:
        return {"model": self.model, "device": self.device, "dtype": "float32",
                "max_new_tokens": self.max_new_tokens, "seed": self.seed,
                "entries": [e.to_dict() for e in self.entries], "prefill": list(self.prefill),
                "answers": [a.to_dict() for a in self.answers]}

    def write_json(self, path: Union[str, Path]) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    def table(self) -> str:
        """One Markdown table per (task, tokens): a row per config (dense first), accuracy
        and a column per depth."""
        lines = [f"retrieval inside the model: {self.model} (float32, {self.device}); context "
                 f"prefilled dense, question and at most {self.max_new_tokens} greedy tokens "
                 f"with the chain in every layer; a sample passes when its value appears in "
                 f"the answer"]
        groups = list(dict.fromkeys((e.task, e.tokens) for e in self.entries))
        for task, tokens in groups:
            rows = [e for e in self.entries if (e.task, e.tokens) == (task, tokens)]
            depths = list(next((e.per_depth for e in rows if e.per_depth), {}) or {})
            lines += ["", f"{task}, {tokens} tokens, {rows[0].samples} samples", "",
                      "| config | accuracy | " + " | ".join(f"{float(d):.0%}" for d in depths)
                      + " | s/sample |",
                      "|---|---|" + "---|" * len(depths) + "---|"]
            for e in rows:
                if e.scored:
                    cells = [f"{e.accuracy:.2f}"] + [f"{e.per_depth[d]:.2g}" for d in depths]
                else:
                    cells = [e.note] + ["-"] * len(depths)
                lines.append(f"| {e.config} | " + " | ".join(cells)
                             + f" | {e.seconds_per_sample:.2f} |")
            dense = rows[0]
            if dense.config == DENSE and dense.accuracy is not None and dense.accuracy < DENSE_FLOOR:
                lines += ["", f"dense accuracy {dense.accuracy:.2f} < {DENSE_FLOOR}: {UNSCORED} "
                              f"({task}, {tokens} tokens); the chains are not scored"]
        for p in self.prefill:
            lines.append(f"\ndense prefill {p['task']} {p['tokens']} tokens: "
                         f"{p['seconds_per_sample']:.2f} s per sample (shared by every config)")
        return "\n".join(lines)
