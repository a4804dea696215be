"""The Ray Tune trainable: score one chain config on the study's scored recordings,
reporting per layer group.

The scored recordings go to the object store once (``tune.with_parameters``), each wrapped
in a :class:`SharedRecording`, which pickles its tensors as numpy arrays: Ray stores those
out of band and a worker maps them without copying, so handing the recordings to a trial
costs milliseconds instead of a full deserialisation. Layer contexts (logits, dense
outputs...) are cached per worker process (:data:`sah.evaluate.PROCESS_CACHE`, sized to
hold every scored recording) and, with ``reuse_actors=True``, shared by every trial the
worker runs. Fitted (or given) HashAttention weights travel the same way, in the
:class:`TrialTask` (:class:`~sah.runs.artefacts.SharedWeights`), never as a path into the
driver's run folder. Every report carries ``node_id``, the Ray node the trial ran on, and a
trial computes on the device Ray gave it (:func:`sah.tuning.cluster.trial_device`).

Several scored recordings: a configuration's ``output_error`` and ``density`` are the means
over the recordings of each recording's mean over the evaluated layers. The recordings are
scored in lockstep, one group of layers at a time: report ``g`` holds, for every recording,
the mean over the first ``g`` groups of layers, averaged over the recordings. Every trial's
report ``g`` thus covers the same layers of the same recordings, so ASHA compares like with
like; the last report is the full figure.

A trial that raises is marked failed by Ray (status ERROR, its message kept); it never
reports a finite penalty score.
"""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from sah.attention import ResearchAttention
from sah.evaluate import PROCESS_CACHE, iter_evaluation
from sah.objectives import get_objective
from sah.recording.format import LayerRecording, Recording
from sah.runs.artefacts import SharedWeights, with_weights
from sah.tuning.cluster import trial_device
from sah.study.spec import ChainSpec

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
    weights: Dict[str, SharedWeights] = field(default_factory=dict)  # hat_weight_file -> tensors
    per_chain: Dict[str, Tuple[float, float]] = field(default_factory=dict)  # chain -> (cpu, gpu)
    recording_labels: List[str] = field(default_factory=list)  # one per scored recording

    def resources(self, chain: str) -> Tuple[float, float]:
        """``(cpus, gpus)`` of one trial of ``chain`` (its own resources_per_trial, if any)."""
        return self.per_chain.get(chain, (self.cpus_per_trial, self.gpus_per_trial))


def trial_params(config: Dict[str, Any]) -> Dict[str, Any]:
    """The searched parameters of a trial config (everything but the chain name)."""
    return {k: v for k, v in config.items() if k != CHAIN_KEY}


def _node_id() -> str:
    import ray
    return ray.get_runtime_context().get_node_id()


def _mean(values: Sequence[float]) -> float:
    return float(sum(values) / len(values))


