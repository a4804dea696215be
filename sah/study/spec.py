"""What a study is, as checked dataclasses: each masker of a chain (fixed fields and search
domains), each chain, the study's sections (``allocate:``, ``validate:``, ``speed:``) and the study itself.

:mod:`sah.study.parse` builds them from YAML; nothing here reads files or imports Ray.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from sah.attention import ResearchAttentionConfig
from sah.infra.checks import ConfigError, short_repr
from sah.maskers.base import MaskerConfig
from sah.study.space import Domain, plain_value
from sah.study.trial_resources import parse_trial_resources

DEFAULT_CONFIGS_PER_TRIAL = 8
DEFAULT_MAX_CONFIGURATIONS = 100_000
DEFAULT_VALIDATE_TOKENS = 2048
DEFAULT_VALIDATE_POSITIONS = 128
DEFAULT_SPEED_LONG_KEYS = 32768
DEFAULT_SPEED_REPEATS = 3


@dataclass
class AllocateSpec:
    density_targets: List[float]
    chains: List[str]
    per_head: bool = True

    def to_dict(self) -> Dict[str, Any]:
        return {"density_targets": list(self.density_targets), "chains": list(self.chains),
                "per_head": self.per_head}


@dataclass
class RetrievalTaskSpec:
    """One entry of ``validate.tasks``: a retrieval task (:mod:`sah.inmodel.retrieval`)
    at some prompt lengths on some picks."""

    task: str
    lengths: List[int]
    samples: int = 10
    text: Optional[str] = None                      # the niah haystack (default docs)
    picks: List[str] = field(default_factory=list)  # resolved: never empty

    def to_dict(self) -> Dict[str, Any]:
        out = {"task": self.task, "lengths": list(self.lengths), "samples": self.samples,
               "picks": list(self.picks)}
        if self.text is not None:
            out["text"] = self.text
        return out


@dataclass
class ValidateSection:
    texts: List[str]                                 # empty only when tasks are given
    tokens: int = DEFAULT_VALIDATE_TOKENS
    positions: int = DEFAULT_VALIDATE_POSITIONS
    picks: List[str] = field(default_factory=list)   # resolved: never empty
    model: str = "default"   # default | gemma-3-270m | a local model folder or .gguf file
    tasks: List[RetrievalTaskSpec] = field(default_factory=list)

    def to_dict(self) -> Dict[str, Any]:
        out = {"texts": list(self.texts), "tokens": self.tokens, "positions": self.positions,
               "picks": list(self.picks)}
        if self.model != "default":  # studies of the embedded model keep their form
            out["model"] = self.model
        if self.tasks:  # only when set: older run.yaml files still compare
            out["tasks"] = [t.to_dict() for t in self.tasks]
        return out


@dataclass
class MaskerSpec:
    """One masker of a chain: fixed fields and search domains."""

    config_class: type
    fixed: Dict[str, Any]
    domains: Dict[str, Domain]
    keys: Dict[str, str] = field(default_factory=dict)  # field -> trial parameter name
    path: str = ""

    def build(self, params: Dict[str, Any]) -> MaskerConfig:
        values = dict(self.fixed)
        for name in self.domains:
            values[name] = plain_value(params[self.keys[name]])
        return self.config_class(**values)

    def to_dict(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"type": self.config_class.__name__}
        out.update(copy.deepcopy(self.fixed))
        out.update({k: d.to_dict() for k, d in self.domains.items()})
        return out


@dataclass
class SpeedSection:
    """The ``speed:`` section (:mod:`sah.study.speed`)."""

    long_keys: int = DEFAULT_SPEED_LONG_KEYS
    repeats: int = DEFAULT_SPEED_REPEATS
    picks: List[str] = field(default_factory=list)   # resolved: never empty
    device: str = "cpu"
    dtype: str = "float32"
    threads: int = 1  # torch CPU threads while timing

    def to_dict(self) -> Dict[str, Any]:
        return {"long_keys": self.long_keys, "repeats": self.repeats, "picks": list(self.picks),
                "device": self.device, "dtype": self.dtype, "threads": self.threads}


@dataclass
class ChainSpec:
    name: str
    maskers: List[MaskerSpec]
    searcher: str
    num_samples: int
    path: str = ""
    configs_per_trial: int = 1  # effective batch size (1: one configuration per Ray trial)
    resources: Optional[Dict[str, Any]] = None  # the chain's own resources_per_trial keys

    @property
    def batched(self) -> bool:
        return self.configs_per_trial > 1

    @property
    def param_names(self) -> List[str]:
        return [m.keys[f] for m in self.maskers for f in m.domains]

    @property
    def domains(self) -> Dict[str, Domain]:
        return {m.keys[f]: d for m in self.maskers for f, d in m.domains.items()}

    def build(self, params: Dict[str, Any]) -> ResearchAttentionConfig:
        """The chain's config for one trial's parameters (``{param name: value}``)."""
        return ResearchAttentionConfig([m.build(params) for m in self.maskers])

    def expected_trials(self) -> int:
        """How many trials the chain runs (grid points times samples)."""
        grid = 1
        for d in self.domains.values():
            if d.kind == "grid" or (self.searcher == "grid" and d.kind == "choice"):
                grid *= len(d.values)
        return grid * self.num_samples

    def expected_ray_trials(self) -> int:
        """How many Ray trials score those configurations (batches when batched)."""
        n = self.expected_trials()
        return -(-n // self.configs_per_trial) if self.batched else n

    def to_dict(self) -> Dict[str, Any]:
        out = {"name": self.name, "searcher": self.searcher, "num_samples": self.num_samples,
               "maskers": [m.to_dict() for m in self.maskers]}
        if self.resources is not None:
            out["resources_per_trial"] = copy.deepcopy(self.resources)
        return out


@dataclass
class Study:
    name: str
    recordings: List[str]      # scored recordings (embedded names or files), as written
    objective: str
    density_targets: List[float]
    searcher: str
    multi_objective: bool
    num_samples: int
    seed: int
    scheduler: Optional[Dict[str, Any]]
    cpus_per_trial: float
    gpus_per_trial: float
    max_concurrent_trials: Optional[int]
    layers: Optional[List[int]]
    layers_per_report: Optional[int]
    fit_hash_attention: Optional[Dict[str, Any]]
    chains: List[ChainSpec]
    source: str = "study"
    configs_per_trial: int = DEFAULT_CONFIGS_PER_TRIAL
    custom_resources: Dict[str, float] = field(default_factory=dict)  # Ray custom resources
    storage_path: Optional[str] = None  # where Ray Tune keeps experiment state (None: the run folder)
    max_configurations: int = DEFAULT_MAX_CONFIGURATIONS
    fit_recordings: List[str] = field(default_factory=list)  # empty: fit on the scored ones
    recordings_key: str = "recordings"  # the key the file used ("recording" for one)
    allocate: Optional[AllocateSpec] = None  # :mod:`sah.study.allocate`
    validate: Optional[ValidateSection] = None  # in-model validation of the picks
    speed: Optional[SpeedSection] = None  # each pick's measured speed (:mod:`sah.study.speed`)

    @property
    def recording(self) -> str:
        """The first scored recording (studies used to name exactly one)."""
        return self.recordings[0]

    def trial_resources(self, chain: ChainSpec) -> tuple:
        """``(cpu, gpu, custom_resources)`` of one trial of ``chain``: the study's
        ``resources_per_trial`` with the chain's own keys over them."""
        base: Dict[str, Any] = {"cpu": self.cpus_per_trial, "gpu": self.gpus_per_trial,
                                "custom_resources": dict(self.custom_resources)}
        return parse_trial_resources({**base, **(chain.resources or {})})

    def chain(self, name: str) -> ChainSpec:
        for c in self.chains:
            if c.name == name:
                return c
        raise ConfigError(f"no chain {short_repr(name)} in the study; chains: "
                          f"{', '.join(c.name for c in self.chains)}")

    def to_dict(self) -> Dict[str, Any]:
        """The resolved study (defaults filled in, CLI overrides applied)."""
        resources: Dict[str, Any] = {"cpu": self.cpus_per_trial, "gpu": self.gpus_per_trial}
        if self.custom_resources:
            resources["custom_resources"] = dict(self.custom_resources)
        out = {
            "name": self.name, "recordings": list(self.recordings),
            "fit_recordings": list(self.fit_recordings), "objective": self.objective,
            "density_targets": list(self.density_targets), "searcher": self.searcher,
            "multi_objective": self.multi_objective, "num_samples": self.num_samples,
            "seed": self.seed, "scheduler": copy.deepcopy(self.scheduler),
            "resources_per_trial": resources,
            "max_concurrent_trials": self.max_concurrent_trials, "layers": self.layers,
            "layers_per_report": self.layers_per_report,
            "fit_hash_attention": copy.deepcopy(self.fit_hash_attention),
            "configs_per_trial": self.configs_per_trial,
            # only when raised: run.yaml files written before the key existed still compare
            **({"max_configurations": self.max_configurations}
               if self.max_configurations != DEFAULT_MAX_CONFIGURATIONS else {}),
            "chains": [c.to_dict() for c in self.chains],
        }
        if self.storage_path is not None:
            out["storage_path"] = self.storage_path
        if self.allocate is not None:
            out["allocate"] = self.allocate.to_dict()
        if self.validate is not None:  # only when set: older run.yaml files still compare
            out["validate"] = self.validate.to_dict()
        if self.speed is not None:  # only when set, as validate
            out["speed"] = self.speed.to_dict()
        return out
