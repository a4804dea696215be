"""A YAML study: what to tune, on which recording, how. Validated before any trial starts.

```yaml
name: my_study                 # run name (default: the file's stem)
recordings: [docs, code]       # scored recordings: embedded names (made on first use) or files
fit_recordings: [prose]        # learned maskers (HashAttention) are fitted on these
objective: sparsity_10         # 'default' or 'sparsity_T' (T in percent)
density_targets: [0.05, 0.10]  # best config exported at each density
searcher: optuna               # grid | random | optuna (TPE)
multi_objective: false         # optuna only: search over (output_error, density)
num_samples: 20                # trials per chain (random, optuna)
seed: 0
scheduler: {type: asha, grace_period: 1, reduction_factor: 3}   # optional
resources_per_trial: {cpu: 1, gpu: 0}  # also custom_resources: {name: amount} (Ray resources)
storage_path: null             # Ray Tune's experiment state: a folder every node reaches, or a URI
max_concurrent_trials: null    # default: as many as the CPUs allow
layers: null                   # optional subset of the recorded layer ids
layers_per_report: null        # layers per report (default: about 4 reports per trial)
configs_per_trial: 8           # configurations one Ray trial scores (grid/random; see below)
fit_hash_attention: null       # {bits: 32, ...}: fit HashAttention weights once per run
                               # (on fit_recordings; :mod:`sah.study.fit_options`)
max_configurations: 100000     # refuse studies that expand to more configurations
allocate: null                 # {density_targets: [0.1], chains: [...], per_head: true}:
                               # after tuning (:mod:`sah.study.allocate`)
validate: {texts: [code@16384], tokens: 2048, positions: 128, picks: [density_0.1]}
                               # optional: run the picks inside the model after tuning
                               # (:mod:`sah.study.validate`)
speed: {long_keys: 32768, repeats: 3}  # optional: each pick's latency, block density and
                               # bytes per token beside its error (:mod:`sah.study.speed`)
chains:
  - name: sink_local_oracle_top_k
    searcher: random           # optional per-chain override (also num_samples,
                               # resources_per_trial: its keys over the study's; the
                               # command line's --num-samples wins over both num_samples)
    maskers:
      - {type: SinkMaskerConfig, sink_size: 128}
      - type: OracleTopKConfig
        heavy_size: {search: loguniform, low: 0.005, high: 0.2}
```

``recordings``: every configuration is scored on each; its ``output_error`` and ``density``
are the means over these recordings of each recording's mean over layers. ``recording: X``
is the one-element ``recordings: [X]`` (give one or the other). ``fit_recordings``: what
``fit_hash_attention`` fits on (default: the scored recordings, which makes HashAttention's
figures optimistic; the run says so). :mod:`sah.study.recordings` loads both sets and
refuses a fit recording whose text span overlaps a scored one's.

``configs_per_trial``: configurations one Ray trial of a grid or random chain scores
(:mod:`sah.tuning.batching`); 1 for Optuna chains (the searcher learns from each result)
and with a scheduler (ASHA stops single trials on their intermediate reports).

Every error is one :class:`ConfigError` line naming the file and the YAML path,
e.g. ``configs/x.yaml: chains[1].maskers[2].heavy_size.high: ...``. The file is read with
:mod:`sah.infra.safe_yaml` (UTF-8; duplicate keys, alias bombs and deep nesting refused); the
study-wide checks are in :mod:`sah.study.checks`: names are at most 100 characters
and chain names may not collide as output files (case-insensitively, or by adding ``.hub``
/ ``.density_<t>`` / ``.allocated...`` to another chain's name); a study expanding to more
than ``max_configurations`` configurations is refused before anything is built.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

from sah.attention import ResearchAttentionConfig
from sah.infra.checks import ConfigError, short_repr
from sah.infra.safe_yaml import MAX_STUDY_NODES, load_yaml_file
from sah.maskers.base import MaskerRegistry
from sah.objectives import get_objective
from sah.study.allocate import parse_allocate
from sah.study.checks import check_chain_names, check_name, check_total
from sah.study.fit_options import parse_fit_options
from sah.study.recordings import parse_recording_lists
from sah.study.space import Domain
from sah.study.spec import (DEFAULT_CONFIGS_PER_TRIAL, DEFAULT_MAX_CONFIGURATIONS, ChainSpec,
                            MaskerSpec, Study)
from sah.study.trial_resources import parse_trial_resources
from sah.study.validate import parse_validate_section
from sah.study.speed import parse_speed_section

SEARCHERS = ("grid", "random", "optuna")
TOP_KEYS = ("name", "recording", "recordings", "fit_recordings", "objective", "density_targets",
            "searcher", "multi_objective", "num_samples", "seed", "scheduler", "resources_per_trial", "max_concurrent_trials",
            "layers", "layers_per_report", "fit_hash_attention", "configs_per_trial",
            "storage_path", "max_configurations", "validate", "chains", "allocate", "speed")


def _check(cond: bool, path: str, message: str) -> None:
    if not cond:
        raise ConfigError(f"{path}: {message}")


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


# ---------------------------------------------------------------------- parsing
def load_study(path: Union[str, Path], overrides: Optional[Dict[str, Any]] = None) -> Study:
    """Read and validate a study file; ``overrides`` (CLI flags) replace top-level keys."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such study file; pass --config with a YAML study "
                          f"(see configs/default.yaml)")
    data = load_yaml_file(path, max_nodes=MAX_STUDY_NODES)
    return parse_study(data, str(path), overrides, default_name=path.stem)


