"""The in-model validation of a run's picks: ``validation.csv``, ``offline_vs_online.png``
and the validation section of ``summary.md``.

``validation.csv`` is long format: one row per (chain, pick, text) with the tuned config
file, its trial, the offline figures (``offline_output_error``, ``offline_density``: means
over the scored recordings, as in ``trials.csv``) and the in-model figures on that text
(``kl``, ``top1_agreement``, ``ppl_ratio``, ``inmodel_density``, the dense and sparse NLL,
the worst layer's output error and the seconds of the sparse chunk). Picks that are the
same trial (a chain's ``best`` is often its ``density_0.1``) are validated once and share
their figures.

Over the validated *configs* (distinct (chain, trial), KL averaged over the texts):

- the Spearman rank correlation between offline ``output_error`` and in-model ``kl``
  (average ranks for ties);
- **far worse than offline predicts**: a straight line is fitted by least squares through
  ``(log output_error, log kl)`` of every validated config (at least 3); a config's factor
  is its KL over the line's KL at its offline error, and a chain is listed when the median
  factor of its configs exceeds :data:`FAR_WORSE_FACTOR` (2x).
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

COLUMNS = ("chain", "pick", "config", "trial", "text", "text_sha256", "token_start", "token_end",
           "offline_output_error", "offline_density", "kl", "top1_agreement", "ppl_ratio",
           "inmodel_density", "nll_dense", "nll_sparse", "worst_layer",
           "worst_layer_output_error", "seconds")
_INTS = ("trial", "token_start", "token_end", "worst_layer")
_TEXTS = ("chain", "pick", "config", "text", "text_sha256")
FAR_WORSE_FACTOR = 2.0
MIN_FIT_CONFIGS = 3


# ---------------------------------------------------------------------- the table
def validation_csv(rows: Sequence[Dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(COLUMNS), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in COLUMNS})
    return out.getvalue()


def read_validation_csv(path: Path) -> List[Dict[str, Any]]:
    """The rows of ``validation.csv`` typed again (empty when the file is missing)."""
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
                else:
                    row[key] = int(value) if key in _INTS else float(value)
            rows.append(row)
    return rows


# ---------------------------------------------------------------------- the figures
def config_points(rows: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """One point per validated config (chain, trial): its picks, offline figures and the
    means of its in-model figures over its texts."""
    groups: Dict[Tuple[str, int], List[Dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["chain"], row["trial"]), []).append(row)
    points = []
    for (chain, trial), members in groups.items():
        by_text: Dict[str, Dict[str, Any]] = {}
        for r in members:
            by_text.setdefault(r["text"], r)
        texts = list(by_text.values())
        point = {"chain": chain, "trial": trial,
                 "picks": list(dict.fromkeys(r["pick"] for r in members)),
                 "offline_output_error": members[0]["offline_output_error"],
                 "offline_density": members[0]["offline_density"], "texts": len(texts)}
        for key in ("kl", "top1_agreement", "ppl_ratio", "inmodel_density"):
            point[key] = sum(r[key] for r in texts) / len(texts)
        points.append(point)
    return points


def _ranks(values: Sequence[float]) -> List[float]:
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(xs: Sequence[float], ys: Sequence[float]) -> Optional[float]:
    """Spearman's rank correlation (Pearson's on average ranks); None below 2 points or
    when one side is constant."""
    if len(xs) < 2:
        return None
    rx, ry = _ranks(xs), _ranks(ys)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    sxx = sum((a - mx) ** 2 for a in rx)
    syy = sum((b - my) ** 2 for b in ry)
    return None if sxx == 0 or syy == 0 else sxy / math.sqrt(sxx * syy)


def loglog_fit(points: Sequence[Dict[str, Any]]) -> Optional[Tuple[float, float]]:
    """``(intercept, slope)`` of ``log kl = a + b log output_error`` by least squares over the
    points with both positive; None with fewer than :data:`MIN_FIT_CONFIGS`."""
    pairs = [(math.log(p["offline_output_error"]), math.log(p["kl"])) for p in points
             if p["offline_output_error"] > 0 and p["kl"] > 0]
    if len(pairs) < MIN_FIT_CONFIGS:
        return None
    mx = sum(x for x, _ in pairs) / len(pairs)
    my = sum(y for _, y in pairs) / len(pairs)
    sxx = sum((x - mx) ** 2 for x, _ in pairs)
    slope = 0.0 if sxx == 0 else sum((x - mx) * (y - my) for x, y in pairs) / sxx
    return my - slope * mx, slope


def predicted_kl(fit: Tuple[float, float], error: float) -> float:
    return math.exp(fit[0] + fit[1] * math.log(error))


def far_worse(points: Sequence[Dict[str, Any]], fit: Optional[Tuple[float, float]]
              ) -> Dict[str, float]:
    """``{chain: median factor}`` of every chain whose configs' KL is, at the median, more
    than :data:`FAR_WORSE_FACTOR` times the fitted line's KL at their offline error."""
    if fit is None:
        return {}
    factors: Dict[str, List[float]] = {}
    for p in points:
        if p["offline_output_error"] > 0 and p["kl"] > 0:
            factors.setdefault(p["chain"], []).append(
                p["kl"] / predicted_kl(fit, p["offline_output_error"]))
    medians = {c: statistics.median(f) for c, f in factors.items()}
    return {c: m for c, m in sorted(medians.items(), key=lambda x: -x[1]) if m > FAR_WORSE_FACTOR}


