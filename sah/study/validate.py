"""A study's ``validate:`` section: which tuned picks run inside the model after tuning.

```yaml
validate:
  texts: [code@16384]      # held-out text specs (sah.recording.texts): NAME, NAME@START, FILE
  tokens: 2048             # the protocol's window (sah.inmodel.protocol), at most 8192
  positions: 128           # last positions run sparse, 1 <= positions <= tokens - 1
  picks: [density_0.1]     # default: every pick: best and density_<t> for each density target
  model: default           # default (SmolLM2), gemma-3-270m, or a local model folder / .gguf
```

After tuning, each chain's chosen picks (``best``: ``tuned/<chain>.yaml``; ``density_<t>``:
``tuned/<chain>.density_<t>.yaml``) run inside the embedded model with
:func:`sah.inmodel.validate_configs` (:mod:`sah.tuning.steps.validation`), or inside
``model`` when given (``gemma-3-270m``: up to 32768 tokens; see ``docs/models.md``).

Checked with the rest of the study (:func:`parse_validate_section`: every field, texts
existing, picks naming the study's density targets) and, before the run folder exists,
against the study's recordings (:func:`check_validate_texts`): a validation window
``[START, START + tokens + 1)`` of a text must not overlap the token span of any scored or
fit recording of the same text (same sha256), and must fit in its text. Every refusal is
one :class:`~sah.infra.checks.ConfigError` line naming the YAML path, the value and the fix.
"""

from __future__ import annotations

from typing import Any, List, Optional, Sequence, Tuple

from sah.infra.checks import ConfigError, short_repr
from sah.study.fit_options import fitted_layers
from sah.study.spec import DEFAULT_VALIDATE_POSITIONS, DEFAULT_VALIDATE_TOKENS, ValidateSection

KEYS = ("texts", "tokens", "positions", "picks", "model", "tasks")
BEST = "best"


def pick_name(target: float) -> str:
    """The pick of a density target: ``density_0.1`` (as in ``tuned/<chain>.density_0.1.yaml``)."""
    return f"density_{target:g}"


def all_picks(density_targets: Sequence[float]) -> List[str]:
    return [BEST] + [pick_name(t) for t in density_targets]


def _check(cond: bool, path: str, message: str) -> None:
    if not cond:
        raise ConfigError(f"{path}: {message}")


