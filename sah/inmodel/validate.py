""":func:`validate_configs`: chain configs inside the model, against dense attention.

The model is loaded once; per text, one dense pass (prefill + dense chunk) is shared by
every config; per (config, text), one sparse chunk. Everything that can be checked
before the model runs (protocol sizes, texts, configs) is checked first: bad input raises
``ValueError`` / ``FileNotFoundError`` with one line naming the flag or field, the value
and the fix, before anything runs.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Mapping, Optional, Sequence, Tuple, Union

import torch

from sah.attention import ResearchAttention, ResearchAttentionConfig
from sah.inmodel.protocol import InModelValidator, check_protocol
from sah.inmodel.results import DenseResult, PairResult, ValidationResults
from sah.recording.texts import TEXT_NAMES, load_text, parse_text_spec

ModelArg = Union[None, str, Tuple[Any, Any]]


def _default_context(model: ModelArg) -> Optional[int]:
    if model is None or model == "default":
        from sah.recording.embedded import MAX_TOKENS

        return MAX_TOKENS
    if model == "gemma-3-270m":
        from sah.recording.gemma_model import GEMMA_MAX_TOKENS
        return GEMMA_MAX_TOKENS
    return None


def _model_id(model: Any) -> str:
    return str(getattr(model.config, "_name_or_path", "") or type(model).__name__)


def validate_configs(configs: Mapping[str, ResearchAttentionConfig], texts: Sequence[str],
                     tokens: int, positions: int, model: ModelArg = None,
                     device: Optional[str] = None,
                     progress: Optional[Callable[[str], None]] = None,
                     where: Tuple[str, str, str] = ("--tokens", "--positions", "--text"),
                     on_result: Optional[Callable[[PairResult], None]] = None,
                     ) -> ValidationResults:
    """Validate each config on each text with the in-model protocol (:mod:`sah.inmodel.protocol`).

    ``configs``: name -> chain config (the name is reported as ``config``, e.g. the file as
    given). ``texts``: text specs (``docs``, ``prose@4096``, a file). ``model``: None or
    ``"default"`` (the embedded SmolLM2-135M), a local model path, or an already loaded
    ``(model, tokenizer)`` in float32. ``device`` (default: the loaded model's, else cpu).
    ``where`` names the inputs in error messages (CLI flags or a study's YAML paths).
    ``on_result`` is called with each :class:`PairResult` as soon as it is measured (a
    study writes it at once, so an interrupted validation keeps what it finished).
    """
    wt, wp, wx = where
    if not configs:
        raise ValueError("no config to validate; give at least one chain config")
    if not texts:
        raise ValueError(f"{wx}: no text given; name one ({', '.join(TEXT_NAMES)}) "
                         f"or give a UTF-8 text file")
    check_protocol(tokens, positions, _default_context(model), (wt, wp),
                   "the embedded model" if isinstance(model, (str, type(None))) else "the model")
    for spec in texts:  # fail fast: unknown names, missing or non-UTF-8 files
        load_text(parse_text_spec(spec, wx).text, wx)
    attentions = {name: ResearchAttention.create_from_config(cfg) for name, cfg in configs.items()}

    say = progress or (lambda message: None)
    start = time.perf_counter()
    if isinstance(model, tuple):
        loaded, tokenizer = model
        model_seconds = 0.0
    else:
        from sah.recording.default_model import load_model

        loaded, tokenizer = load_model(model or "default", device=device or "cpu")
        if next(loaded.parameters()).dtype != torch.float32:  # GGUF is dequantised to float32
            loaded = loaded.float()
        model_seconds = time.perf_counter() - start
        say(f"loaded the model in {model_seconds:.0f} s")
    if device is not None and torch.device(device) != next(loaded.parameters()).device:
        loaded = loaded.to(device)
    validator = InModelValidator(loaded, tokenizer, tokens, positions, (wt, wp))
    windows = [validator.window(spec, wx) for spec in texts]  # all checked before any pass

    results = ValidationResults(model=_model_id(loaded), tokens=tokens, positions=positions,
                                device=str(validator.device), model_seconds=model_seconds)
    for window in windows:
        reference = validator.dense(window)
        nll = reference.dense_distribution().nll
        results.dense.append(DenseResult(window.text, window.text_name, window.sha256,
                                         window.start, window.end, reference.seconds, nll))
        say(f"{window.text}: dense pass {reference.seconds:.1f} s")
        for name, attention in attentions.items():
            figures = validator.sparse(reference, attention)
            pair = PairResult(name, window.text, window.sha256, window.start, window.end,
                              figures)
            results.pairs.append(pair)
            if on_result is not None:
                on_result(pair)
            say(f"{window.text}: {name}: kl {figures.kl:.4g}, density {figures.density:.4f} "
                f"({figures.seconds:.1f} s)")
    return results
