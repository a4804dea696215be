"""Per-run artefacts: the weight files a study's chains name (HashAttention weights, fitted in
the run or given in the study), and how they reach trials and configs without a
driver-side path.

A HashAttention masker of a chain spec names its weights with ``hat_weight_file``: fitted
weights by the portable name ``hash_attention.safetensors``
(:data:`sah.tuning.steps.hash_fit.FITTED_NAME`), given weights by the path the study wrote. Each
becomes an :class:`Artefact` with the file name it takes next to a config
(``<stem>.safetensors``) and the files the driver may read it from (the run's
``tuned/<name>`` first, so a moved run folder still finds it).

- Trials: the driver loads every artefact once and ships it through Ray's object store in
  the :class:`~sah.tuning.trainable.TrialTask` as :class:`SharedWeights` (numpy arrays,
  mapped without copies); a worker rebuilds them once per process and
  :func:`with_weights` puts the tensors in the config (``hat_weights``) in place of the file.
- Configs: :func:`portable` renames the file to its name next to the config and
  :func:`write_beside` writes the weights there (``tuned/``, ``sah export -o``);
  ``ResearchAttentionConfig.from_file`` resolves a relative ``*_file`` field against the
  config file's folder, so the pair loads from anywhere.
"""

from __future__ import annotations

import dataclasses
import hashlib
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from sah.attention import ResearchAttentionConfig
from sah.infra.files import atomic_write_bytes
from sah.study.spec import Study
from sah.infra.checks import ConfigError

FITTED_NAME = "hash_attention.safetensors"  # fitted HashAttention weights' name next to a config


def weights_path(run_dir: Path) -> Path:
    """Where a run keeps its fitted HashAttention weights (:mod:`sah.tuning.steps.hash_fit`)."""
    return Path(run_dir).resolve() / "hash_attention" / "weights.safetensors"


FILE_FIELD = "hat_weight_file"
WEIGHTS_FIELD = "hat_weights"


@dataclass
class Artefact:
    value: str                       # hat_weight_file in the chain spec
    name: str                        # its file name next to a config
    sources: List[Path] = field(default_factory=list)  # where the driver looks, in order
    fitted: bool = False
    where: str = ""                  # "<study file>: chains[i].maskers[j]", for messages

    def source(self) -> Path:
        for path in self.sources:
            if path.is_file():
                return path
        raise ConfigError(f"hat_weight_file {self.value}: no such file (looked at "
                          f"{', '.join(str(p) for p in self.sources)})")


def study_artefacts(study: Study, run_dir: Path) -> Dict[str, Artefact]:
    """Every weight file the study's chains name, keyed by the chain spec's value."""
    run_dir = Path(run_dir)
    out: Dict[str, Artefact] = {}
    taken = {FITTED_NAME} if study.fit_hash_attention else set()
    for chain in study.chains:
        for masker in chain.maskers:
            if FILE_FIELD in masker.domains:
                raise ConfigError(f"{study.source}: {masker.path}.{FILE_FIELD}: a weight file "
                                  f"cannot be searched; fix one file per chain")
            value = masker.fixed.get(FILE_FIELD)
            if value is None or value in out:
                continue
            if study.fit_hash_attention and value == FITTED_NAME:
                out[value] = Artefact(value, FITTED_NAME, [run_dir / "tuned" / FITTED_NAME,
                                                           weights_path(run_dir)], fitted=True,
                                      where=f"{study.source}: {masker.path}")
                continue
            stem, name, i = Path(str(value)).stem or "weights", "", 1
            while not name or name in taken:
                name = f"{stem}.safetensors" if i == 1 else f"{stem}-{i}.safetensors"
                i += 1
            taken.add(name)
            out[value] = Artefact(str(value), name,
                                  [run_dir / "tuned" / name, Path(str(value)).expanduser()],
                                  where=f"{study.source}: {masker.path}")
    return out


# ---------------------------------------------------------------------- the object store
class SharedWeights:
    """Loaded HashAttention weights ``{layer: {name: [tensor, ...]}}`` that travel through
    Ray's object store as numpy arrays. A worker rebuilds a given set once per process
    (keyed by its content digest) and reuses it for every trial it runs."""

    def __init__(self, weights: Dict[int, Dict[str, List[torch.Tensor]]],
                 digest: Optional[str] = None) -> None:
        self.weights = weights
        self.digest = digest or _digest(weights)

    def __reduce__(self):
        arrays = {int(layer): {name: [t.detach().cpu().contiguous().numpy() for t in ts]
                               for name, ts in w.items()} for layer, w in self.weights.items()}
        return (_rebuild_weights, (self.digest, arrays))


_WORKER_WEIGHTS: "OrderedDict[str, SharedWeights]" = OrderedDict()
_KEEP = 4  # weight sets kept per worker process


def _rebuild_weights(digest: str, arrays: Dict[int, Dict[str, List[Any]]]) -> SharedWeights:
    cached = _WORKER_WEIGHTS.get(digest)
    if cached is None:
        with warnings.catch_warnings():  # object-store arrays are read-only; never written
            warnings.simplefilter("ignore", UserWarning)
            weights = {layer: {name: [torch.from_numpy(a) for a in items]
                               for name, items in w.items()} for layer, w in arrays.items()}
        cached = _WORKER_WEIGHTS[digest] = SharedWeights(weights, digest)
        while len(_WORKER_WEIGHTS) > _KEEP:
            _WORKER_WEIGHTS.popitem(last=False)
    return cached


