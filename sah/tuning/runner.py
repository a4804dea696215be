"""Run a study with Ray Tune: one Tuner (one Ray experiment) for the batched chains and one
per other chain, then the outputs.

Order of work, so that bad input writes nothing: load and validate the study, check the
run folder (an existing folder is only ever continued with ``resume``), find and load the
recording, check the layer subset; only then create the run folder, write ``run.yaml``,
fit HashAttention weights if asked, start Ray and run the experiments. Grid and random
chains are batched (:mod:`sah.tuning.batching`) and share one experiment in
``<run>/ray/_batched``; an Optuna or ASHA chain's experiment lives in ``<run>/ray/<chain>``;
a finished chain is marked in ``<run>/progress.json``.
Ctrl-C or SIGTERM stops Ray Tune gracefully (its state is saved, finished trials kept);
``resume`` restores each unfinished experiment with ``Tuner.restore`` (finished trials are
kept, unfinished ones run again from their start).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import yaml

from sah.recording.format import Recording, RecordingError
from sah.tuning.outputs import collect_rows, write_outputs
from sah.tuning.outputs.files import atomic_write_text
from sah.tuning.study import ChainSpec, Study, load_study
from sah.tuning.trainable import CHAIN_KEY, SharedRecording, TrialTask, run_trial
from sah.validation import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_STUDY = REPO_ROOT / "configs" / "default.yaml"
log = logging.getLogger("sah.tuning")


class RunInterrupted(RuntimeError):
    """The run was stopped (Ctrl-C / SIGTERM) before every chain finished; resume it."""


@dataclass
class RunOptions:
    config: Optional[str] = None
    name: Optional[str] = None
    searcher: Optional[str] = None
    num_samples: Optional[int] = None
    seed: Optional[int] = None
    cpus_per_trial: Optional[float] = None
    gpus_per_trial: Optional[float] = None
    address: Optional[str] = None
    resume: bool = False
    results_dir: str = "results"
    progress: bool = True
    extra: Dict[str, Any] = field(default_factory=dict)

    def overrides(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"name": self.name, "searcher": self.searcher,
                               "num_samples": self.num_samples, "seed": self.seed}
        if self.cpus_per_trial is not None or self.gpus_per_trial is not None:
            out["resources_per_trial"] = {k: v for k, v in (("cpu", self.cpus_per_trial),
                                                            ("gpu", self.gpus_per_trial))
                                          if v is not None}
        out.update(self.extra)
        return out


# ---------------------------------------------------------------------- checks
def resolve_recording(study: Study) -> Path:
    """The recording file of the study (the default one is made if missing)."""
    if study.recording == "default":
        from sah.recording.default import ensure_default_recording
        return Path(ensure_default_recording())
    path = Path(study.recording).expanduser()
    if not path.is_file():
        raise RecordingError(f"{study.source}: recording: {path} does not exist; record one with "
                             f"'sah record' or use 'recording: default'")
    return path


def load_study_recording(path: Path) -> Recording:
    from sah.recording.format import load_recording
    return load_recording(path)


def check_run_folder(run_dir: Path, study: Study, resume: bool) -> None:
    """An existing run folder is never overwritten; ``resume`` continues the same study."""
    if not run_dir.exists():
        if resume:
            raise FileNotFoundError(f"{run_dir}: no run to resume; drop --resume to start it")
        return
    run_yaml = run_dir / "run.yaml"
    if not resume:
        raise FileExistsError(f"{run_dir} already holds a run; pass --resume to continue it or "
                              f"--name to start a new run")
    if not run_yaml.is_file():
        raise FileExistsError(f"{run_dir} exists but holds no run.yaml (not a sah run); pick "
                              f"another --name or --results-dir")
    stored = yaml.safe_load(run_yaml.read_text()).get("study")
    if stored != _comparable(study):
        raise FileExistsError(f"{run_dir} holds a different study ({stored.get('name') if stored else '?'}); "
                              f"--resume must use the same study and flags, or pick another --name")


def _comparable(study: Study) -> Dict[str, Any]:
    return json.loads(json.dumps(study.to_dict()))


def versions() -> Dict[str, str]:
    import platform

    import ray
    import torch

    import sah
    out = {"sah": str(sah.__version__), "ray": str(ray.__version__),
           "torch": str(torch.__version__), "python": platform.python_version()}
    try:
        import optuna
        out["optuna"] = str(optuna.__version__)
    except ImportError:  # pragma: no cover
        pass
    return out


# ---------------------------------------------------------------------- ray
def init_ray(address: Optional[str], recording_bytes: int) -> bool:
    """Start (or join) Ray unless it already runs. Returns True when we started it."""
    import ray
    if ray.is_initialized():
        return False
    common = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    if address:
        ray.init(address=address, **common)
        return True
    store = int(min(max(1 << 30, 3 * recording_bytes), 4 << 30))
    pythonpath = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)
    ray.init(num_cpus=os.cpu_count(), object_store_memory=store,
             runtime_env={"env_vars": {"PYTHONPATH": pythonpath}}, **common)
    return True


def _forward_sigterm() -> Any:
    """Make SIGTERM act like Ctrl-C so Ray Tune stops gracefully and saves its state."""
    def handler(signum: int, frame: Any) -> None:
        current = signal.getsignal(signal.SIGINT)
        if callable(current):
            current(signal.SIGINT, frame)
        else:
            raise KeyboardInterrupt
    try:
        return signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        return None


def _searcher(chain: ChainSpec, study: Study, index: int):
    from ray.tune.search.basic_variant import BasicVariantGenerator
    seed = study.seed + index
    if chain.searcher != "optuna":
        return BasicVariantGenerator(random_state=seed), "score", "min"
    import optuna
    from ray.tune.search.optuna import OptunaSearch
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if study.multi_objective:
        sampler = optuna.samplers.TPESampler(seed=seed)
        return OptunaSearch(metric=["output_error", "density"], mode=["min", "min"],
                            sampler=sampler), None, None
    sampler = optuna.samplers.TPESampler(seed=seed)
    return OptunaSearch(metric="score", mode="min", sampler=sampler), "score", "min"


def _scheduler(study: Study, num_groups: int):
    if not study.scheduler:
        return None
    from ray.tune.schedulers import ASHAScheduler
    return ASHAScheduler(metric="score", mode="min", time_attr="training_iteration",
                         max_t=max(1, num_groups), grace_period=study.scheduler["grace_period"],
                         reduction_factor=study.scheduler["reduction_factor"])


def _param_space(chain: ChainSpec) -> Dict[str, Any]:
    space: Dict[str, Any] = {CHAIN_KEY: chain.name}
    for name, domain in chain.domains.items():
        space[name] = domain.to_ray(as_grid=chain.searcher == "grid")
    return space


def _trial_dirname(trial: Any) -> str:
    return f"trial_{trial.trial_id}"


Members = List[Tuple[int, ChainSpec]]  # (position in the study, chain)


def experiments(study: Study) -> List[Tuple[str, Members]]:
    """The Ray experiments of a study, in study order: ONE for all batched chains (at the
    place of the first), and one per other chain (Optuna, ASHA, batch size 1)."""
    from sah.tuning.batching import BATCHED_EXPERIMENT
    out: List[Tuple[str, Members]] = []
    batched: Members = []
    for i, chain in enumerate(study.chains):
        if not chain.batched:
            out.append((chain.name, [(i, chain)]))
            continue
        if not batched:
            out.append((BATCHED_EXPERIMENT, batched))
        batched.append((i, chain))
    return out


def run_experiment(name: str, members: Members, study: Study, trainable: Any, ray_dir: Path,
                   num_groups: int, progress: bool):
    """Fit (or restore and continue) one experiment; returns its ResultGrid and whether
    it was interrupted."""
    from ray import tune

    from sah.tuning.progress import TrialProgress
    exp_dir = ray_dir / name
    callbacks = [TrialProgress({c.name: c.expected_trials() for _, c in members},
                               enabled=progress)]
    index, chain = members[0]
    if chain.batched:
        from sah.tuning.batching import batched_param_space
        space = batched_param_space(members, study.seed)
    else:
        space = _param_space(chain)
    if exp_dir.exists() and tune.Tuner.can_restore(str(exp_dir)):
        tuner = tune.Tuner.restore(str(exp_dir), trainable=trainable, param_space=space,
                                   resume_unfinished=True,
                                   resume_errored=False, restart_errored=False)
        local = getattr(tuner, "_local_tuner", None)  # restored runs keep their old callbacks
        if local is not None:
            local.get_run_config().callbacks = callbacks
    else:
        search_alg, metric, mode = _searcher(chain, study, index)
        num_samples = chain.num_samples
        if chain.batched:  # the batches are a grid of their own; nothing to optimise
            metric, mode, num_samples = None, None, 1
        tuner = tune.Tuner(
            trainable, param_space=space,
            tune_config=tune.TuneConfig(
                search_alg=search_alg, scheduler=_scheduler(study, num_groups),
                metric=metric, mode=mode, num_samples=num_samples, reuse_actors=True,
                max_concurrent_trials=study.max_concurrent_trials,
                trial_dirname_creator=_trial_dirname),
            run_config=tune.RunConfig(
                name=name, storage_path=str(ray_dir), verbose=0, callbacks=callbacks,
                failure_config=tune.FailureConfig(max_failures=0, fail_fast=False)))
    previous_int = signal.getsignal(signal.SIGINT)
    sentinel_installed = _install_interrupt_sentinel()
    try:
        grid = tuner.fit()
    finally:
        callbacks[0].close()
    interrupted = sentinel_installed and signal.getsignal(signal.SIGINT) is _second_interrupt
    if sentinel_installed:
        signal.signal(signal.SIGINT, previous_int)
    return grid, interrupted


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM while the block runs, then deliver them: the outputs of a
    run are never left half-written by a stop signal."""
    received: List[int] = []
    previous: Dict[int, Any] = {}
    try:
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, lambda n, f: received.append(n))
    except ValueError:  # not the main thread: signals are not ours to hold
        previous.clear()
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for signum in received[:1]:
            signal.raise_signal(signum)


