"""Run a study with Ray Tune: one Tuner (one Ray experiment) for the batched chains and one
per other chain, then the outputs.

Order of work, so that bad input writes nothing: load and validate the study, check the
results folder and a local ``storage_path`` (writable), check the run folder (an existing
folder is only ever continued with ``resume``, which takes the folder's lock at once,
:mod:`~sah.runs.lock`; a new run takes it when it makes the folder), join the cluster
(``--address``) and check that one of its nodes can hold a trial's resources (a local run
checks this machine without starting Ray), find, make and load the scored and fit
recordings and check them (:mod:`~sah.study.recordings`: no fit span overlapping a scored
one, one model shape, the layers; on ``resume`` the content hashes ``run.yaml`` stored),
verify on ``resume`` that Ray's saved state was signed by this installation
(:mod:`~sah.tuning.state_seal`: nothing of a folder from elsewhere is unpickled), load the
weight files the study names and check them against the recordings; only then create the run folder, write
``run.yaml``, fit HashAttention weights if asked, start Ray and run the experiments. Grid and random
chains are batched (:mod:`sah.tuning.batching`) and share one experiment in
``<run>/ray/_batched`` (or under ``storage_path``); an Optuna or ASHA chain's experiment
lives in ``<run>/ray/<chain>``; a finished chain is marked in ``<run>/progress.json`` (with
the wall time of each part of the run, so ``summary.md`` reports the total over interrupted
and resumed parts; a run whose outputs were written is "already complete" to ``resume``,
which then starts nothing). The pieces live beside this module:
:mod:`~sah.runs.folder` (run folder checks, ``run.yaml``, ``progress.json``),
:mod:`~sah.tuning.ray_setup` (starting Ray), :mod:`~sah.tuning.experiments` (the Ray
experiments) and :mod:`~sah.tuning.signals` (stop signals).
Ctrl-C or SIGTERM stops Ray Tune gracefully (its state is saved, finished trials kept);
``resume`` restores each unfinished experiment with ``Tuner.restore`` (finished trials are
kept, unfinished ones run again from their start).
A study with ``speed:`` then measures its picks' latency, block density and bytes per
token (:mod:`~sah.tuning.steps.speed`; a run stopped there measures again on ``resume``).
A study with ``validate:`` then runs its picks inside the model (after Ray has stopped;
:mod:`~sah.tuning.steps.validation`); its texts are checked against the recordings with the
rest, before the run folder is made. A run whose tuning finished but whose validation did
not resumes into validation (no Ray, no trial runs again).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import yaml

from sah.runs.artefacts import RunArtefacts
from sah.tuning.cluster import check_trial_resources, trial_request, tune_resources
from sah.tuning.experiments import (experiment_dirs, experiment_root, experiments, is_uri,
                                    run_experiment, storage_location)
from sah.runs.outputs import collect_rows, read_trials, write_outputs
from sah.infra.files import atomic_write_text
from sah.tuning.ray_setup import (REPO_ROOT, join_cluster, planned_nodes, start_local_ray,
                                  versions)
from sah.runs.folder import (Progress, _comparable, check_results_dir, check_run_folder,
                             check_writable_folder)
from sah.infra.install_key import check_installation_key
from sah.runs.lock import RunLock
from sah.tuning.state_seal import check_sealed
from sah.tuning.signals import at_forced_exit, forward_sigterm, signals_deferred
from sah.study.recordings import check_resume_hashes, load_recording_sets
from sah.study.parse import load_study
from sah.tuning.trainable import SharedRecording, TrialTask, run_trial
from sah.study.validate import check_validate_layers, check_validate_names, check_validate_texts
from sah.infra.checks import ConfigError

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
    storage_path: Optional[str] = None
    resume: bool = False
    results_dir: str = "results"
    progress: bool = True
    allow_pickle: bool = False  # the person's opt-in: the driver may read .pkl weight files
    validation_model: Optional[Any] = None  # a loaded (model, tokenizer) for validate: (Python only)
    extra: Dict[str, Any] = field(default_factory=dict)

    def overrides(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"name": self.name, "searcher": self.searcher,
                               "num_samples": self.num_samples, "seed": self.seed,
                               "storage_path": self.storage_path}
        if self.cpus_per_trial is not None or self.gpus_per_trial is not None:
            out["resources_per_trial"] = {k: v for k, v in (("cpu", self.cpus_per_trial),
                                                            ("gpu", self.gpus_per_trial))
                                          if v is not None}
        out.update(self.extra)
        return out


# ---------------------------------------------------------------------- the run
def run_study(options: RunOptions) -> Path:
    """Validate, run every chain, write the outputs. Returns the run folder. ``.pkl``
    weights load only with ``options.allow_pickle`` (or the process's opt-in,
    :mod:`sah.infra.pickle_opt_in`); the driver reads them and ships the tensors to the trials."""
    from sah.infra.pickle_opt_in import allow_pickle
    locks: List[RunLock] = []
    try:
        with allow_pickle(options.allow_pickle):
            return _run_study(options, locks)
    finally:
        for lock in locks:
            lock.release()


def _lock(run_dir: Path, locks: List[RunLock]) -> None:
    """Hold the run folder's lock (:mod:`sah.runs.lock`) until :func:`run_study` returns."""
    lock = RunLock(run_dir).acquire()
    locks.append(lock)
    if lock.took_over:
        print(f"{lock.path}: took over the lock of process {lock.took_over.get('pid')} "
              f"(started {lock.took_over.get('started')}), which no longer runs",
              file=sys.stderr)


