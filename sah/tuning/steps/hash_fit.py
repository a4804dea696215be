"""The study option ``fit_hash_attention``: fit HashAttention hashes once per run.

```yaml
fit_hash_attention: {bits: 32, steps: 300}   # any fit_hash_attention() keyword; bits = hat_bits
```

Before any trial, the hash functions are fitted on the study's ``fit_recordings`` (each
layer on all of their contexts; without ``fit_recordings``, on the scored recordings, which
makes HashAttention's figures optimistic) with
:func:`sah.maskers.hash_attention_fit.fit_hash_attention`, showing a progress bar over the
layers, and saved in the run folder (``hash_attention/weights.safetensors`` plus
``report.json``: the options and, for every fit and every scored recording, the top-k
recall of the hashes before and after fitting, mean over layers and per layer). Every
``HashAttentionTopKMaskerConfig`` of the study gets the fitted sizes (``hat_bits``,
``hat_mlp_*``) as fixed fields and ``hat_weight_file: hash_attention.safetensors``, a
portable name, never a driver-side path: trials receive the weights through Ray's object
store and tuned configs and exports find the file next to them
(:mod:`sah.runs.artefacts`). A resumed run reuses the saved weights.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

from sah.infra.threads import torch_threads
from sah.runs.artefacts import FITTED_NAME, weights_path
from sah.study.fit_options import fit_keywords, fitted_layers
from sah.infra.files import atomic_write_bytes, atomic_write_text
from sah.study.spec import Study
from sah.infra.checks import ConfigError

MASKER = "HashAttentionTopKMaskerConfig"
SIZE_FIELDS = ("hat_bits", "hat_mlp_layers", "hat_mlp_hidden_size", "hat_mlp_activation")
FIT_DEFAULTS = {"hat_bits": 32, "hat_mlp_layers": 3, "hat_mlp_hidden_size": 128,
                "hat_mlp_activation": "silu"}


def fit_options(study: Study) -> Dict[str, Any]:
    return fit_keywords(study.fit_hash_attention)


def attach_weights(study: Study, run_dir: Path) -> None:
    """Point every HashAttention masker of the study at the run's fitted weights (by the
    portable name :data:`FITTED_NAME`; ``run_dir`` is not part of the study)."""
    if not study.fit_hash_attention:
        return
    opts = fit_options(study)  # checked with the study (sah.study.fit_options)
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


def _cache_folder(recordings: Sequence[Any], opts: Dict[str, Any]) -> Path:
    """Where fitted weights of these recordings and options are kept between runs. The key
    covers the recordings' content, the options, the fitting code and torch's version, so a
    change to any of them fits again."""
    import hashlib

    import torch

    import sah.maskers.hash_attention as hat
    import sah.maskers.hash_attention_fit as fit
    from sah.evaluate import recording_key
    from sah.recording.default import cache_dir
    keys = [recording_key(r) for r in recordings]
    digest = hashlib.sha256(json.dumps({"recording": keys[0] if len(keys) == 1 else keys,
                                        "options": opts, "torch": torch.__version__},
                                       sort_keys=True).encode())
    for module in (fit, hat):
        digest.update(Path(module.__file__).read_bytes())
    return cache_dir() / "hash_attention" / digest.hexdigest()[:16]


def _labelled(recordings: Any) -> Dict[str, Any]:
    """A recording, a list of them or ``{label: recording}`` -> ``{label: recording}``."""
    if isinstance(recordings, dict):
        return dict(recordings)
    if isinstance(recordings, (list, tuple)):
        return {str(i): r for i, r in enumerate(recordings)}
    return {"recording": recordings}


def prepare_hash_attention(study: Study, fit_recordings: Any, run_dir: Path,
                           scored: Optional[Dict[str, Any]] = None,
                           progress: bool = False) -> Path:
    """Fit and save the weights unless the run already holds them. ``fit_recordings``: a
    recording, a list or ``{label: recording}`` (each layer is fitted on all of them);
    ``scored``: ``{label: recording}`` the run scores, whose recall the report gives too.
    The fit is deterministic (seeded), so weights fitted by an earlier run on the same
    recordings with the same options are copied from the cache
    (``$SAH_CACHE_DIR/hash_attention``) instead of fitted again. A line says what is
    fitted, a bar (``progress``) follows the layers, and a last line gives the recall."""
    path = weights_path(run_dir)
    if path.is_file():
        return path
    with torch_threads(FIT_THREADS):
        return _prepare(study, fit_recordings, run_dir, scored, progress, path)


#: torch threads while fitting: its operations are small (one layer's heads x queries x
#: keys), and two threads on a busy 2-core machine were about 9x slower than one
#: (benchmark/RESULTS.md, section 8)
FIT_THREADS = 1


def _prepare(study: Study, fit_recordings: Any, run_dir: Path, scored: Optional[Dict[str, Any]],
             progress: bool, path: Path) -> Path:
    from sah.maskers.hash_attention import save_hat_weights
    from sah.maskers.hash_attention_fit import fit_hash_attention
    fit = _labelled(fit_recordings)
    opts = fit_options(study)
    layers = fitted_layers(study)
    if layers is not None:
        opts["layers"] = layers
    cached = _cache_folder(list(fit.values()), opts)
    started = time.perf_counter()
    if (cached / "weights.safetensors").is_file() and (cached / "report.json").is_file():
        weights_bytes = (cached / "weights.safetensors").read_bytes()
        doc = json.loads((cached / "report.json").read_text())
        _say(f"HashAttention weights fitted on {', '.join(fit)} found in the cache {cached}")
    else:
        layers = opts.get("layers") or next(iter(fit.values())).layer_ids
        _say(f"fitting HashAttention hash functions on {', '.join(fit)}: {len(layers)} layers, "
             f"{opts.get('steps', _default('steps'))} steps each")
        bar = _bar(len(layers), progress)

        def on_layer(layer: int, done: int, total: int, seconds: float) -> None:
            if bar is not None:
                bar.set_postfix(layer=layer, seconds=f"{seconds:.2f}", refresh=False)
                bar.update(1)

        try:
            weights, report = fit_hash_attention(list(fit.values()), on_layer=on_layer, **opts)
        finally:
            if bar is not None:
                bar.close()
        tmp = path.with_name(".weights.tmp.safetensors")
        path.parent.mkdir(parents=True, exist_ok=True)
        save_hat_weights(weights, tmp)
        weights_bytes = tmp.read_bytes()
        tmp.unlink()
        doc = {"options": opts, "recall_k": report.recall_k, "steps": report.steps,
               "seconds": report.seconds,
               "recall_before": {str(k): v for k, v in report.recall_before.items()},
               "recall_after": {str(k): v for k, v in report.recall_after.items()}}
        try:  # keep a copy for later runs; a cache that cannot be written only costs time
            atomic_write_bytes(cached / "weights.safetensors", weights_bytes)
            atomic_write_text(cached / "report.json", json.dumps(doc, indent=2) + "\n")
        except OSError:
            pass
    from sah.maskers.hash_attention import load_hat_weights
    atomic_write_bytes(path, weights_bytes)
    weights = load_hat_weights(path)
    doc["fit_recordings"] = {label: recall_figures(weights, rec, opts) for label, rec in fit.items()}
    doc["scored_recordings"] = {label: recall_figures(weights, rec, opts)
                                for label, rec in (scored or {}).items()}
    doc["fitted_on_scored"] = bool(scored) and all(
        any(r is s for s in scored.values()) for r in fit.values())
    atomic_write_text(path.parent / "report.json", json.dumps(doc, indent=2) + "\n")
    _say(f"HashAttention ready in {time.perf_counter() - started:.1f} s; " + recall_line(doc))
    return path


def _default(name: str) -> Any:
    import inspect

    from sah.maskers.hash_attention_fit import fit_hash_attention
    return inspect.signature(fit_hash_attention).parameters[name].default


def recall_figures(weights: Dict[int, Any], recording: Any, opts: Dict[str, Any]) -> Dict[str, Any]:
    """Top-k recall of the random initial and the fitted hashes on each fitted layer of
    ``recording``: ``{k, recall_before, recall_after (means over layers), per_layer}``."""
    from sah.maskers.hash_attention import random_hat_weights
    from sah.maskers.hash_attention_fit import hash_top_k_recall
    from sah.infra.checks import resolve_size
    size = {name: opts.get(name, _default(name)) for name in
            ("hat_bits", "hat_mlp_layers", "hat_mlp_hidden_size", "hat_mlp_activation",
             "recall_size", "seed")}
    per_layer: Dict[str, Dict[str, float]] = {}
    k = 0
    for index, lr in enumerate(recording.layers):
        if lr.layer not in weights:
            continue
        ctx = recording.context(index)
        d = ctx.dims
        k = max(1, resolve_size(size["recall_size"], ctx.size_keys))
        init = random_hat_weights(d.num_heads, d.num_kv_heads, d.head_dim, size["hat_bits"],
                                  size["hat_mlp_layers"], size["hat_mlp_hidden_size"],
                                  size["seed"] + lr.layer)
        per_layer[str(lr.layer)] = {
            "before": hash_top_k_recall(init, ctx, k, size["hat_mlp_activation"]),
            "after": hash_top_k_recall(weights[lr.layer], ctx, k, size["hat_mlp_activation"])}
    n = max(1, len(per_layer))
    return {"k": k, "recall_before": sum(v["before"] for v in per_layer.values()) / n,
            "recall_after": sum(v["after"] for v in per_layer.values()) / n,
            "per_layer": per_layer}


def recall_line(doc: Dict[str, Any]) -> str:
    """One line: mean top-k recall after (before) fitting on each fit and scored recording."""
    def part(role: str) -> str:
        items = doc.get(role) or {}
        return ", ".join(f"{label} {f['recall_after']:.3f} ({f['recall_before']:.3f})"
                         for label, f in items.items()) or "-"
    return (f"top-k recall after (before) fitting: fit {part('fit_recordings')}; "
            f"scored {part('scored_recordings')}")


def _say(message: str) -> None:
    print(f"sah: {message}", file=sys.stderr, flush=True)


def _bar(total: int, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm
    return tqdm(total=total, desc="HashAttention fit", unit="layer", file=sys.stderr,
                dynamic_ncols=True, leave=False)