def parse_validate_section(data: Any, density_targets: Sequence[float]) -> Optional[ValidateSection]:
    """The ``validate`` value of a study (None: no validation)."""
    if data is None:
        return None
    _check(isinstance(data, dict), "validate",
           f"got {short_repr(data)}; expected a mapping {{texts: [code@16384], tokens: 2048, "
           f"positions: 128, picks: [...]}} or null")
    unknown = sorted(set(map(str, data)) - set(KEYS))
    _check(not unknown, f"validate.{unknown[0]}" if unknown else "validate",
           f"unknown key; validate takes {', '.join(KEYS)}")
    texts = data.get("texts", [] if data.get("tasks") else None)
    _check(isinstance(texts, list) and (bool(texts) or "texts" not in data), "validate.texts",
           f"got {short_repr(texts)}; expected a non-empty list of held-out texts (docs, code, "
           f"prose, NAME@START, or a UTF-8 file), e.g. [code@16384] (leave it out when "
           f"validate.tasks is given)")
    from sah.recording.texts import load_text, parse_text_spec
    for i, spec in enumerate(texts):
        where = f"validate.texts[{i}]"
        _check(isinstance(spec, str) and spec.strip() != "", where,
               f"got {short_repr(spec)}; expected a text name (docs, code, prose), NAME@START or "
               f"a UTF-8 file")
        _check(spec not in texts[:i], where,
               f"got {short_repr(spec)} again (validate.texts[{texts.index(spec)}]); list each "
               f"text once")
        try:
            load_text(parse_text_spec(spec, where).text, where)
        except (ValueError, FileNotFoundError) as exc:
            raise ConfigError(str(exc)) from None
    tokens = data.get("tokens", DEFAULT_VALIDATE_TOKENS)
    positions = data.get("positions", DEFAULT_VALIDATE_POSITIONS)
    model = data.get("model", "default")
    _check(isinstance(model, str) and model.strip() != "", "validate.model",
           f"got {short_repr(model)}; expected default, gemma-3-270m or a local model folder "
           f"or .gguf file")
    from sah.inmodel.protocol import check_protocol
    from sah.recording.embedded import MAX_TOKENS
    from sah.recording.gemma_model import GEMMA_MAX_TOKENS, GEMMA_NAME
    context = {"default": MAX_TOKENS, GEMMA_NAME: GEMMA_MAX_TOKENS}.get(model)
    try:
        check_protocol(tokens, positions, context, ("validate.tokens", "validate.positions"),
                       "the embedded model" if model == "default" else f"model {model}")
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    known = all_picks(density_targets)
    picks = data.get("picks", known)
    _check(isinstance(picks, list) and bool(picks), "validate.picks",
           f"got {short_repr(picks)}; expected a non-empty list of picks from {', '.join(known)}")
    for i, pick in enumerate(picks):
        _check(pick in known, f"validate.picks[{i}]",
               f"got {short_repr(pick)}; the study's picks are {', '.join(known)} (density_<t> "
               f"for each of density_targets)")
        _check(pick not in picks[:i], f"validate.picks[{i}]",
               f"got {short_repr(pick)} again; list each pick once")
    from sah.study.retrieval_tasks import parse_tasks
    tasks = parse_tasks(data.get("tasks"), [str(p) for p in picks])
    return ValidateSection([str(t) for t in texts], tokens, positions, [str(p) for p in picks],
                           model, tasks)


# ---------------------------------------------------------------- against the recordings
def text_window(spec: str, tokens: int, where: str) -> Tuple[str, int, int]:
    """``(text sha256, start, end)`` of the validation window (targets included)."""
    from sah.inmodel.protocol import window_span
    try:
        return window_span(spec, tokens, where)
    except (ValueError, FileNotFoundError) as exc:
        raise ConfigError(str(exc)) from None


def _refuse_overlap(source: str, i: int, spec: str, span: Tuple[str, int, int], rec_where: str,
                    rec_label: str, rec_span: Tuple[str, int, int], tokens: int) -> None:
    from sah.recording.texts import spans_overlap
    if not spans_overlap(span, rec_span):
        return
    raise ConfigError(
        f"{source}: validate.texts[{i}]: {spec!r} (tokens [{span[1]}, {span[2]}) of text sha256 "
        f"{span[0][:12]}..., {tokens} + 1 ids) overlaps the recording {rec_where} {rec_label} "
        f"(tokens [{rec_span[1]}, {rec_span[2]})); validate on held-out text: another text or a "
        f"start past {rec_span[2]} (e.g. {spec.split('@')[0]}@{max(rec_span[2], 16384)})")


def check_validate_names(study: Any) -> None:
    """Validation windows against the spans embedded recording names stand for, before
    any recording is made."""
    section = getattr(study, "validate", None)
    if section is None:
        return
    from sah.study.recordings import _span_of_name, recording_labels
    named = ([(f"recordings[{i}]", lb, n) for i, (lb, n) in
              enumerate(zip(recording_labels(study.recordings), study.recordings))]
             + [(f"fit_recordings[{i}]", lb, n) for i, (lb, n) in
                enumerate(zip(recording_labels(study.fit_recordings), study.fit_recordings))])
    for i, spec in enumerate(section.texts):
        span = text_window(spec, section.tokens, f"{study.source}: validate.texts[{i}]")
        for where, label, name in named:
            rec_span = _span_of_name(name)
            if rec_span is not None:
                _refuse_overlap(study.source, i, spec, span, where, label, rec_span,
                                section.tokens)