def _run_study(options: RunOptions, locks: List[RunLock]) -> Path:
    started = time.time()
    study = load_study(options.config or DEFAULT_STUDY, options.overrides())
    run_dir = Path(options.results_dir) / study.name
    from sah.tuning.steps.hash_fit import attach_weights
    attach_weights(study, run_dir)
    check_results_dir(Path(options.results_dir))
    if study.storage_path and not is_uri(study.storage_path):
        check_writable_folder(Path(study.storage_path).expanduser(), "--storage-path",
                              "pass a folder you can write to (or a URI such as s3://...)")
    check_run_folder(run_dir, study, options.resume)
    if options.resume:  # before anything else: a second resume of the run stops here
        _lock(run_dir, locks)
    progress = Progress(run_dir, started)
    if options.resume and progress.complete(study):
        print(f"{run_dir}: already complete (every chain finished, outputs written); nothing "
              f"to resume", file=sys.stderr)
        return run_dir.resolve()
    # tuning done, validation not: --resume goes straight to validation (no Ray, no trials)
    validate_only = options.resume and progress.tuning_complete(study)
    per_chain = {c.name: study.trial_resources(c) for c in study.chains}
    started_ray = join_cluster(options.address) if options.address else False
    try:  # nothing is written until the run folder is made; a refusal leaves the cluster
        where = (f"the Ray cluster at {options.address}" if options.address
                 else "this machine's local Ray")
        nodes = planned_nodes()
        for i, chain in enumerate(study.chains):
            try:
                check_trial_resources(trial_request(*per_chain[chain.name]), nodes, where)
            except ConfigError as exc:
                prefix = f"chains[{i}]." if chain.resources is not None else ""
                raise ConfigError(f"{study.source}: {prefix}{exc}") from None
        check_validate_names(study)  # before any embedded recording is made
        from sah.tuning.steps.speed import check_speed_device
        check_speed_device(study)
        sets = load_recording_sets(study)
        check_validate_texts(study, sets)
        check_validate_layers(study, sets)
        check_installation_key()  # signs Ray's state as it is written (state_seal)
        described = sets.describe(fitting=bool(study.fit_hash_attention))
        if options.resume and (run_dir / "run.yaml").is_file():
            meta = yaml.safe_load((run_dir / "run.yaml").read_text())
            check_resume_hashes(run_dir, meta, described)
            if not validate_only:  # Ray's saved state is read back only if we signed it
                check_sealed(run_dir, experiment_dirs(
                    study, experiment_root(run_dir, (meta or {}).get("ray_storage"))))
        recording = sets.scored[0].recording
        artefacts = RunArtefacts.of_run(study, run_dir)
        artefacts.load(fitted=False)  # weight files given in the study: read and checked now
        artefacts.check_shapes(study, recording)
    except BaseException:
        if started_ray:
            import ray
            ray.shutdown()
        raise
    if validate_only:
        if started_ray:
            import ray
            ray.shutdown()
        run_dir = progress.run_dir = run_dir.resolve()
        return _after_tuning(run_dir, study, read_trials(run_dir, study), sets, progress, options)
    num_layers = len(study.layers or recording.layer_ids)
    from sah.evaluate import default_group_size, layer_groups
    group = study.layers_per_report or default_group_size(num_layers)
    num_groups = len(layer_groups(list(range(num_layers)), group))

    run_yaml = yaml.safe_dump({
        "study": _comparable(study), "study_file": str(study.source), **described,
        "versions": versions(), "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        **({"ray_storage": storage_location(study.storage_path, study.name, uuid.uuid4().hex[:8])}
           if study.storage_path else {})}, sort_keys=False)

    # ---- from here on, the run folder is ours
    created = not run_dir.exists()
    try:
        run_dir.mkdir(parents=True, exist_ok=options.resume)
    except FileExistsError:
        raise FileExistsError(f"{run_dir} was just made by another run of the same name; pass "
                              f"--name to start a new run") from None
    if created:
        _lock(run_dir, locks)
    run_dir = progress.run_dir = run_dir.resolve()
    if not (run_dir / "run.yaml").is_file():
        try:
            atomic_write_text(run_dir / "run.yaml", run_yaml)
        except OSError:  # e.g. disk full: leave no folder that blocks the next try
            if created:
                os.rmdir(run_dir)
            raise
    stored = (yaml.safe_load((run_dir / "run.yaml").read_text()) or {}).get("ray_storage")
    log.info("phase load: %.2f s", time.time() - started)
    if study.fit_hash_attention:
        from sah.tuning.steps.hash_fit import prepare_hash_attention
        fit_started = time.time()
        prepare_hash_attention(study, {r.label: r.recording for r in sets.fit_or_scored},
                               run_dir, {r.label: r.recording for r in sets.scored},
                               progress=options.progress)
        log.info("phase hash_fit: %.2f s", time.time() - fit_started)
    artefacts.load(fitted=True)
    artefacts.check_shapes(study, recording)

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # our own progress bars, not Ray's tables
    from ray import tune
    if not options.address:
        started_ray = start_local_ray(sum(
            t.numel() * t.element_size() for r in sets.scored for lr in r.recording.layers
            for t in (lr.queries, lr.keys, lr.values)))
    previous_term = forward_sigterm()
    forget_hook = at_forced_exit(progress.save)  # a second Ctrl-C exits at once: keep the time
    task = TrialTask({c.name: c for c in study.chains}, study.objective, study.layers,
                     group, study.cpus_per_trial, study.gpus_per_trial, artefacts.loaded,
                     {name: (cpu, gpu) for name, (cpu, gpu, _) in per_chain.items()},
                     recording_labels=[r.label for r in sets.scored])
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, recordings=[SharedRecording(r.recording)
                                                    for r in sets.scored], task=task),
        tune_resources(per_chain))
    ray_dir = experiment_root(run_dir, stored)
    grids: Dict[str, Any] = {}
    interrupted = False
    try:
        for name, members in experiments(study):
            exp_started = time.time()
            grid, stopped = run_experiment(name, members, study, trainable, ray_dir,
                                           num_groups, options.progress, run_dir)
            log.info("phase experiment %s: %.2f s", name, time.time() - exp_started)
            grids.update({chain.name: grid for _, chain in members})
            if stopped or len(grid) < sum(c.expected_ray_trials() for _, c in members):
                interrupted = True
                break
            progress.chains.update({chain.name: "complete" for _, chain in members})
            progress.save()
    except KeyboardInterrupt:  # a Ctrl-C / SIGTERM between experiments stops like one inside
        interrupted = True
    finally:
        forget_hook()
        if previous_term is not None:
            signal.signal(signal.SIGTERM, previous_term)
        if started_ray and not interrupted:
            import ray
            ray.shutdown()
    out_started = time.time()
    rows = collect_rows(study, grids, interrupted)
    with signals_deferred():  # a Ctrl-C / SIGTERM now waits until every output is written
        now = time.time()  # summary.md's total and progress.json's parts agree
        write_outputs(run_dir, study, rows, sets, final=not interrupted,
                      wall_seconds=progress.wall_seconds(now), artefacts=artefacts)
        progress.save(outputs_written=not interrupted and study.allocate is None, now=now)
    log.info("phase outputs: %.2f s", time.time() - out_started)
    if study.allocate is not None and not interrupted:  # after tuning, before validation
        from sah.tuning.steps.allocation import write_allocations
        write_allocations(run_dir, study, [(r.label, r.recording) for r in sets.scored],
                          progress=options.progress)
        with signals_deferred():  # only now is the run complete (--resume allocates again)
            progress.save(outputs_written=True)
    if interrupted:
        import ray
        if started_ray:
            ray.shutdown()
        raise RunInterrupted(f"run stopped before every chain finished; finished trials are "
                             f"kept in {run_dir}; continue with --resume")
    return _after_tuning(run_dir, study, rows, sets, progress, options)


