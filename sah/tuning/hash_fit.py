"""The study option ``fit_hash_attention``: fit HashAttention hashes once per run.

```yaml
fit_hash_attention: {bits: 32, steps: 300}   # any fit_hash_attention() keyword; bits = hat_bits
```

Before any trial, the hash functions are fitted on the run's recording
(:func:`sah.maskers.hash_attention_fit.fit_hash_attention`) and saved in the run folder
(``hash_attention/weights.safetensors`` plus ``report.json``). Every
``HashAttentionTopKMaskerConfig`` of the study gets the fitted sizes (``hat_bits``,
``hat_mlp_*``) as fixed fields and ``hat_weight_file: hash_attention.safetensors``, a
portable name, never a driver-side path: trials receive the weights through Ray's object
store and tuned configs and exports find the file next to them
(:mod:`sah.tuning.artefacts`). A resumed run reuses the saved weights.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict

from sah.tuning.outputs.files import atomic_write_bytes, atomic_write_text
from sah.tuning.study import Study
from sah.validation import ConfigError

MASKER = "HashAttentionTopKMaskerConfig"
SIZE_FIELDS = ("hat_bits", "hat_mlp_layers", "hat_mlp_hidden_size", "hat_mlp_activation")
FITTED_NAME = "hash_attention.safetensors"  # the fitted weights' name next to a config
FIT_DEFAULTS = {"hat_bits": 32, "hat_mlp_layers": 3, "hat_mlp_hidden_size": 128,
                "hat_mlp_activation": "silu"}


def fit_options(study: Study) -> Dict[str, Any]:
    opts = dict(study.fit_hash_attention or {})
    if "bits" in opts:
        opts["hat_bits"] = opts.pop("bits")
    return opts


def weights_path(run_dir: Path) -> Path:
    """Where a run keeps its fitted weights."""
    return Path(run_dir).resolve() / "hash_attention" / "weights.safetensors"


def attach_weights(study: Study, run_dir: Path) -> None:
    """Point every HashAttention masker of the study at the run's fitted weights (by the
    portable name :data:`FITTED_NAME`; ``run_dir`` is not part of the study)."""
    if not study.fit_hash_attention:
        return
    import inspect

    from sah.maskers.hash_attention_fit import fit_hash_attention
    opts = fit_options(study)
    known = set(inspect.signature(fit_hash_attention).parameters) - {"source", "heldout"}
    unknown = sorted(set(opts) - known)
    if unknown:
        raise ConfigError(f"{study.source}: fit_hash_attention.{unknown[0]}: unknown option; "
                          f"options: bits, {', '.join(sorted(known))}")
    sizes = {k: opts.get(k, FIT_DEFAULTS[k]) for k in SIZE_FIELDS}
    found = False
    for i, chain in enumerate(study.chains):
        for j, masker in enumerate(chain.maskers):
            if masker.config_class.__name__ != MASKER:
                continue
            found = True
            for name, value in sizes.items():
                if name in masker.domains or masker.fixed.get(name, value) != value:
                    raise ConfigError(
                        f"{study.source}: chains[{i}].maskers[{j}].{name}: the fitted weights have "
                        f"{name}={value!r}; leave the field out (or set it in fit_hash_attention)")
                masker.fixed[name] = value
            masker.fixed["hat_weight_file"] = FITTED_NAME
    if not found:
        raise ConfigError(f"{study.source}: fit_hash_attention: no chain uses {MASKER}; remove the "
                          f"option or add a HashAttention chain")


def _cache_folder(recording: Any, opts: Dict[str, Any]) -> Path:
    """Where fitted weights of this recording and these options are kept between runs. The
    key covers the recording's content, the options, the fitting code and torch's version,
    so a change to any of them fits again."""
    import hashlib

    import torch

    import sah.maskers.hash_attention as hat
    import sah.maskers.hash_attention_fit as fit
    from sah.evaluate import recording_key
    from sah.recording.default import cache_dir
    digest = hashlib.sha256(json.dumps({"recording": recording_key(recording), "options": opts,
                                        "torch": torch.__version__}, sort_keys=True).encode())
    for module in (fit, hat):
        digest.update(Path(module.__file__).read_bytes())
    return cache_dir() / "hash_attention" / digest.hexdigest()[:16]


def prepare_hash_attention(study: Study, recording: Any, run_dir: Path) -> Path:
    """Fit and save the weights unless the run already holds them. The fit is
    deterministic (seeded), so weights fitted by an earlier run on the same recording with
    the same options are copied from the cache (``$SAH_CACHE_DIR/hash_attention``) instead
    of fitted again (about 35 s for the default study on 2 CPU cores)."""
    path = weights_path(run_dir)
    if path.is_file():
        return path
    from sah.maskers.hash_attention import save_hat_weights
    from sah.maskers.hash_attention_fit import fit_hash_attention
    opts = fit_options(study)
    if study.layers and "layers" not in opts:
        opts["layers"] = list(study.layers)
    cached = _cache_folder(recording, opts)
    if (cached / "weights.safetensors").is_file() and (cached / "report.json").is_file():
        atomic_write_bytes(path.parent / "report.json", (cached / "report.json").read_bytes())
        atomic_write_bytes(path, (cached / "weights.safetensors").read_bytes())
        return path
    weights, report = fit_hash_attention(recording, **opts)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(".weights.tmp.safetensors")
    save_hat_weights(weights, tmp)
    tmp.replace(path)
    doc = {"options": opts, "recall_k": report.recall_k, "steps": report.steps,
           "seconds": report.seconds,
           "recall_before": {str(k): v for k, v in report.recall_before.items()},
           "recall_after": {str(k): v for k, v in report.recall_after.items()}}
    atomic_write_text(path.parent / "report.json", json.dumps(doc, indent=2) + "\n")
    try:  # keep a copy for later runs; a cache that cannot be written only costs time
        atomic_write_bytes(cached / "weights.safetensors", path.read_bytes())
        atomic_write_bytes(cached / "report.json", (path.parent / "report.json").read_bytes())
    except OSError:
        pass
    return path