def _second_interrupt(signum: int, frame: Any) -> None:
    """SIGINT handler installed around ``Tuner.fit``. Ray Tune replaces it with its own
    graceful-stop handler and puts it back when a stop signal arrives, so finding it in
    place after ``fit`` means the run was interrupted; a second Ctrl-C lands here."""
    raise KeyboardInterrupt


def _install_interrupt_sentinel() -> bool:
    try:
        signal.signal(signal.SIGINT, _second_interrupt)
        return True
    except ValueError:  # not the main thread: Ray Tune does not catch signals either
        return False


def _read_progress(run_dir: Path) -> Dict[str, str]:
    path = run_dir / "progress.json"
    return json.loads(path.read_text()) if path.is_file() else {}


# ---------------------------------------------------------------------- the run
def run_study(options: RunOptions) -> Path:
    """Validate, run every chain, write the outputs. Returns the run folder."""
    started = time.time()
    study = load_study(options.config or DEFAULT_STUDY, options.overrides())
    run_dir = Path(options.results_dir) / study.name
    from sah.tuning.hash_fit import attach_weights
    attach_weights(study, run_dir)
    check_run_folder(run_dir, study, options.resume)
    recording_path = resolve_recording(study)
    recording = load_study_recording(recording_path)
    if study.layers:
        missing = [x for x in study.layers if x not in recording.layer_ids]
        if missing:
            raise ConfigError(f"{study.source}: layers: layer {missing[0]} is not in the recording "
                              f"{recording_path} (recorded layers: {recording.layer_ids})")
    num_layers = len(study.layers or recording.layer_ids)
    from sah.evaluate import default_group_size, layer_groups
    group = study.layers_per_report or default_group_size(num_layers)
    num_groups = len(layer_groups(list(range(num_layers)), group))
    from sah.evaluate import recording_key
    rec_hash = recording_key(recording)

    run_yaml = yaml.safe_dump({
        "study": _comparable(study), "study_file": str(study.source),
        "recording": {"path": str(Path(recording_path).resolve()), "hash": rec_hash,
                      "layers": recording.layer_ids, "num_keys": recording.num_keys,
                      "num_queries": recording.num_queries,
                      "model": (recording.metadata or {}).get("model_id")},
        "versions": versions(), "created": time.strftime("%Y-%m-%dT%H:%M:%S")}, sort_keys=False)

    # ---- from here on, the run folder is ours
    run_dir.mkdir(parents=True, exist_ok=options.resume)
    run_dir = run_dir.resolve()
    if not (run_dir / "run.yaml").is_file():
        atomic_write_text(run_dir / "run.yaml", run_yaml)
    log.info("phase load: %.2f s", time.time() - started)
    if study.fit_hash_attention:
        from sah.tuning.hash_fit import prepare_hash_attention
        fit_started = time.time()
        prepare_hash_attention(study, recording, run_dir)
        log.info("phase hash_fit: %.2f s", time.time() - fit_started)

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # our own progress bars, not Ray's tables
    from ray import tune
    started_ray = init_ray(options.address, sum(
        t.numel() * t.element_size() for lr in recording.layers
        for t in (lr.queries, lr.keys, lr.values)))
    previous_term = _forward_sigterm()
    task = TrialTask({c.name: c for c in study.chains}, study.objective, study.layers,
                     group, study.cpus_per_trial, study.gpus_per_trial)
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, recording=SharedRecording(recording), task=task),
        {"cpu": study.cpus_per_trial, "gpu": study.gpus_per_trial})
    ray_dir = run_dir / "ray"
    grids: Dict[str, Any] = {}
    interrupted = False
    try:
        done = _read_progress(run_dir)
        for name, members in experiments(study):
            exp_started = time.time()
            grid, stopped = run_experiment(name, members, study, trainable, ray_dir,
                                           num_groups, options.progress)
            log.info("phase experiment %s: %.2f s", name, time.time() - exp_started)
            grids.update({chain.name: grid for _, chain in members})
            if stopped or len(grid) < sum(c.expected_ray_trials() for _, c in members):
                interrupted = True
                break
            done.update({chain.name: "complete" for _, chain in members})
            atomic_write_text(run_dir / "progress.json", json.dumps(done, indent=2))
    finally:
        if previous_term is not None:
            signal.signal(signal.SIGTERM, previous_term)
        if started_ray and not interrupted:
            import ray
            ray.shutdown()
    out_started = time.time()
    rows = collect_rows(study, grids, interrupted)
    with _signals_deferred():  # a Ctrl-C / SIGTERM now waits until every output is written
        write_outputs(run_dir, study, rows, recording, final=not interrupted,
                      wall_seconds=time.time() - started)
    log.info("phase outputs: %.2f s", time.time() - out_started)
    if interrupted:
        import ray
        if started_ray:
            ray.shutdown()
        raise RunInterrupted(f"run stopped before every chain finished; finished trials are "
                             f"kept in {run_dir}; continue with --resume")
    return run_dir
