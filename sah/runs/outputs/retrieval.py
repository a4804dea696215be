"""The retrieval check of a run's picks (``validate.tasks``): ``retrieval.csv``, the NIAH
heatmaps ``retrieval_<task>.png`` and the retrieval section of ``summary.md``.

``retrieval.csv``: one row per (chain, pick, task, tokens), the dense baseline's rows
first per (task, tokens) with ``chain`` ``dense`` and no pick, config or trial. Columns:
the tuned config file and its trial, ``task``, ``tokens``, ``samples``, ``accuracy`` (empty
when not scored), ``scored`` (0 where the dense baseline's accuracy is below 0.9: "the
model itself cannot do this task at this length"), ``per_depth`` (a JSON object
``{depth: accuracy}``, depth a fraction of the context), the offline figures of the
pick's trial (as in ``trials.csv``) and the seconds per sample of the answers.

Heatmaps: per task, one panel per validated config (and dense), needle depth (rows) by
prompt length (columns), the share of samples passed in each cell (the field's NIAH
figure). Summary: accuracy per chain and length beside offline error and in-model KL
(``validation.csv``, where the config was validated on texts), and per (task, tokens)
the Spearman correlation between offline error and retrieval failure (1 - accuracy).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

from sah.runs.outputs.validation import config_points, spearman

COLUMNS = ("chain", "pick", "config", "trial", "task", "tokens", "samples", "accuracy", "scored",
           "per_depth", "offline_output_error", "offline_density", "seconds_per_sample")
_INTS = ("trial", "tokens", "samples", "scored")
_TEXTS = ("chain", "pick", "config", "task")
DENSE = "dense"


def retrieval_csv(rows: Sequence[Dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(COLUMNS), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        cells = {k: ("" if row.get(k) is None else row[k]) for k in COLUMNS}
        cells["per_depth"] = "" if row.get("per_depth") is None else json.dumps(row["per_depth"])
        cells["scored"] = int(bool(row.get("scored")))
        writer.writerow(cells)
    return out.getvalue()


def read_retrieval_csv(path: Path) -> List[Dict[str, Any]]:
    """The rows of ``retrieval.csv`` typed again (empty when the file is missing)."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    with path.open(newline="") as fh:
        for raw in csv.DictReader(fh):
            row: Dict[str, Any] = {}
            for key in COLUMNS:
                value = raw.get(key, "")
                if key in _TEXTS:
                    row[key] = value
                elif value == "":
                    row[key] = None
                elif key == "per_depth":
                    row[key] = json.loads(value)
                else:
                    row[key] = int(value) if key in _INTS else float(value)
            row["scored"] = bool(row["scored"])
            rows.append(row)
    return rows


def _label(row: Dict[str, Any]) -> str:
    return DENSE if row["chain"] == DENSE else f"{row['chain']} ({row['pick']})"


def plot_heatmaps(rows: Sequence[Dict[str, Any]], task: str) -> bytes:
    """One panel per config of ``task``: depth (rows) by length (columns), accuracy."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mine = [r for r in rows if r["task"] == task]
    labels = list(dict.fromkeys(_label(r) for r in mine))
    lengths = sorted({r["tokens"] for r in mine})
    depths = sorted({float(d) for r in mine if r["per_depth"] for d in r["per_depth"]})
    cols = min(4, len(labels))
    nrows = -(-len(labels) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.2 * cols, 2.8 * nrows), dpi=80,
                             squeeze=False)
    for ax in axes.flat[len(labels):]:
        ax.axis("off")
    for ax, label in zip(axes.flat, labels):
        grid = [[float("nan")] * len(lengths) for _ in depths]
        for r in mine:
            if _label(r) != label or not r["per_depth"]:
                continue
            for d, acc in r["per_depth"].items():
                grid[depths.index(float(d))][lengths.index(r["tokens"])] = acc
        ax.imshow(grid, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
        ax.set_title(label, fontsize=7)
        ax.set_xticks(range(len(lengths)), [str(n) for n in lengths], fontsize=6)
        ax.set_yticks(range(len(depths)), [f"{d:.0%}" for d in depths], fontsize=5)
        ax.set_xlabel("prompt tokens", fontsize=6)
        ax.set_ylabel("needle depth", fontsize=6)
    fig.suptitle(f"{task}: share of needles retrieved (green 1, red 0, blank: not scored)",
                 fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _kl_of(validation_rows: Sequence[Dict[str, Any]]) -> Dict[Tuple[str, int], float]:
    return {(p["chain"], p["trial"]): p["kl"] for p in config_points(validation_rows)}


def retrieval_markdown(study: Any, rows: Sequence[Dict[str, Any]],
                       validation_rows: Sequence[Dict[str, Any]] = ()) -> List[str]:
    """The retrieval section of ``summary.md``."""
    kl = _kl_of(validation_rows)
    lines = ["", "## Retrieval inside the model", "",
             "Needle-in-a-haystack retrieval (docs/retrieval.md): the context prefilled with "
             "the model's own attention, the question and at most 8 greedy answer tokens with "
             "the chain in every layer; a sample passes when the needle's value appears in the "
             "answer. Per-depth figures in `retrieval.csv`, heatmaps in "
             + ", ".join(f"`retrieval_{t}.png`" for t in dict.fromkeys(r["task"] for r in rows))
             + ".", ""]
    for task, tokens in dict.fromkeys((r["task"], r["tokens"]) for r in rows):
        group = [r for r in rows if (r["task"], r["tokens"]) == (task, tokens)]
        dense = next((r for r in group if r["chain"] == DENSE), None)
        lines += [f"**{task}, {tokens} tokens, {group[0]['samples']} samples**: dense accuracy "
                  + ("-" if dense is None or dense["accuracy"] is None
                     else f"{dense['accuracy']:.2f}") + ".", ""]
        scored = [r for r in group if r["chain"] != DENSE and r["scored"]]
        if any(r["chain"] != DENSE and not r["scored"] for r in group):
            lines += ["The model itself cannot do this task at this length (dense accuracy "
                      "below 0.9): the chains are not scored.", ""]
        if not scored:
            continue
        lines += ["| chain | pick | trial | offline output_error | in-model KL | accuracy |",
                  "|---|---|---|---|---|---|"]
        for r in scored:
            k = kl.get((r["chain"], r["trial"]))
            lines.append(f"| {r['chain']} | {r['pick']} | {r['trial']} | "
                         f"{r['offline_output_error']:.4g} | "
                         f"{'-' if k is None else f'{k:.4g}'} | {r['accuracy']:.2f} |")
        configs = {(r["chain"], r["trial"]): r for r in scored}.values()
        rho = spearman([r["offline_output_error"] for r in configs],
                       [1 - r["accuracy"] for r in configs])
        lines += ["", "Spearman rank correlation between offline output_error and retrieval "
                  "failure (1 - accuracy): "
                  + ("- (fewer than 2 configs or a constant side)" if rho is None
                     else f"**{rho:.3f}** over {len(configs)} configs") + ".", ""]
    return lines


def write_retrieval_files(run_dir: Path, rows: Sequence[Dict[str, Any]],
                          write_bytes: Any, write_text: Any) -> None:
    run_dir = Path(run_dir)
    write_text(run_dir / "retrieval.csv", retrieval_csv(rows))
    for task in dict.fromkeys(r["task"] for r in rows):
        write_bytes(run_dir / f"retrieval_{task}.png", plot_heatmaps(rows, task))