def _digest(weights: Dict[int, Dict[str, List[torch.Tensor]]]) -> str:
    h = hashlib.sha256()
    for layer in sorted(weights):
        for name in sorted(weights[layer]):
            for i, t in enumerate(weights[layer][name]):
                t = t.detach().cpu().contiguous()
                h.update(f"{layer}.{name}.{i}.{tuple(t.shape)}.{t.dtype}".encode())
                h.update(t.numpy().tobytes())
    return h.hexdigest()


def load_artefacts(artefacts: Dict[str, Artefact], fitted: Optional[bool] = None
                   ) -> Dict[str, SharedWeights]:
    """Load the artefacts (only the fitted or only the given ones when ``fitted`` is set)."""
    from sah.maskers.hash_attention import load_hat_weights
    out: Dict[str, SharedWeights] = {}
    for value, art in artefacts.items():
        if fitted is not None and art.fitted != fitted:
            continue
        try:
            # a .pkl only with the person's opt-in (sah.infra.pickle_opt_in), never the study's
            out[value] = SharedWeights(load_hat_weights(art.source()))
        except ConfigError as exc:
            raise ConfigError(f"{art.where}: {exc}" if art.where else str(exc)) from None
    return out


# ---------------------------------------------------------------------- configs
def _replace(config: ResearchAttentionConfig, change: Any) -> ResearchAttentionConfig:
    maskers = []
    for cfg in config.masker_configs:
        value = getattr(cfg, FILE_FIELD, None)
        new = change(value) if value is not None else None
        maskers.append(cfg if new is None else dataclasses.replace(cfg, **new))
    # layer_overrides are kept as they are (a weight file named per layer is not rewritten)
    return ResearchAttentionConfig(maskers, layer_overrides=config.layer_overrides)


def with_weights(config: ResearchAttentionConfig, weights: Dict[str, SharedWeights]
                 ) -> ResearchAttentionConfig:
    """The config with every weight file it names replaced by the loaded tensors."""
    if not weights:
        return config
    return _replace(config, lambda v: {FILE_FIELD: None, WEIGHTS_FIELD: weights[v].weights}
                    if v in weights else None)


@dataclass
class RunArtefacts:
    """The artefacts of one run and the weights loaded so far. The run's outputs
    (:mod:`sah.runs.outputs`) and exports use it through these methods."""

    items: Dict[str, Artefact]
    loaded: Dict[str, SharedWeights] = field(default_factory=dict)

    @classmethod
    def of_run(cls, study: Study, run_dir: Path) -> "RunArtefacts":
        return cls(study_artefacts(study, run_dir))

    def load(self, fitted: Optional[bool] = None) -> Dict[str, SharedWeights]:
        """Load what is not loaded yet (only fitted / only given ones with ``fitted``)."""
        todo = {v: a for v, a in self.items.items() if v not in self.loaded}
        self.loaded.update(load_artefacts(todo, fitted))
        return self.loaded

    def check_shapes(self, study: Study, recording: Any) -> None:
        """Every loaded weight file against the maskers naming it and the study's
        recordings (layers, heads, KV heads, head dim; hash sizes the masker fixes):
        refused with one line before anything runs."""
        from sah.maskers.hash_attention import check_weights_for
        layers = list(study.layers or recording.layer_ids)
        for chain in study.chains:
            for masker in chain.maskers:
                value = masker.fixed.get(FILE_FIELD)
                if value not in self.loaded:
                    continue
                art = self.items[value]
                check_weights_for(self.loaded[value].weights, masker.fixed, masker.domains,
                                  layers, recording.num_heads, recording.num_kv_heads,
                                  recording.head_dim,
                                  f"{study.source}: {masker.path}.{FILE_FIELD} {art.value}")

    def needed(self, config: ResearchAttentionConfig) -> List[Artefact]:
        """The artefacts a config names."""
        values = [getattr(c, FILE_FIELD, None) for c in config.masker_configs]
        return [self.items[v] for v in dict.fromkeys(values) if v in self.items]

    def resolved(self, config: ResearchAttentionConfig) -> ResearchAttentionConfig:
        """The config with its weights in memory (what a trial scores)."""
        if self.needed(config):
            self.load()
        return with_weights(config, self.loaded)

    def portable(self, config: ResearchAttentionConfig, prefix: str = "") -> ResearchAttentionConfig:
        """The config naming each weight file ``prefix + name``, relative to its own folder."""
        return _replace(config, lambda v: {FILE_FIELD: prefix + self.items[v].name}
                        if v in self.items else None)

    def write_beside(self, config: ResearchAttentionConfig, folder: Path,
                     prefix: str = "") -> List[Path]:
        """Write the config's weights as ``folder/<prefix><name>`` (safetensors)."""
        from sah.maskers.hash_attention import save_hat_weights
        written = []
        for art in self.needed(config):
            dest = Path(folder) / f"{prefix}{art.name}"
            source = art.source()
            if source.resolve() != dest.resolve():
                if source.suffix.lower() == ".safetensors":
                    atomic_write_bytes(dest, source.read_bytes())
                else:  # .pt / .pkl given in the study: stored as safetensors (no pickle)
                    self.load()
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    tmp = dest.with_name(f".{dest.name}.tmp.safetensors")
                    save_hat_weights(self.loaded[art.value].weights, tmp)
                    tmp.replace(dest)
            written.append(dest)
        return written
