"""Each pick's speed beside its error: ``speed.csv``, ``speed.png`` and the speed section
of ``summary.md`` (studies with ``speed:``; measured by :mod:`sah.tuning.steps.speed`).

``speed.csv``: one row per (chain, pick) with the tuned config file, its trial, the
offline ``output_error`` and ``density`` (as in ``trials.csv``), the masks'
``block_density_64``, ``block_density_128`` and ``bytes_ratio`` (means over the scored
recordings of each one's mean over layers), and the measured latency: ``latency_ratio``
(chain ms over dense SDPA ms) with ``ms`` and ``dense_ms`` at ``keys`` (the recording's
keys) and ``latency_ratio_long`` with ``ms_long`` and ``dense_ms_long`` at ``long_keys``,
and the ``machine`` they were measured on. Picks that are the same trial are measured once.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

COLUMNS = ("chain", "pick", "config", "trial", "output_error", "density", "block_density_64",
           "block_density_128", "bytes_ratio", "keys", "latency_ratio", "ms", "dense_ms",
           "long_keys", "latency_ratio_long", "ms_long", "dense_ms_long", "machine")
_INTS = ("trial", "keys", "long_keys")
_TEXTS = ("chain", "pick", "config", "machine")
SECTION = "## Speed"


def speed_csv(rows: Sequence[Dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(COLUMNS), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in COLUMNS})
    return out.getvalue()


def read_speed_csv(path: Path) -> List[Dict[str, Any]]:
    """The rows of ``speed.csv`` typed again (empty when the file is missing)."""
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


def _fmt(x: Optional[float], digits: int = 3) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}g}"


def speed_markdown(rows: Sequence[Dict[str, Any]], machine: str, section: Any) -> List[str]:
    """The ``## Speed`` section of ``summary.md``."""
    keys = sorted({r["keys"] for r in rows if r.get("keys") is not None})
    at = ", ".join(str(k) for k in keys) or "-"
    lines = ["", SECTION, "",
             f"Measured on {machine}; {section.dtype}, {section.device}, median of "
             f"{section.repeats} interleaved rounds (chain, dense SDPA). Latency ratio: the "
             f"whole `custom_attention` decoding call (1 query, the recording's model shape, "
             f"codes and page bounds kept between calls as a decoder keeps them) over dense "
             f"SDPA, at the recording's keys ({at}: its last query) and at "
             f"{section.long_keys} keys (a structured synthetic call). Block density: share of "
             f"the allowed key blocks of 64 / 128 keys a decoding step touches; bytes ratio: "
             f"keys, values and auxiliary data (codes, page bounds) read per decoded token over "
             f"dense attention's keys and values (16-bit KV cache). A ratio holds for this "
             f"machine only.", "",
             f"| chain | pick | output_error | density | block density 64 | block density 128 | "
             f"bytes ratio | latency ratio ({at} keys) | latency ratio ({section.long_keys} keys) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['chain']} | {r['pick']} | {_fmt(r['output_error'], 4)} | "
                     f"{_fmt(r['density'])} | {_fmt(r['block_density_64'])} | "
                     f"{_fmt(r['block_density_128'])} | {_fmt(r['bytes_ratio'])} | "
                     f"{_fmt(r['latency_ratio'])}x ({_fmt(r['ms'])} ms) | "
                     f"{_fmt(r['latency_ratio_long'])}x ({_fmt(r['ms_long'])} ms) |")
    if not rows:
        lines.append("| (no pick had a tuned config) | | | | | | | | |")
    return lines


def with_speed_section(summary: str, section_lines: List[str]) -> str:
    """``summary`` with its ``## Speed`` section replaced by ``section_lines`` (appended
    when it has none; any sections after it are kept after it)."""
    lines = summary.rstrip("\n").split("\n") if summary.strip() else []
    start = next((i for i, line in enumerate(lines) if line.strip() == SECTION), None)
    if start is None:
        return "\n".join(lines + section_lines) + "\n"
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    head = lines[:start]
    while head and head[-1] == "":
        head.pop()
    tail = lines[end:]
    return "\n".join(head + section_lines + ([""] + tail if tail else [])) + "\n"


def plot_speed(study: Any, rows: Sequence[Dict[str, Any]], machine: str) -> bytes:
    """Output error against the measured latency ratio, one colour per chain (its ``best``
    pick a star, its ``density_<t>`` picks dots), at the recording's keys (left) and at the
    long length (right)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 5), dpi=80, sharey=True)
    chains = [c.name for c in study.chains]
    colours = plt.get_cmap("tab20" if len(chains) > 10 else "tab10")
    for ax, column, title in ((axes[0], "latency_ratio", "at the recording's keys"),
                              (axes[1], "latency_ratio_long",
                               f"at {study.speed.long_keys} keys")):
        for i, chain in enumerate(chains):
            mine = [r for r in rows if r["chain"] == chain and r.get(column) is not None
                    and r.get("output_error") is not None and r["output_error"] > 0]
            if not mine:
                continue
            colour = colours(i % colours.N)
            for best in (True, False):  # each chain's best pick a star, its density picks dots
                part = [r for r in mine if (r["pick"] == "best") == best]
                if part:
                    ax.scatter([r[column] for r in part], [r["output_error"] for r in part],
                               s=70 if best else 26, marker="*" if best else "o", color=colour,
                               label=chain if best or not any(r["pick"] == "best" for r in mine)
                               else None, zorder=3)
        ax.axvline(1.0, color="grey", linestyle=":", linewidth=1)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("latency ratio (chain / dense SDPA, measured; < 1 is faster)")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("output error (relative, mean over layers)")
    handles, labels = axes[0].get_legend_handles_labels()
    if not handles:
        handles, labels = axes[1].get_legend_handles_labels()
    if handles:
        axes[1].legend(handles, labels, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.suptitle(f"{study.name}: error vs measured speed ({machine})", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
