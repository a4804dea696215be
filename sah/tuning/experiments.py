"""The Ray experiments of a study: ONE for all batched (grid/random) chains and one per
other chain (Optuna, ASHA); their searchers, schedulers and param spaces, and
:func:`run_experiment`, which fits a new experiment or restores and continues one.

Where Ray Tune keeps the experiments (:func:`experiment_root`): ``<run>/ray`` by default; with
``storage_path`` (study key or ``--storage-path``) a folder every node reaches or a URI Ray
Tune supports (``s3://...``), under ``<storage>/<run name>-<run id>`` (the id is drawn when
the run folder is made and kept in ``run.yaml``, so two runs never share experiments and
``--resume`` finds them). The run folder stays on the driver and holds every output."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from sah.tuning.signals import _second_interrupt, install_interrupt_sentinel
from sah.study.spec import ChainSpec, Study
from sah.tuning.search_space import ray_domain
from sah.tuning.trainable import CHAIN_KEY


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
        space[name] = ray_domain(domain, as_grid=chain.searcher == "grid")
    return space


def _trial_dirname(trial: Any) -> str:
    return f"trial_{trial.trial_id}"


Members = List[Tuple[int, ChainSpec]]  # (position in the study, chain)


def is_uri(path: str) -> bool:
    return "://" in str(path)


def storage_location(storage_path: str, run_name: str, run_id: str) -> str:
    """``<storage>/<run name>-<run id>``: a local folder made absolute, a URI kept as is."""
    leaf = f"{run_name}-{run_id}"
    if is_uri(storage_path):
        return storage_path.rstrip("/") + "/" + leaf
    return str(Path(storage_path).expanduser().resolve() / leaf)


def experiment_root(run_dir: Path, stored: Optional[str]) -> str:
    """Where a run's Ray experiments live: ``stored`` (``run.yaml``'s ``ray_storage``) or
    ``<run>/ray``."""
    return stored if stored else str(Path(run_dir) / "ray")


def _join(root: str, name: str) -> str:
    return root.rstrip("/") + "/" + name if is_uri(root) else os.path.join(root, name)


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


def experiment_dirs(study: Study, ray_dir: str) -> List[Tuple[str, str]]:
    """(name, folder) of every Ray experiment of the study under ``ray_dir``."""
    return [(name, _join(str(ray_dir), name)) for name, _ in experiments(study)]


def _saved_trials(exp_dir: str) -> Optional[int]:
    """How many trials the newest saved state of the experiment in ``exp_dir`` lists (None
    when it has none). Read as plain JSON: nothing in it is unpickled here."""
    import json

    import pyarrow.fs as pafs
    fs, base = (pafs.FileSystem.from_uri(exp_dir) if is_uri(exp_dir)
                else (pafs.LocalFileSystem(), exp_dir))
    infos = fs.get_file_info(pafs.FileSelector(base, recursive=False, allow_not_found=True))
    states = sorted(i.path for i in infos if i.type == pafs.FileType.File
                    and i.base_name.startswith("experiment_state-")
                    and i.base_name.endswith(".json"))
    if not states:
        return None
    with fs.open_input_stream(states[-1]) as fh:
        try:
            state = json.loads(fh.readall())
        except ValueError:
            return None
    trials = state.get("trial_data") if isinstance(state, dict) else None
    return len(trials) if isinstance(trials, list) else None


def _forget_unstarted(exp_dir: str) -> None:
    """Remove the folder of an experiment stopped before its first trial was made: Ray Tune
    cannot restore a state without trials (it fails and runs nothing), and nothing in it
    is worth keeping."""
    import pyarrow.fs as pafs
    fs, base = (pafs.FileSystem.from_uri(exp_dir) if is_uri(exp_dir)
                else (pafs.LocalFileSystem(), exp_dir))
    fs.delete_dir(base)


def run_experiment(name: str, members: Members, study: Study, trainable: Any, ray_dir: str,
                   num_groups: int, progress: bool, run_dir: Path):
    """Fit (or restore and continue) one experiment kept under ``ray_dir`` (a local folder
    or a URI, :func:`experiment_root`); returns its ResultGrid and whether it was
    interrupted. Its files are signed as Ray writes them (:mod:`~sah.tuning.state_seal`;
    ``--resume`` checked the signature before anything started)."""
    from ray import tune

    from sah.tuning.progress import TrialProgress
    from sah.tuning.state_seal import SealCallback
    exp_dir = _join(str(ray_dir), name)
    sealer = SealCallback(run_dir, name, exp_dir)
    callbacks = [TrialProgress({c.name: c.expected_trials() for _, c in members},
                               enabled=progress), sealer]
    index, chain = members[0]
    if chain.batched:
        from sah.tuning.batching import batched_param_space
        space = batched_param_space(members, study.seed)
    else:
        space = _param_space(chain)
    restorable = tune.Tuner.can_restore(exp_dir)
    if restorable and _saved_trials(exp_dir) == 0:  # stopped before its first trial
        _forget_unstarted(exp_dir)
        restorable = False
    if restorable:
        tuner = tune.Tuner.restore(exp_dir, trainable=trainable, param_space=space,
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
        scheduler = _scheduler(study, num_groups)
        if scheduler is not None:  # ASHA holds metric and mode; Ray refuses them twice
            metric, mode = None, None
        tuner = tune.Tuner(
            trainable, param_space=space,
            tune_config=tune.TuneConfig(
                search_alg=search_alg, scheduler=scheduler,
                metric=metric, mode=mode, num_samples=num_samples, reuse_actors=True,
                max_concurrent_trials=study.max_concurrent_trials,
                trial_dirname_creator=_trial_dirname),
            run_config=tune.RunConfig(
                name=name, storage_path=str(ray_dir), verbose=0, callbacks=callbacks,
                failure_config=tune.FailureConfig(max_failures=0, fail_fast=False)))
    previous_int = signal.getsignal(signal.SIGINT)
    sentinel_installed = install_interrupt_sentinel()
    try:
        grid = tuner.fit()
    finally:
        callbacks[0].close()
        sealer.seal_now()  # however the experiment stopped: its last state is signed
    interrupted = sentinel_installed and signal.getsignal(signal.SIGINT) is _second_interrupt
    if sentinel_installed:
        signal.signal(signal.SIGINT, previous_int)
    return grid, interrupted
