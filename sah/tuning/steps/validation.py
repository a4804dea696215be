"""The validation step of a run: after tuning, the study's picks run inside the model.

For each chain and each pick the study's ``validate.picks`` names (``best``:
``tuned/<chain>.yaml``; ``density_<t>``: ``tuned/<chain>.density_<t>.yaml``; a chain with no
row at a target has no such pick), the tuned config file is validated with
:func:`sah.inmodel.validate_configs` on every ``validate.texts`` text: the embedded model is
loaded once, each text gets ONE dense pass shared by every config, and picks that are the
same trial are validated once. Each (config, text) result is written to ``validation.csv``
as soon as it is measured (atomically, stop signals held), so a run stopped during
validation keeps what it finished: ``--resume`` validates only the missing (chain, pick,
text) rows, with one dense pass per text that still has any, and never redoes tuning.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from sah.infra.threads import torch_threads
from sah.infra.files import atomic_write_text
from sah.runs.outputs.picks import best_row, target_row
from sah.runs.outputs.validation import read_validation_csv, validation_csv
from sah.tuning.signals import signals_deferred
from sah.study.validate import BEST, pick_name

VALIDATION_CSV = "validation.csv"
#: torch threads of the validation step (the driver's; Ray has stopped by then). One, as
#: the HashAttention fit: on shared cores two threads wait for each other (one thread
#: against two: benchmark/RESULTS.md section 6 and benchmark/CHANGELOG.md).
VALIDATION_THREADS = 1


@dataclass
class Target:
    """One pick of one chain: its tuned config file and the trial row it came from."""

    chain: str
    pick: str
    config: str              # the tuned file, relative to the run folder
    row: Dict[str, Any]

    @property
    def key(self) -> Tuple[str, int]:
        return self.chain, int(self.row["trial"])


def targets(study: Any, rows: List[Dict[str, Any]], run_dir: Path) -> List[Target]:
    """The picks to validate, in chain order then pick order (those with a tuned file)."""
    out: List[Target] = []
    by_pick = {pick_name(t): t for t in study.density_targets}
    for chain in study.chains:
        for pick in study.validate.picks:
            if pick == BEST:
                row, name = best_row(rows, chain.name), f"tuned/{chain.name}.yaml"
            else:
                row = target_row(rows, chain.name, by_pick[pick])
                name = f"tuned/{chain.name}.{pick}.yaml"
            if row is not None and (run_dir / name).is_file():
                out.append(Target(chain.name, pick, name, row))
    return out


def _row(target: Target, pair: Any) -> Dict[str, Any]:
    f = pair.figures
    worst = f.worst_layer
    return {"chain": target.chain, "pick": target.pick, "config": target.config,
            "trial": int(target.row["trial"]), "text": pair.text,
            "text_sha256": pair.text_sha256, "token_start": pair.token_start,
            "token_end": pair.token_end,
            "offline_output_error": target.row["output_error"],
            "offline_density": target.row["density"], "kl": f.kl,
            "top1_agreement": f.top1_agreement, "ppl_ratio": f.ppl_ratio,
            "inmodel_density": f.density, "nll_dense": f.nll_dense, "nll_sparse": f.nll_sparse,
            "worst_layer": worst.layer if worst else None,
            "worst_layer_output_error": worst.output_error if worst else None,
            "seconds": f.seconds}


def _ordered(rows: List[Dict[str, Any]], wanted: List[Target], texts: List[str]
             ) -> List[Dict[str, Any]]:
    order = {(t.chain, t.pick): i for i, t in enumerate(wanted)}
    return sorted(rows, key=lambda r: (order[(r["chain"], r["pick"])], texts.index(r["text"])))


def run_validation(run_dir: Path, study: Any, rows: List[Dict[str, Any]],
                   model: Optional[Tuple[Any, Any]] = None, progress: bool = True
                   ) -> Tuple[List[Dict[str, Any]], Dict[str, float]]:
    """Validate the study's picks; returns every ``validation.csv`` row (those of earlier
    parts of the run included) and this part's timing (model load, dense passes).
    ``model``: an already loaded ``(model, tokenizer)`` of the embedded model (float32)."""
    validation, _, timing = run_validation_steps(run_dir, study, rows, model, progress)
    return validation, timing


def run_validation_steps(run_dir: Path, study: Any, rows: List[Dict[str, Any]],
                         model: Optional[Tuple[Any, Any]] = None, progress: bool = True
                         ) -> Tuple[List[Dict[str, Any]], List[Dict[str, Any]], Dict[str, float]]:
    """:func:`run_validation` (when ``validate.texts`` is given), then the retrieval tasks
    (:mod:`sah.tuning.steps.retrieval`, when ``validate.tasks`` is), one model load for
    both: ``(validation rows, retrieval rows, timing)``."""
    from sah.tuning.steps.retrieval import run_retrieval

    loader = _ModelLoader(model, progress, getattr(study.validate, "model", "default"))
    with torch_threads(VALIDATION_THREADS):
        validation = (_run_validation(run_dir, study, rows, loader, progress)
                      if study.validate.texts else [])
        start = time.perf_counter()
        retrieval = (run_retrieval(run_dir, study, targets(study, rows, Path(run_dir)), loader,
                                   _say(progress))
                     if study.validate.tasks else [])
        if study.validate.tasks:
            loader.timing["retrieval_seconds"] = time.perf_counter() - start
    return validation, retrieval, loader.timing


def _say(progress: bool) -> Callable[[str], None]:
    return ((lambda m: print(f"sah: validation: {m}", file=sys.stderr, flush=True))
            if progress else (lambda m: None))


class _ModelLoader:
    """The embedded model, loaded on first use (or the one given), and the step's timing."""

    def __init__(self, model: Optional[Tuple[Any, Any]], progress: bool,
                 name: str = "default") -> None:
        self.model = model
        self.name = name  # validate.model: default | gemma-3-270m | a local model
        self.say = _say(progress)
        self.timing = {"model_seconds": 0.0, "dense_seconds": 0.0}

    def __call__(self) -> Tuple[Any, Any]:
        if self.model is None:
            import torch

            from sah.recording.default_model import load_model
            start = time.perf_counter()
            loaded, tokenizer = load_model(self.name)
            if next(loaded.parameters()).dtype != torch.float32:  # GGUF: dequantised already
                loaded = loaded.float()
            self.model = (loaded, tokenizer)
            self.timing["model_seconds"] = time.perf_counter() - start
            self.say(f"loaded the model ({self.name}) in {self.timing['model_seconds']:.0f} s")
        return self.model