def parse_study(data: Any, source: str = "study", overrides: Optional[Dict[str, Any]] = None,
                default_name: str = "study") -> Study:
    try:
        return _parse(data, overrides or {}, default_name, source)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def _parse(data: Any, overrides: Dict[str, Any], default_name: str, source: str) -> Study:
    _check(isinstance(data, dict), "study", f"expected a mapping of study keys, got "
                                           f"{type(data).__name__}")
    data = dict(data)
    for key, value in overrides.items():
        if value is None:
            continue
        if key == "resources_per_trial" and isinstance(data.get(key), dict):
            value = {**data[key], **value}  # --cpus-per-trial keeps the file's gpu and custom ones
        data[key] = value
    unknown = sorted(set(data) - set(TOP_KEYS))
    _check(not unknown, unknown[0] if unknown else "", f"unknown study key; known keys: "
                                                      f"{', '.join(TOP_KEYS)}")
    name = data.get("name", default_name)
    check_name(name, "name", "it names the run folder")
    recordings, fit_recordings = parse_recording_lists(data)
    objective = data.get("objective", "sparsity_10")
    _check(isinstance(objective, str), "objective", f"got {short_repr(objective)}; expected a name")
    get_objective(objective)
    targets = data.get("density_targets", [])
    _check(isinstance(targets, list), "density_targets", "expected a list of densities in (0, 1]")
    for i, t in enumerate(targets):
        _check(_is_number(t) and 0 < t <= 1, f"density_targets[{i}]",
               f"got {short_repr(t)}; expected a density in (0, 1]")
    searcher = data.get("searcher", "random")
    _check(searcher in SEARCHERS, "searcher", f"got {short_repr(searcher)}; use one of {', '.join(SEARCHERS)}")
    multi = data.get("multi_objective", False)
    _check(isinstance(multi, bool), "multi_objective", f"got {short_repr(multi)}; expected true or false")
    num_samples = data.get("num_samples", 10)
    _check(_is_int(num_samples) and num_samples >= 1, "num_samples",
           f"got {short_repr(num_samples)}; expected an int >= 1")
    seed = data.get("seed", 0)
    _check(_is_int(seed) and seed >= 0, "seed", f"got {short_repr(seed)}; expected an int >= 0")
    scheduler = _parse_scheduler(data.get("scheduler"))
    cpus, gpus, custom = parse_trial_resources(data.get("resources_per_trial") or {})
    storage = data.get("storage_path")
    _check(storage is None or (isinstance(storage, str) and storage.strip() != ""), "storage_path",
           f"got {short_repr(storage)}; expected a folder every Ray node can reach, a URI Ray Tune "
           f"supports (s3://..., gs://...) or null")
    max_conc = data.get("max_concurrent_trials")
    _check(max_conc is None or (_is_int(max_conc) and max_conc >= 1), "max_concurrent_trials",
           f"got {short_repr(max_conc)}; expected an int >= 1 or null")
    layers = data.get("layers")
    _check(layers is None or (isinstance(layers, list) and layers
                              and all(_is_int(x) and x >= 0 for x in layers)),
           "layers", f"got {short_repr(layers)}; expected a non-empty list of layer ids or null")
    for i, x in enumerate(layers or []):
        _check(x not in layers[:i], f"layers[{i}]", f"got {x} again (layers[{layers.index(x)}]); "
                                                    f"list each layer once")
    per_report = data.get("layers_per_report")
    _check(per_report is None or (_is_int(per_report) and per_report >= 1), "layers_per_report",
           f"got {short_repr(per_report)}; expected an int >= 1 or null")
    fit = parse_fit_options(data.get("fit_hash_attention"))
    _check(fit is not None or not fit_recordings, "fit_recordings",
           "nothing is fitted in this study (no fit_hash_attention); remove fit_recordings or "
           "add fit_hash_attention")
    per_trial = data.get("configs_per_trial", DEFAULT_CONFIGS_PER_TRIAL)
    _check(_is_int(per_trial) and per_trial >= 1, "configs_per_trial",
           f"got {short_repr(per_trial)}; expected an int >= 1 (configurations per Ray trial)")
    limit = data.get("max_configurations", DEFAULT_MAX_CONFIGURATIONS)
    _check(_is_int(limit) and limit >= 1, "max_configurations",
           f"got {short_repr(limit)}; expected an int >= 1 (the most configurations a study may run)")
    validate = parse_validate_section(data.get("validate"), [float(t) for t in targets])
    chains_data = data.get("chains")
    _check(isinstance(chains_data, list) and bool(chains_data), "chains",
           "expected a non-empty list of chains ({name, maskers})")
    # the command line's --num-samples (an override) wins over the chains' own num_samples
    forced_samples = num_samples if overrides.get("num_samples") is not None else None
    chains = [_parse_chain(c, f"chains[{i}]", searcher, num_samples, multi, forced_samples)
              for i, c in enumerate(chains_data)]
    check_chain_names(chains)
    check_total(chains, limit)
    for i, c in enumerate(chains):
        if c.resources is not None:  # the chain's keys over the study's, checked as one
            try:
                parse_trial_resources({**(data.get("resources_per_trial") or {}), **c.resources})
            except ConfigError as exc:
                raise ConfigError(f"chains[{i}].{exc}") from None
        batchable = c.searcher in ("grid", "random") and scheduler is None
        c.configs_per_trial = min(per_trial, c.expected_trials()) if batchable else 1
    allocate = parse_allocate(data.get("allocate"), chains)
    speed = parse_speed_section(data.get("speed"), [float(t) for t in targets])
    return Study(name, recordings, objective, [float(t) for t in targets], searcher, multi,
                 num_samples, seed, scheduler, cpus, gpus, max_conc,
                 [int(x) for x in layers] if layers else None, per_report, fit, chains, source,
                 per_trial, custom, storage, limit, fit_recordings,
                 "recordings" if "recordings" in data else "recording", allocate, validate,
                 speed=speed)


