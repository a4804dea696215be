"""Support for the tuning tests: small recordings, a masker that fails on demand, and
brute-force references (plain loops)."""

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Sequence, Tuple

import torch

from sah.mask import Mask
from sah.maskers.base import FixedMasker, MaskerConfig, MaskerRegistry
from sah.recording.format import LayerRecording, Recording
from sah.infra.checks import check_int


@dataclass
class FailingMaskerConfig(MaskerConfig):
    """Adds nothing; raises at run time when ``fail`` is 1 (valid config either way)."""

    fail: int = 0
    search_space: Dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        check_int(type(self).__name__, "fail", self.fail, low=0, high=1)


@MaskerRegistry.register(FailingMaskerConfig)
class FailingMasker(FixedMasker):
    def add_mask(self, keys, queries, values, attention_mask, scaling, dropout,
                 sparse_meta_data, previous_mask: Mask, **kwargs: Any) -> Mask:
        if self.config.fail:
            raise RuntimeError("deliberate failure for the test (fail=1)")
        return previous_mask


def random_recording(num_layers=3, h=4, hk=2, q=6, n=64, d=16, seed=0) -> Recording:
    g = torch.Generator().manual_seed(seed)
    layers = [LayerRecording(10 + i, torch.randn(1, h, q, d, generator=g),
                             torch.randn(1, hk, n, d, generator=g) * (1 + i),
                             torch.randn(1, hk, n, d, generator=g)) for i in range(num_layers)]
    return Recording(layers, torch.arange(n - q, n), d ** -0.5, {})


def sink_local_error_ref(rec: Recording, index: int, sink: int, window: int) -> Tuple[float, float]:
    """(output_error, density) of sink+local on one layer, by plain loops over rows."""
    lr = rec.layers[index]
    b, h, q, d = lr.queries.shape
    hk, n = lr.keys.shape[1], lr.keys.shape[2]
    num = den = 0.0
    active = allowed = 0
    for hi in range(h):
        k, v = lr.keys[0, hi // (h // hk)].double(), lr.values[0, hi // (h // hk)].double()
        for qi in range(q):
            t = int(rec.query_positions[qi])
            logits = [rec.scaling * float(lr.queries[0, hi, qi].double() @ k[j]) for j in range(t + 1)]
            m = max(logits)
            w = [math.exp(x - m) for x in logits]
            dense = sum(w[j] * v[j] for j in range(t + 1)) / sum(w)
            keep = [j for j in range(t + 1) if j < sink or j > t - window]
            sparse = sum(w[j] * v[j] for j in keep) / sum(w[j] for j in keep)
            num += float(((dense - sparse) ** 2).sum())
            den += float((dense ** 2).sum())
            active += len(keep)
            allowed += t + 1
    return math.sqrt(num / den), active / allowed


def brute_force_front(points: Sequence[Tuple[float, float]]) -> List[int]:
    """Indices of (density, error) points no other point dominates (exact duplicates do not
    dominate each other: all are kept), sorted by (density, error, index)."""
    front = []
    for i, (d, e) in enumerate(points):
        dominated = any((d2 <= d and e2 <= e and (d2 < d or e2 < e)) for d2, e2 in points)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: (points[i], i))


def first_experiment_done(run_dir) -> bool:
    """progress.json marks the run's experiment ``first`` complete (the second has begun)."""
    import json
    try:
        return json.loads((run_dir / "progress.json").read_text()).get("first") == "complete"
    except (OSError, ValueError):
        return False


def stop_in_second_experiment(run_dir):
    """Start a thread that sends this process a real SIGTERM once the run in ``run_dir`` is in
    its second experiment (``first`` complete in progress.json: Ray Tune copies trial results
    into the run folder only now and then, so they are no sign of a running experiment)
    while the run's own SIGTERM handler and Ray Tune's stop handler are in place (the
    default handler would end pytest). Returns the thread."""
    import os
    import signal
    import threading
    import time

    def stop():
        deadline = time.time() + 300
        while time.time() < deadline:
            if first_experiment_done(run_dir):
                handler = signal.getsignal(signal.SIGTERM)
                tune_stop = signal.getsignal(signal.SIGINT)  # Ray Tune's, inside an experiment
                if ("forward_sigterm" in getattr(handler, "__qualname__", "")
                        and getattr(tune_stop, "__module__", "").startswith("ray.")):
                    os.kill(os.getpid(), signal.SIGTERM)
                    return
            time.sleep(0.02)

    stopper = threading.Thread(target=stop, daemon=True)
    stopper.start()
    return stopper


def assert_refused(tmp_path, data, *fragments):
    """Run the study ``data`` (written to ``tmp_path/study.yaml``) and check it is refused
    before anything is written: one line, starting with the study file, holding every
    fragment. Returns the message."""
    import pytest
    import yaml

    from sah.tuning.runner import RunOptions, run_study
    from sah.infra.checks import ConfigError
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump(data, sort_keys=False))
    results = tmp_path / "results"
    with pytest.raises((ConfigError, FileExistsError, ValueError)) as info:
        run_study(RunOptions(config=str(study), results_dir=str(results), progress=False))
    message = str(info.value)
    assert "\n" not in message and message.startswith(str(study)), message
    for fragment in fragments:
        assert fragment in message, message
    assert not results.exists()  # nothing written
    return message