def _run_validation(run_dir: Path, study: Any, rows: List[Dict[str, Any]],
                    loader: "_ModelLoader", progress: bool) -> List[Dict[str, Any]]:
    from sah.attention import ResearchAttentionConfig
    from sah.inmodel import validate_configs

    section = study.validate
    run_dir = Path(run_dir)
    path = run_dir / VALIDATION_CSV
    wanted = targets(study, rows, run_dir)
    valid_keys = {(t.chain, t.pick, t.row["trial"]) for t in wanted}
    done: List[Dict[str, Any]] = []
    seen = set()
    for r in read_validation_csv(path):  # an earlier part's rows, if still wanted, once each
        key = (r["chain"], r["pick"], r["text"])
        if (r["chain"], r["pick"], r["trial"]) in valid_keys and r["text"] in section.texts \
                and key not in seen:
            done.append(r)
            seen.add(key)
    say = _say(progress)
    timing = loader.timing
    todo: Dict[str, Dict[Tuple[str, int], List[Target]]] = {}
    for text in section.texts:
        for t in wanted:
            if (t.chain, t.pick, text) not in seen:
                todo.setdefault(text, {}).setdefault(t.key, []).append(t)
    if not todo:
        return _ordered(done, wanted, section.texts)
    say(f"{sum(len(v) for v in todo.values())} config(s) x text to run inside the model "
        f"({len(wanted)} picks, {len(section.texts)} text(s))")
    model = loader()
    for text, configs in todo.items():
        by_name = {members[0].config: members for members in configs.values()}
        loaded_configs = {name: ResearchAttentionConfig.from_file(run_dir / name)
                          for name in by_name}

        def on_result(pair: Any) -> None:
            for t in by_name[pair.config]:
                if (t.chain, t.pick, text) not in seen:
                    done.append(_row(t, pair))
                    seen.add((t.chain, t.pick, text))
            with signals_deferred():
                atomic_write_text(path, validation_csv(_ordered(done, wanted, section.texts)))

        results = validate_configs(loaded_configs, [text], section.tokens, section.positions,
                                   model=model, progress=say, on_result=on_result,
                                   where=("validate.tokens", "validate.positions",
                                          "validate.texts"))
        timing["dense_seconds"] += sum(d.seconds for d in results.dense)
    return _ordered(done, wanted, section.texts)