def _parse_scheduler(spec: Any) -> Optional[Dict[str, Any]]:
    if spec is None or spec == "none":
        return None
    if spec == "asha":
        spec = {"type": "asha"}
    _check(isinstance(spec, dict), "scheduler", f"got {short_repr(spec)}; expected null or {{type: asha, ...}}")
    _check(spec.get("type") == "asha", "scheduler.type", f"got {short_repr(spec.get('type'))}; only 'asha'")
    unknown = sorted(set(spec) - {"type", "grace_period", "reduction_factor"})
    _check(not unknown, f"scheduler.{unknown[0]}" if unknown else "",
           "unknown key; ASHA takes grace_period and reduction_factor")
    grace = spec.get("grace_period", 1)
    _check(_is_int(grace) and grace >= 1, "scheduler.grace_period", f"got {short_repr(grace)}; expected an int >= 1")
    factor = spec.get("reduction_factor", 3)
    _check(_is_number(factor) and factor > 1, "scheduler.reduction_factor",
           f"got {short_repr(factor)}; expected a number > 1")
    return {"type": "asha", "grace_period": grace, "reduction_factor": factor}


def _parse_chain(data: Any, path: str, searcher: str, num_samples: int, multi: bool,
                 forced_samples: Optional[int] = None) -> ChainSpec:
    _check(isinstance(data, dict), path, "expected a mapping {name, maskers}")
    unknown = sorted(set(data) - {"name", "maskers", "searcher", "num_samples",
                                  "resources_per_trial"})
    _check(not unknown, f"{path}.{unknown[0]}" if unknown else "",
           "unknown chain key; a chain takes name, maskers, searcher, num_samples, "
           "resources_per_trial")
    resources = data.get("resources_per_trial")
    _check(resources is None or isinstance(resources, dict), f"{path}.resources_per_trial",
           "expected {cpu: N, gpu: G, custom_resources: {name: amount}} (over the study's)")
    name = data.get("name")
    check_name(name, f"{path}.name", "it names output files")
    searcher = data.get("searcher", searcher)
    _check(searcher in SEARCHERS, f"{path}.searcher", f"got {short_repr(searcher)}; use one of {', '.join(SEARCHERS)}")
    samples = data.get("num_samples", num_samples)
    _check(_is_int(samples) and samples >= 1, f"{path}.num_samples", f"got {short_repr(samples)}; expected an int >= 1")
    if forced_samples is not None:
        samples = forced_samples
    items = data.get("maskers")
    _check(isinstance(items, list), f"{path}.maskers", "expected a list of maskers ({type: ..., field: value})")
    maskers = [_parse_masker(m, f"{path}.maskers[{j}]") for j, m in enumerate(items)]
    _assign_keys(maskers)
    try:
        ResearchAttentionConfig([m.build({m.keys[f]: d.extremes()[0][1]
                                          for f, d in m.domains.items()}) for m in maskers])
    except ConfigError as exc:
        raise ConfigError(f"{path}.maskers: {exc}") from None
    has_domains = any(m.domains for m in maskers)
    if not has_domains:  # nothing to search: one trial
        return ChainSpec(name, maskers, "grid", 1, path, resources=resources)
    for m in maskers:
        for d in m.domains.values():
            if searcher == "grid":
                _check(d.kind in ("grid", "choice"), d.path,
                       f"a {d.kind} domain cannot be enumerated by the grid searcher; use "
                       f"grid/choice values or searcher random or optuna")
            if searcher == "optuna":
                _check(d.kind != "grid", d.path, "the optuna searcher cannot run a grid; use "
                       "choice, or searcher grid or random")
    if multi and searcher != "optuna":
        raise ConfigError(f"{path}.searcher: multi_objective needs the optuna searcher, got {short_repr(searcher)}")
    return ChainSpec(name, maskers, searcher, 1 if searcher == "grid" else samples, path,
                     resources=resources)


