"""Support for the tests of studies and runs, in one place: synthetic recordings (in memory
and saved, with text spans), study files, CSV tables, the check that a study is refused
before anything is written, stopping a run in its second experiment, and a masker that fails
on demand. Brute-force references live in helpers.py; fixtures in conftest.py."""

import csv
from dataclasses import dataclass, field
from typing import Any, Dict

import pytest
import torch
import yaml

from sah.mask import Mask
from sah.maskers.base import FixedMasker, MaskerConfig, MaskerRegistry
from sah.recording import make_synthetic_recording, save_recording
from sah.recording.format import LayerRecording, Recording, RecordingError
from sah.infra.checks import ConfigError, check_int


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


# the small synthetic recording most study tests run on; ``shape`` arguments override it
SMALL = dict(num_layers=2, num_heads=2, num_kv_heads=1, head_dim=16, num_keys=64, num_queries=4)


def save_synthetic(path, text=None, start=0, end=256, text_sha256=None, **shape):
    """Save a synthetic recording of shape ``SMALL`` (``shape``: any argument of
    make_synthetic_recording, ``seed`` included) to ``path`` and return the path. With
    ``text``, its metadata say it was cut from tokens [start, end) of that text, whose hash
    is ``text_sha256`` (by default a stand-in made of the text's name)."""
    rec = make_synthetic_recording(**{**SMALL, **shape})
    if text is not None:
        rec.metadata.update({"text_name": text,
                             "text_sha256": text_sha256 or (text * 64)[:64],
                             "token_start": start, "token_end": end})
    save_recording(rec, path)
    return path


def recording_fixture(name="rec.safetensors", **shape):
    """A module-scoped fixture: the synthetic recording ``save_synthetic(**shape)``, saved
    once per module as ``name``; returns its path. conftest.py's ``rec_path`` is the
    ``SMALL`` one; a module that needs another shape assigns its own:
    ``rec_path = recording_fixture(num_keys=512, seed=3)``."""
    @pytest.fixture(scope="module")
    def rec_path(tmp_path_factory):
        return save_synthetic(tmp_path_factory.mktemp("rec") / name, **shape)
    return rec_path


def chain_file(folder):
    """A sink(4) + local(8) chain config file (what `sah resources/patterns --config` read)
    written to folder/chain.yaml; returns its path as a str."""
    from sah import LocalMaskerConfig, ResearchAttentionConfig, SinkMaskerConfig
    cfg = ResearchAttentionConfig([SinkMaskerConfig(sink_size=4), LocalMaskerConfig(window_size=8)])
    return str(cfg.to_file(folder / "chain.yaml"))


def write_study(path, data):
    """Write a study to ``path``: a dict as YAML, a str as it is, bytes as they are (for
    files that are not valid text). Returns the path."""
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


def read_csv(path):
    """The rows of a CSV file as dicts."""
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def assert_refused(tmp_path, data, *fragments, overrides=None):
    """Run the study ``data`` (dict, str or bytes, written to ``tmp_path/study.yaml``; with
    ``overrides``, extra RunOptions as the command-line flags give them) and check it is
    refused before anything is written: one short line that starts with the study file and
    holds every fragment, and no results folder. Returns the message."""
    from sah.tuning.runner import RunOptions, run_study
    study = write_study(tmp_path / "study.yaml", data)
    results = tmp_path / "results"
    with pytest.raises((ConfigError, RecordingError, FileNotFoundError, FileExistsError)) as info:
        run_study(RunOptions(config=str(study), results_dir=str(results), progress=False,
                             **(overrides or {})))
    message = str(info.value)
    assert "\n" not in message and len(message) < 600, message
    assert message.startswith(str(study)), message
    for fragment in fragments:
        assert fragment in message, message
    assert not results.exists()  # nothing written
    return message


def sink_local_and_strided(rec, name, **extra):
    """A small study on ``rec``: random sink + local (6 samples, 3 per Ray trial) and a 2x2
    strided grid; ``extra`` keys override."""
    data = {"name": name, "recording": str(rec), "searcher": "random", "num_samples": 6,
            "seed": 1, "density_targets": [0.3], "configs_per_trial": 3, "chains": [
                {"name": "sink_local", "maskers": [
                    {"type": "SinkMaskerConfig", "sink_size": {"search": "randint", "low": 1, "high": 8}},
                    {"type": "LocalMaskerConfig",
                     "window_size": {"search": "uniform", "low": 0.05, "high": 0.5}}]},
                {"name": "strided", "searcher": "grid", "maskers": [
                    {"type": "StridedPatternConfig", "window_size": {"search": "grid", "values": [4, 8]},
                     "stride": {"search": "grid", "values": [4, 16]}}]}]}
    data.update(extra)
    return data


def error_line(err, command):
    """The one ``sah <command>: error:`` line of a command's stderr (and no traceback)."""
    lines = [ln for ln in err.splitlines() if ln.startswith(f"sah {command}: error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def two_experiments(second_maskers):
    """Study keys for a run of two experiments, one trial at a time, that can be stopped in
    its second: chain ``first`` (2 trials of a sink) then chain ``second`` (16 trials of
    ``second_maskers``)."""
    return {"searcher": "optuna", "max_concurrent_trials": 1, "chains": [
        {"name": "first", "num_samples": 2, "maskers": [
            {"type": "SinkMaskerConfig", "sink_size": {"search": "randint", "low": 1, "high": 8}}]},
        {"name": "second", "num_samples": 16, "maskers": second_maskers}]}


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
    into the run folder only now and then, so they are no sign of a running experiment) and
    that experiment has made its first trial (its folder under ``<run>/ray/second``), while
    the run's own SIGTERM handler and Ray Tune's stop handler are in place (the default
    handler would end pytest). Returns the thread."""
    import os
    import signal
    import threading
    import time

    def stop():
        deadline = time.time() + 300
        while time.time() < deadline:
            if first_experiment_done(run_dir) and any((run_dir / "ray" / "second").glob("trial_*")):
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