def check_validate_texts(study: Any, sets: Any) -> None:
    """Validation windows against every loaded scored and fit recording, and each window
    fitting in its text (the text is tokenised with the embedded model's tokenizer)."""
    section = getattr(study, "validate", None)
    if section is None:
        return
    recordings = list(sets.scored) + list(sets.fit)
    for i, spec in enumerate(section.texts):
        span = text_window(spec, section.tokens, f"{study.source}: validate.texts[{i}]")
        for r in recordings:
            meta = r.recording.metadata or {}
            if r.span is None:
                if meta.get("model_id") == "synthetic":
                    continue  # random tensors: no text to overlap
                raise ConfigError(
                    f"{study.source}: validate.texts[{i}]: the recording {r.where} ({r.label}) "
                    f"stores no text span, so {spec!r} cannot be checked to be held out; "
                    f"re-record it with `sah record` (which stores the span) or drop validate")
            _refuse_overlap(study.source, i, spec, span, r.where, r.label, r.span,
                            section.tokens)
    check_text_lengths(study)


def check_text_lengths(study: Any) -> None:
    """Each validation window fits in its text (``tokens + 1`` ids from ``START``)."""
    from sah.recording.default_model import load_default_tokenizer, load_tokenizer
    from sah.recording.texts import load_text, parse_text_spec, token_window
    section = study.validate
    model = getattr(section, "model", "default")
    try:
        tokenizer = load_default_tokenizer() if model == "default" else load_tokenizer(model)
    except (ValueError, FileNotFoundError) as exc:
        raise ConfigError(f"{study.source}: validate.model: {exc}") from None
    from sah.study.retrieval_tasks import check_task_lengths
    check_task_lengths(study.source, section.tasks, tokenizer)
    for i, spec in enumerate(section.texts):
        where = f"{study.source}: validate.texts[{i}]"
        parsed = parse_text_spec(spec, where)
        try:
            token_window(tokenizer, load_text(parsed.text, where), parsed.start,
                         section.tokens + 1, where)
        except ValueError as exc:
            raise ConfigError(f"{exc} (validate.tokens {section.tokens} + 1 target)") from None


def check_validate_layers(study: Any, sets: Any) -> None:
    """HashAttention weights for every layer of the validation model: in-model validation
    applies each chain in all of the model's layers, and a HashAttention chain needs hash
    weights fitted for each of them, so a fit on a subset of layers would fail after tuning
    (minutes into the run). Refused here, before the run folder exists."""
    section = getattr(study, "validate", None)
    if section is None or not study.fit_hash_attention:
        return
    hashed = [c.name for c in study.chains
              if any(m.config_class.__name__ == "HashAttentionTopKMaskerConfig"
                     for m in c.maskers)]
    if not hashed:
        return
    fitted = fitted_layers(study) or sets.fit_or_scored[0].recording.layer_ids
    from sah.recording.default_model import model_num_layers
    try:
        num_layers = model_num_layers(section.model)
    except ValueError as exc:
        raise ConfigError(f"{study.source}: validate.model: {exc}") from None
    missing = sorted(set(range(num_layers)) - {int(x) for x in fitted})
    if not missing:
        return
    where = ("fit_hash_attention.layers" if study.fit_hash_attention.get("layers") else
             f"{'fit_recordings' if study.fit_recordings else 'recordings'}[0] "
             f"({sets.fit_or_scored[0].label})")
    raise ConfigError(
        f"{study.source}: validate: chain {hashed[0]!r} runs HashAttention in all "
        f"{num_layers} layers of model {section.model!r}, but the hash weights are fitted on "
        f"layers {_layer_list(fitted)} (from {where}), missing {_layer_list(missing)}; fit "
        f"every layer (record the fit recording with `sah record --layers all`; leave "
        f"fit_hash_attention.layers unset) or drop validate")


def _layer_list(layers: Sequence[int]) -> str:
    shown = [int(x) for x in layers]
    return str(shown) if len(shown) <= 8 else f"[{', '.join(map(str, shown[:6]))}, ...] ({len(shown)})"