def _parse_masker(data: Any, path: str) -> MaskerSpec:
    _check(isinstance(data, dict), path, "expected a mapping {type: <MaskerConfig class>, field: value}")
    type_name = data.get("type")
    _check(isinstance(type_name, str), f"{path}.type",
           f"missing masker type; one of {', '.join(MaskerRegistry.config_names())}")
    config_class = MaskerRegistry.config_class(type_name, f"{path}.type")
    fields = {f.name: f for f in dataclasses.fields(config_class) if f.name != "search_space"}
    fixed: Dict[str, Any] = {}
    domains: Dict[str, Domain] = {}
    for key, value in data.items():
        if key == "type":
            continue
        _check(key in fields, f"{path}.{key}",
               f"{type_name} has no field {short_repr(key)}; its fields are {', '.join(sorted(fields))}")
        if isinstance(value, dict) and "search" in value:
            domains[key] = Domain.parse(value, f"{path}.{key}")
        else:
            fixed[key] = value
    for fname, f in fields.items():
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING  # type: ignore[misc]
        _check(not required or fname in fixed or fname in domains, f"{path}.{fname}",
               f"{type_name}.{fname} is required")
    spec = MaskerSpec(config_class, fixed, domains, {f: f for f in domains}, path)
    _check_values(spec)
    return spec


def _check_values(spec: MaskerSpec) -> None:
    """Build the config with every fixed value and each domain at each of its extremes."""
    firsts = {f: d.extremes()[0][1] for f, d in spec.domains.items()}

    def build(values: Dict[str, Any]) -> None:
        spec.config_class(**{**spec.fixed, **values})

    try:
        build(firsts)
    except ConfigError as exc:
        for fname, value in spec.fixed.items():  # blame one fixed field if it alone fails
            try:
                spec.config_class(**{fname: value})
            except ConfigError:
                raise ConfigError(f"{spec.path}.{fname}: {exc}") from None
            except TypeError:
                continue
        if not spec.domains:
            raise ConfigError(f"{spec.path}: {exc}") from None
    for fname, domain in spec.domains.items():
        for where, value in domain.extremes():
            try:
                build({**firsts, fname: value})
            except ConfigError as exc:
                raise ConfigError(f"{where}: {exc}") from None


def _assign_keys(maskers: List[MaskerSpec]) -> None:
    """Trial parameter names: ``<ConfigClass>_<field>`` (the prior hub's names), with the
    masker's index added when a chain holds two maskers of the same class."""
    counts: Dict[str, int] = {}
    for m in maskers:
        counts[m.config_class.__name__] = counts.get(m.config_class.__name__, 0) + 1
    for j, m in enumerate(maskers):
        cls = m.config_class.__name__
        prefix = cls if counts[cls] == 1 else f"{cls}_{j}"
        m.keys = {f: f"{prefix}_{f}" for f in m.domains}
