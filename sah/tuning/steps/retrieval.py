"""The retrieval step of a run: the study's picks on ``validate.tasks`` inside the model.

After the in-model validation (same loaded model), for each task entry and each length,
the tuned files of the entry's picks run :func:`sah.inmodel.retrieval.validate_retrieval`
(one dense prefill per sample shared by the dense baseline and every config; picks that
are the same trial run once). Each (config, task, tokens) entry is written to
``retrieval.csv`` as soon as it is complete (atomically, stop signals held); ``--resume``
runs only the (task, tokens) groups that still miss a row.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

from sah.infra.files import atomic_write_text
from sah.runs.outputs.retrieval import DENSE, read_retrieval_csv, retrieval_csv
from sah.tuning.signals import signals_deferred

RETRIEVAL_CSV = "retrieval.csv"


def _row(target: Any, entry: Any) -> Dict[str, Any]:
    out = {"task": entry.task, "tokens": entry.tokens, "samples": entry.samples,
           "accuracy": entry.accuracy, "scored": entry.scored, "per_depth": entry.per_depth,
           "seconds_per_sample": entry.seconds_per_sample}
    if target is None:
        out.update({"chain": DENSE, "pick": "", "config": "", "trial": None,
                    "offline_output_error": None, "offline_density": None})
    else:
        out.update({"chain": target.chain, "pick": target.pick, "config": target.config,
                    "trial": int(target.row["trial"]),
                    "offline_output_error": target.row["output_error"],
                    "offline_density": target.row["density"]})
    return out


def run_retrieval(run_dir: Path, study: Any, every: List[Any],
                  model: Callable[[], Tuple[Any, Any]], say: Callable[[str], None]
                  ) -> List[Dict[str, Any]]:
    """Every ``retrieval.csv`` row (earlier parts' included). ``every``: the run's picks
    (:func:`sah.tuning.steps.validation.targets`); ``model()`` gives the loaded
    ``(model, tokenizer)`` (loaded on first use)."""
    from sah.attention import ResearchAttentionConfig
    from sah.inmodel.retrieval import validate_retrieval

    run_dir = Path(run_dir)
    path = run_dir / RETRIEVAL_CSV
    order = {(t.chain, t.pick): i for i, t in enumerate(every)}
    groups = [(spec, n) for spec in study.validate.tasks for n in spec.lengths]
    keep = {(spec.task, n) for spec, n in groups}
    done = [r for r in read_retrieval_csv(path) if (r["task"], r["tokens"]) in keep]

    rank = {key: i for i, key in enumerate((spec.task, n) for spec, n in groups)}

    def ordered() -> List[Dict[str, Any]]:
        return sorted(done, key=lambda r: (rank[(r["task"], r["tokens"])],
                                           -1 if r["chain"] == DENSE
                                           else order.get((r["chain"], r["pick"]), 0)))

    for spec, tokens in groups:
        wanted: List[Any] = [t for t in every if t.pick in spec.picks]
        have = {(r["chain"], r["pick"], r["trial"]) for r in done
                if (r["task"], r["tokens"]) == (spec.task, tokens)}
        if (DENSE, "", None) in have and all(
                (t.chain, t.pick, int(t.row["trial"])) in have for t in wanted):
            continue
        done[:] = [r for r in done if (r["task"], r["tokens"]) != (spec.task, tokens)]
        by_trial: Dict[Tuple[str, int], List[Any]] = {}
        for t in wanted:  # picks that are the same trial run once
            by_trial.setdefault(t.key, []).append(t)
        by_name = {members[0].config: members for members in by_trial.values()}
        configs = {name: ResearchAttentionConfig.from_file(run_dir / name) for name in by_name}
        say(f"retrieval: {spec.task} at {tokens} tokens, {spec.samples} samples, "
            f"{len(configs)} config(s) and dense")

        def on_entry(entry: Any) -> None:
            members = [None] if entry.config == DENSE else by_name[entry.config]
            done.extend(_row(t, entry) for t in members)
            with signals_deferred():
                atomic_write_text(path, retrieval_csv(ordered()))

        validate_retrieval(configs, [spec.task], [tokens], spec.samples, text=spec.text,
                           model=model(), progress=say, on_entry=on_entry,
                           where=("validate.tasks.task", "validate.tasks.lengths",
                                  "validate.tasks.text", "validate.tasks.samples",
                                  "validate.picks"))
    return ordered()