# ---------------------------------------------------------------------- the plot
def plot_offline_vs_online(study: Any, rows: Sequence[Dict[str, Any]]) -> bytes:
    """Offline output error vs in-model KL (log axes), one colour per chain, each point
    labelled with its chain (and pick when a chain has several), the fitted line and the
    far-worse threshold (2x above it)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [p for p in config_points(rows) if p["offline_output_error"] > 0 and p["kl"] > 0]
    fig, ax = plt.subplots(figsize=(10, 6), dpi=80)
    chains = [c.name for c in study.chains]
    colours = plt.get_cmap("tab20" if len(chains) > 10 else "tab10")
    several = {c: sum(p["chain"] == c for p in points) > 1 for c in chains}
    labels: Dict[Tuple[float, float], List[Tuple[str, Any]]] = {}  # one label per position
    for i, chain in enumerate(chains):
        mine = [p for p in points if p["chain"] == chain]
        if not mine:
            continue
        colour = colours(i % colours.N)
        ax.scatter([p["offline_output_error"] for p in mine], [p["kl"] for p in mine], s=28,
                   color=colour, label=chain, zorder=3)
        for p in mine:
            label = f"{chain}: {'/'.join(p['picks'])}" if several[chain] else chain
            labels.setdefault((p["offline_output_error"], p["kl"]), []).append((label, colour))
    # configs with equal figures share one label; neighbours (by error) alternate above and
    # below their points so that close points keep readable labels
    for k, ((x, y), items) in enumerate(sorted(labels.items())):
        ax.annotate(" = ".join(label for label, _ in items), (x, y), fontsize=6,
                    xytext=(4, 3 if k % 2 == 0 else -9), textcoords="offset points",
                    color=items[0][1])
    fit = loglog_fit(points)
    if fit is not None:
        xs = [p["offline_output_error"] for p in points]
        grid = [min(xs) * (max(xs) / min(xs)) ** (k / 50) for k in range(51)]
        ax.plot(grid, [predicted_kl(fit, x) for x in grid], color="grey", linestyle="--",
                linewidth=1, label=f"least-squares fit (slope {fit[1]:.2f})")
        ax.plot(grid, [FAR_WORSE_FACTOR * predicted_kl(fit, x) for x in grid], color="grey",
                linestyle=":", linewidth=1, label=f"{FAR_WORSE_FACTOR:g}x the fit (far worse above)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    if points:  # room on the right for the labels
        xs = [p["offline_output_error"] for p in points]
        ax.set_xlim(min(xs) / 1.3, max(xs) * 2.5)
    ax.set_xlabel("offline output error (mean over scored recordings and layers)")
    ax.set_ylabel("in-model KL(dense || sparse), nats (mean over validation texts)")
    section = study.validate
    rho = spearman([p["offline_output_error"] for p in points], [p["kl"] for p in points])
    ax.set_title(f"{study.name}: offline error vs in-model KL on {', '.join(section.texts)} "
                 f"({section.tokens} tokens, last {section.positions} sparse); Spearman "
                 + ("-" if rho is None else f"{rho:.2f}") + f", {len(points)} configs",
                 fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


# ---------------------------------------------------------------------- summary.md
def _fmt(x: Optional[float], digits: int = 4) -> str:
    return "-" if x is None else f"{x:.{digits}g}"


def _chunk_seconds(rows: Sequence[Dict[str, Any]]) -> float:
    """Seconds of the sparse chunks, each (config, text) once (picks of one trial share one)."""
    seen: Dict[Tuple[str, int, str], float] = {}
    for r in rows:
        seen.setdefault((r["chain"], r["trial"], r["text"]), r["seconds"] or 0.0)
    return sum(seen.values())


def _model_words(section: Any) -> str:
    model = getattr(section, "model", "default")
    return "the embedded model" if model == "default" else f"`{model}`"


def validation_markdown(study: Any, rows: Sequence[Dict[str, Any]],
                        timing: Optional[Dict[str, float]] = None) -> List[str]:
    """The validation section of ``summary.md``."""
    section = study.validate
    points = config_points(rows)
    valid = [p for p in points if p["offline_output_error"] > 0 and p["kl"] > 0]
    rho = spearman([p["offline_output_error"] for p in points], [p["kl"] for p in points])
    fit = loglog_fit(points)
    worse = far_worse(points, fit)
    lines = ["", "## In-model validation", "",
             f"Picks {', '.join(f'`{p}`' for p in section.picks)} of each chain, run inside "
             f"{_model_words(section)} with the chain in every layer, on {', '.join(f'`{t}`' for t in section.texts)} "
             f"({section.tokens} tokens, the last {section.positions} sparse; docs/validation.md): {len(points)} configs, "
             f"{_chunk_seconds(rows):.0f} s of sparse chunks"
             + "".join(f"; {what} {timing[key]:.0f} s" for key, what in
                       (("model_seconds", "model load"), ("dense_seconds", "dense passes"))
                       if timing and timing.get(key))
             + ". Figures per text in `validation.csv`; plot `offline_vs_online.png`.", ""]
    lines.append("Spearman rank correlation between offline output_error and in-model KL: "
                 + ("- (fewer than 2 configs or a constant side)" if rho is None
                    else f"**{rho:.3f}** over {len(points)} configs") + ".")
    lines.append("")
    mean_note = " (means over the texts)" if len(section.texts) > 1 else ""
    lines += [f"| chain | pick | trial | offline output_error | offline density | kl | "
              f"top1_agreement | ppl_ratio | in-model density | kl / fit |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for p in points:
        factor = ("-" if fit is None or p not in valid
                  else f"{p['kl'] / predicted_kl(fit, p['offline_output_error']):.2f}")
        lines.append(f"| {p['chain']} | {', '.join(p['picks'])} | {p['trial']} | "
                     f"{_fmt(p['offline_output_error'])} | {_fmt(p['offline_density'], 3)} | "
                     f"{_fmt(p['kl'])} | {p['top1_agreement']:.4f} | {p['ppl_ratio']:.4f} | "
                     f"{_fmt(p['inmodel_density'], 3)} | {factor} |")
    lines += ["", f"In-model figures{mean_note}; `kl / fit`: the config's KL over the KL "
              f"predicted from its offline error by the least-squares line through "
              f"(log output_error, log kl) of all validated configs."]
    if fit is None:
        lines.append(f"Far worse than offline predicts: not judged (fewer than "
                     f"{MIN_FIT_CONFIGS} configs with positive error and KL).")
    else:
        rule = (f"median `kl / fit` of the chain's configs above {FAR_WORSE_FACTOR:g}")
        found = ", ".join(f"{c} ({f:.1f}x)" for c, f in worse.items()) or "none"
        lines.append(f"Chains far worse inside the model than their offline error predicts "
                     f"({rule}): **{found}**.")
    return lines