def evaluate_params(chain: ChainSpec, params: Dict[str, Any], recordings: Sequence[Recording],
                    task: TrialTask) -> Iterator[Dict[str, Any]]:
    """Score one configuration on every scored recording; yield the metrics after each
    group of layers (scored on all recordings, see the module docstring). Raises on a
    failure (including non-finite figures). ``eval_seconds`` is the time spent inside chain
    evaluation (building the chain, masks, estimator, figures), not in the caller. The last
    metrics hold ``per_recording`` (label -> output_error, density) and ``per_layer``."""
    start = time.perf_counter()
    attention_config = with_weights(chain.build(params), task.weights)
    objective = get_objective(task.objective)
    labels = task.recording_labels or [str(i) for i in range(len(recordings))]
    PROCESS_CACHE.max_recordings = max(PROCESS_CACHE.max_recordings, len(recordings))
    eval_seconds = time.perf_counter() - start
    device = trial_device(task.resources(chain.name)[1])
    streams = [iter_evaluation(attention_config, rec, task.layers, task.layers_per_report,
                               PROCESS_CACHE, None if device == "cpu" else device)
               for rec in recordings]
    while True:
        began = time.perf_counter()
        partials = [next(stream, None) for stream in streams]
        if partials[0] is None:
            return
        for label, partial in zip(labels, partials):
            if not (np.isfinite(partial.output_error) and np.isfinite(partial.density)):
                raise FloatingPointError(
                    f"non-finite figures on {label} after layer {partial.layers[-1].layer}: "
                    f"output_error={partial.output_error}, density={partial.density}")
        error = _mean([p.output_error for p in partials])
        density = _mean([p.density for p in partials])
        complete = all(p.complete for p in partials)
        metrics: Dict[str, Any] = {
            "output_error": error, "density": density, "score": objective(error, density),
            "layers_done": len(partials[0].layers), "complete": complete,
        }
        if complete:
            metrics["aux_bits_per_token"] = ResearchAttention.create_from_config(
                attention_config).aux_bits_per_token(recordings[0].head_dim)
            metrics["per_recording"] = {label: {"output_error": p.output_error,
                                                "density": p.density}
                                        for label, p in zip(labels, partials)}
            metrics["per_layer"] = [{"recording": label, "layer": lf.layer,
                                     "output_error": lf.output_error, "density": lf.density}
                                    for label, p in zip(labels, partials) for lf in p.layers]
        eval_seconds += time.perf_counter() - began
        metrics["seconds"] = time.perf_counter() - start
        metrics["eval_seconds"] = eval_seconds
        yield metrics


def run_trial(config: Dict[str, Any], recordings: Optional[List[SharedRecording]] = None,
              task: Optional[TrialTask] = None) -> None:
    """Ray Tune function trainable: one chain config, reports after each group of layers
    (a config holding a batch of configurations goes to :func:`run_batch`)."""
    from ray import tune

    from sah.tuning.batching import BATCH_KEY

    assert recordings and task is not None
    if BATCH_KEY in config:
        return run_batch(config, recordings, task)
    chain = task.chains[config[CHAIN_KEY]]
    torch.set_num_threads(max(1, int(task.resources(chain.name)[0])))
    node_id = _node_id()
    for metrics in evaluate_params(chain, trial_params(config),
                                   [r.recording for r in recordings], task):
        for key in ("per_layer", "per_recording"):  # JSON text: Ray flattens nested metrics
            if key in metrics:
                metrics[key] = json.dumps(metrics[key])
        tune.report({**metrics, "node_id": node_id})


def _one_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    return f"{type(exc).__name__}: {lines[-1]}" if lines else type(exc).__name__


def run_batch(config: Dict[str, Any], recordings: Optional[List[SharedRecording]] = None,
              task: Optional[TrialTask] = None) -> None:
    """Ray Tune function trainable for a batch (:mod:`sah.tuning.batching`): scores every
    configuration of ``config["batch"]`` in turn and reports once, at the end, a JSON list
    of per-configuration figures (``error_message`` set for one that raised, which gets no
    figures); the batch's best score is the trial's ``score``."""
    from ray import tune

    from sah.tuning.batching import BATCH_KEY

    assert recordings and task is not None
    scored = [r.recording for r in recordings]
    batch = config[BATCH_KEY]
    chain = task.chains[batch["chain"]]
    torch.set_num_threads(max(1, int(task.resources(chain.name)[0])))
    results: List[Dict[str, Any]] = []
    for params in batch["params"]:
        last: Dict[str, Any] = {}
        try:
            for last in evaluate_params(chain, params, scored, task):
                pass
            results.append(last)
        except Exception as exc:  # recorded per configuration; the batch goes on
            results.append({"error_message": _one_line(exc)})
    scores = [r["score"] for r in results if "score" in r]
    tune.report({"complete": True, "batch_index": batch["index"], "batch_size": len(results),
                 "node_id": _node_id(),
                 "failed": len(results) - len(scores),
                 "score": min(scores) if scores else float("nan"),
                 "eval_seconds": sum(r.get("eval_seconds", 0.0) for r in results),
                 "batch_results": json.dumps(results)})