def _after_tuning(run_dir: Path, study: Any, rows: Any, sets: Any, progress: Progress,
                  options: RunOptions) -> Path:
    """The steps after tuning: speed (:mod:`sah.tuning.steps.speed`, unless ``speed.csv``
    is there already), then validation."""
    if study.speed is not None and not (run_dir / "speed.csv").is_file():
        from sah.tuning.steps.speed import write_speed
        started = time.time()
        previous_term = forward_sigterm()
        try:
            write_speed(run_dir, study, rows, sets, progress=options.progress)
        except KeyboardInterrupt:
            raise RunInterrupted(f"run stopped while measuring the picks' speed; the tuning "
                                 f"outputs are kept in {run_dir}; continue with --resume") from None
        finally:
            if previous_term is not None:
                signal.signal(signal.SIGTERM, previous_term)
        progress.save(outputs_written=True)
        log.info("phase speed: %.2f s", time.time() - started)
    if study.validate is not None:
        return _validate(run_dir, study, rows, sets, progress, options)
    return run_dir


def _validate(run_dir: Path, study: Any, rows: Any, sets: Any, progress: Progress,
              options: RunOptions) -> Path:
    """The study's picks inside the model (:mod:`sah.tuning.steps.validation`), then
    ``validation.csv``, ``offline_vs_online.png`` and ``summary.md`` with its validation
    section. A stop keeps every validated row; ``--resume`` runs only the missing ones."""
    from sah.runs.outputs import write_validation_outputs
    from sah.tuning.steps.validation import run_validation_steps
    started = time.time()
    previous_term = forward_sigterm()
    forget_hook = at_forced_exit(lambda: progress.save(outputs_written=True))
    try:
        validation_rows, retrieval_rows, timing = run_validation_steps(
            run_dir, study, rows, model=options.validation_model, progress=options.progress)
    except KeyboardInterrupt:
        progress.save(outputs_written=True)
        raise RunInterrupted(f"run stopped during in-model validation; the tuning outputs and "
                             f"the validated picks (validation.csv) are kept in {run_dir}; "
                             f"continue with --resume") from None
    finally:
        forget_hook()
        if previous_term is not None:
            signal.signal(signal.SIGTERM, previous_term)
    with signals_deferred():
        now = time.time()
        write_validation_outputs(run_dir, study, rows, validation_rows, sets,
                                 progress.wall_seconds(now), timing, retrieval_rows)
        progress.save(outputs_written=True, now=now, validated=True)
    log.info("phase validation: %.2f s", time.time() - started)
    return run_dir
