"""The speed step of a run: after tuning (and allocation), each chain's picks named by the
study's ``speed.picks`` (``best``: ``tuned/<chain>.yaml``; ``density_<t>``:
``tuned/<chain>.density_<t>.yaml``; a chain with no row at a target has no such pick) get
their speed beside their error (:mod:`sah.speed`):

- ``block_density_64``, ``block_density_128`` and ``bytes_ratio`` of the config's masks on
  every scored recording and the study's layers (mean over layers, then over recordings,
  as ``output_error``); one recording's layer contexts are built once for every pick;
- ``latency_ratio``: the whole decoding call over dense SDPA on the first scored
  recording's middle layer (its last query and the keys it sees), and
  ``latency_ratio_long`` on a structured synthetic call of ``speed.long_keys`` keys at the
  same model shape; interleaved medians of ``speed.repeats`` rounds, kept codes and bounds.

Picks that are the same trial are measured once. The step writes ``speed.csv``,
``speed.png`` and the speed section of ``summary.md`` together, signals held, once every
pick is measured; a run stopped during the step measures again on ``--resume``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

from sah.infra.checks import ConfigError
from sah.infra.files import atomic_write_bytes, atomic_write_text
from sah.runs.outputs.picks import best_row, target_row
from sah.runs.outputs.speed import plot_speed, speed_csv, speed_markdown, with_speed_section
from sah.study.validate import BEST, pick_name
from sah.tuning.signals import signals_deferred

SPEED_CSV = "speed.csv"


def check_speed_device(study: Any) -> None:
    """``speed.device: cuda`` needs a GPU torch sees; refused before the run folder exists."""
    section = getattr(study, "speed", None)
    if section is None or section.device != "cuda":
        return
    import torch
    if not torch.cuda.is_available():
        raise ConfigError(f"{study.source}: speed.device: got 'cuda' but torch sees no CUDA GPU "
                          f"on this machine; use device: cpu")


def speed_targets(study: Any, rows: List[Dict[str, Any]], run_dir: Path
                  ) -> List[Tuple[str, str, str, Dict[str, Any]]]:
    """``(chain, pick, tuned file, trial row)`` for each pick with a tuned file."""
    out = []
    by_pick = {pick_name(t): t for t in study.density_targets}
    for chain in study.chains:
        for pick in study.speed.picks:
            if pick == BEST:
                row, name = best_row(rows, chain.name), f"tuned/{chain.name}.yaml"
            else:
                row = target_row(rows, chain.name, by_pick[pick])
                name = f"tuned/{chain.name}.{pick}.yaml"
            if row is not None and (run_dir / name).is_file():
                out.append((chain.name, pick, name, row))
    return out


def measure_picks(run_dir: Path, study: Any, rows: List[Dict[str, Any]], sets: Any,
                  say: Callable[[str], None]) -> Tuple[List[Dict[str, Any]], str]:
    """One ``speed.csv`` row per pick, and the machine line."""
    from sah.attention import ResearchAttentionConfig
    from sah.evaluate import ContextCache
    from sah.speed import describe_machine, latency, machine_line, traffic_figures

    section = study.speed
    wanted = speed_targets(study, rows, Path(run_dir))
    configs: Dict[Tuple[str, int], Any] = {}
    for chain, _, name, row in wanted:
        configs.setdefault((chain, int(row["trial"])), ResearchAttentionConfig.from_file(run_dir / name))
    say(f"{len(wanted)} pick(s), {len(configs)} distinct config(s): masks on "
        f"{len(sets.scored)} recording(s), latency at their keys and at {section.long_keys} keys")
    traffic: Dict[Tuple[str, int], List[Dict[str, float]]] = {key: [] for key in configs}
    for scored in sets.scored:  # one recording's contexts at a time, shared by every config
        cache = ContextCache()
        for key, config in configs.items():
            traffic[key].append(traffic_figures(config, scored.recording, study.layers, cache))
    recording = sets.scored[0].recording
    ids = recording.layer_ids
    layers = [ids.index(layer) for layer in (study.layers or ids)]
    index = layers[len(layers) // 2]
    timed: Dict[Tuple[str, int], Tuple[Any, Any]] = {}
    for key, config in configs.items():
        start = time.perf_counter()
        near = latency(config, recording, None, section.repeats, section.device, section.dtype, index)
        far = latency(config, recording, section.long_keys, section.repeats, section.device,
                      section.dtype, index)
        timed[key] = (near, far)
        say(f"{key[0]} trial {key[1]}: {near.ratio:.2f}x dense at "
            f"{int(recording.query_positions[-1]) + 1} keys, {far.ratio:.2f}x at "
            f"{section.long_keys} ({time.perf_counter() - start:.1f} s)")
    machine = machine_line(describe_machine(section.device))
    out = []
    for chain, pick, name, row in wanted:
        key = (chain, int(row["trial"]))
        figures = {k: sum(t[k] for t in traffic[key]) / len(traffic[key]) for k in traffic[key][0]}
        near, far = timed[key]
        out.append({"chain": chain, "pick": pick, "config": name, "trial": key[1],
                    "output_error": row["output_error"], "density": row["density"], **figures,
                    "keys": int(recording.query_positions[-1]) + 1, "latency_ratio": near.ratio,
                    "ms": near.ms, "dense_ms": near.dense_ms, "long_keys": section.long_keys,
                    "latency_ratio_long": far.ratio, "ms_long": far.ms,
                    "dense_ms_long": far.dense_ms, "machine": machine})
    return out, machine


def write_speed(run_dir: Path, study: Any, rows: List[Dict[str, Any]], sets: Any,
                progress: bool = True) -> List[Dict[str, Any]]:
    """Measure the study's picks; write ``speed.csv``, ``speed.png`` and the speed section
    of ``summary.md``. Returns the ``speed.csv`` rows."""
    run_dir = Path(run_dir)
    say: Callable[[str], None] = ((lambda m: print(f"sah: speed: {m}", file=sys.stderr,
                                                   flush=True)) if progress else (lambda m: None))
    from sah.infra.threads import torch_threads
    started = time.perf_counter()
    with torch_threads(study.speed.threads):
        speed_rows, machine = measure_picks(run_dir, study, rows, sets, say)
    say(f"done in {time.perf_counter() - started:.0f} s")
    summary = run_dir / "summary.md"
    text = with_speed_section(summary.read_text() if summary.is_file() else "",
                              speed_markdown(speed_rows, machine, study.speed))
    with signals_deferred():
        atomic_write_bytes(run_dir / "speed.png", plot_speed(study, speed_rows, machine))
        atomic_write_text(summary, text)
        atomic_write_text(run_dir / SPEED_CSV, speed_csv(speed_rows))  # last: marks the step done
    return speed_rows
