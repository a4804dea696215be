"""The Ray Tune trainable: score one chain config on the recording, reporting per layer group.

The recording goes to the object store once (``tune.with_parameters``) wrapped in a
:class:`SharedRecording`, which pickles its tensors as numpy arrays: Ray stores those
out of band and a worker maps them without copying, so handing the recording to a trial
costs milliseconds instead of a full deserialisation. Layer contexts (logits, dense
outputs...) are cached per worker process (:data:`sah.evaluate.PROCESS_CACHE`) and,
with ``reuse_actors=True``, shared by every trial the worker runs.

A trial that raises is marked failed by Ray (status ERROR, its message kept); it never
reports a finite penalty score.
"""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from sah.evaluate import PROCESS_CACHE, iter_evaluation
from sah.objectives import get_objective
from sah.recording.format import LayerRecording, Recording
from sah.tuning.study import ChainSpec

CHAIN_KEY = "chain"  # the constant trial parameter that names the chain


def _to_numpy(t: torch.Tensor) -> tuple:
    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:  # numpy has no bfloat16: ship the bits
        return ("bfloat16", t.view(torch.int16).numpy())
    return (None, t.numpy())


def _from_numpy(item: tuple) -> torch.Tensor:
    kind, array = item
    with warnings.catch_warnings():  # arrays from the object store are read-only; never written
        warnings.simplefilter("ignore", UserWarning)
        t = torch.from_numpy(array)
    return t.view(torch.bfloat16) if kind == "bfloat16" else t


def _rebuild(layers: List[tuple], positions: tuple, scaling: float,
             metadata: Dict[str, Any]) -> "SharedRecording":
    recording = Recording(
        layers=[LayerRecording(layer, _from_numpy(q), _from_numpy(k), _from_numpy(v))
                for layer, q, k, v in layers],
        query_positions=_from_numpy(positions), scaling=scaling, metadata=metadata)
    return SharedRecording(recording)


class SharedRecording:
    """A :class:`Recording` that travels through Ray's object store without copies."""

    def __init__(self, recording: Recording) -> None:
        self.recording = recording

    def __reduce__(self):
        r = self.recording
        layers = [(lr.layer, _to_numpy(lr.queries), _to_numpy(lr.keys), _to_numpy(lr.values))
                  for lr in r.layers]
        return (_rebuild, (layers, _to_numpy(r.query_positions), float(r.scaling),
                           dict(r.metadata or {})))


@dataclass
class TrialTask:
    """What every trial of a run needs beside its parameters (plain, picklable data)."""

    chains: Dict[str, ChainSpec]
    objective: str
    layers: Optional[List[int]]
    layers_per_report: Optional[int]
    cpus_per_trial: float
    gpus_per_trial: float


def trial_params(config: Dict[str, Any]) -> Dict[str, Any]:
    """The searched parameters of a trial config (everything but the chain name)."""
    return {k: v for k, v in config.items() if k != CHAIN_KEY}


def run_trial(config: Dict[str, Any], recording: Optional[SharedRecording] = None,
              task: Optional[TrialTask] = None) -> None:
    """Ray Tune function trainable: one chain config, reports after each group of layers."""
    from ray import tune

    assert recording is not None and task is not None
    start = time.perf_counter()
    torch.set_num_threads(max(1, int(task.cpus_per_trial)))
    chain = task.chains[config[CHAIN_KEY]]
    params = trial_params(config)
    attention_config = chain.build(params)
    device = "cuda" if task.gpus_per_trial > 0 and torch.cuda.is_available() else None
    objective = get_objective(task.objective)
    rec = recording.recording
    aux_bits: Optional[float] = None
    for partial in iter_evaluation(attention_config, rec, task.layers, task.layers_per_report,
                                   PROCESS_CACHE, device):
        error, density = partial.output_error, partial.density
        if not (np.isfinite(error) and np.isfinite(density)):
            raise FloatingPointError(f"non-finite figures after layer {partial.layers[-1].layer}: "
                                     f"output_error={error}, density={density}")
        metrics: Dict[str, Any] = {
            "output_error": error, "density": density, "score": objective(error, density),
            "layers_done": len(partial.layers), "complete": partial.complete,
            "seconds": time.perf_counter() - start,
        }
        if partial.complete:
            from sah.attention import ResearchAttention
            aux_bits = ResearchAttention.create_from_config(attention_config).aux_bits_per_token(
                rec.head_dim)
            metrics["aux_bits_per_token"] = aux_bits
            metrics["per_layer"] = json.dumps([
                {"layer": lf.layer, "output_error": lf.output_error, "density": lf.density}
                for lf in partial.layers])
        tune.report(metrics)
