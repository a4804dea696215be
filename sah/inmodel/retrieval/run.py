""":func:`validate_retrieval`: configs x tasks x prompt lengths, with one model load and one
dense prefill per sample shared by the dense baseline and every config.

Everything that can be checked before the model runs is checked first (task names,
sample count, lengths against the model's context and the task's needle and question,
the haystack text): bad input raises ``ValueError`` / ``FileNotFoundError`` with one line
naming the flag or field, the value and the fix, before any forward pass.
"""

from __future__ import annotations

import time
from typing import Any, Callable, List, Mapping, Optional, Sequence, Tuple, Union

import torch

from sah.attention import ResearchAttention, ResearchAttentionConfig
from sah.inmodel.protocol import model_context
from sah.inmodel.retrieval.decode import MAX_NEW_TOKENS, Answerer
from sah.inmodel.retrieval.results import (DENSE, DENSE_FLOOR, RetrievalEntry, RetrievalResults,
                                           SampleAnswer, entry_of)
from sah.inmodel.retrieval.tasks import TaskBuilder, check_task

ModelArg = Union[None, str, Tuple[Any, Any]]
#: Names of the inputs in error messages: task, tokens, text, samples, config.
CLI_WHERE = ("--task", "--tokens", "--text", "--samples", "--config")


def check_samples(samples: Any, where: str = "--samples") -> int:
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"{where}: got {samples!r}; give at least 1 sample (one needle depth "
                         f"each, evenly spaced from 5% to 95%)")
    return samples


def check_inputs(configs: Mapping[str, Any], tasks: Sequence[str], lengths: Sequence[int],
                 samples: int, where: Sequence[str] = CLI_WHERE) -> None:
    """What needs no tokenizer: task names, sample count, lengths given, config names."""
    wtask, wtok, _, wsam, wcfg = where
    if not tasks:
        raise ValueError(f"{wtask}: no task given; name one of passkey, niah, niah_multikey")
    for task in tasks:
        check_task(task, wtask)
    if not lengths:
        raise ValueError(f"{wtok}: no prompt length given; give one, e.g. 2048")
    for flag, values in ((wtask, list(tasks)), (wtok, list(lengths))):
        repeated = sorted({str(v) for v in values if values.count(v) > 1})
        if repeated:
            raise ValueError(f"{flag} {repeated[0]} is given twice; give each once")
    for tokens in lengths:
        if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1:
            raise ValueError(f"{wtok}: got {tokens!r}; expected a positive int (prompt tokens)")
    check_samples(samples, wsam)
    if DENSE in configs:
        raise ValueError(f"{wcfg}: the name {DENSE!r} is the dense baseline's; name the "
                         f"config otherwise")


def _load(model: ModelArg, device: Optional[str]) -> Tuple[Any, Any, float]:
    if isinstance(model, tuple):
        loaded, tokenizer = model
        seconds = 0.0
    else:
        from sah.recording.default_model import load_model

        start = time.perf_counter()
        loaded, tokenizer = load_model(model or "default", device=device or "cpu")
        seconds = time.perf_counter() - start
    if next(loaded.parameters()).dtype != torch.float32:  # GGUF is dequantised to float32
        loaded = loaded.float()
    if device is not None and torch.device(device) != next(loaded.parameters()).device:
        loaded = loaded.to(device)
    return loaded, tokenizer, seconds


def _tokenizer_only(model: ModelArg) -> Any:
    """The tokenizer without the weights where that is cheap (the embedded model)."""
    if isinstance(model, tuple):
        return model[1]
    if model is None or model == "default":
        from sah.recording.default_model import load_default_tokenizer

        return load_default_tokenizer()
    return None


def validate_retrieval(configs: Mapping[str, ResearchAttentionConfig], tasks: Sequence[str],
                       lengths: Sequence[int], samples: int, text: Optional[str] = None,
                       model: ModelArg = None, device: Optional[str] = None, seed: int = 0,
                       progress: Optional[Callable[[str], None]] = None,
                       where: Sequence[str] = CLI_WHERE,
                       on_entry: Optional[Callable[[RetrievalEntry], None]] = None,
                       max_new_tokens: int = MAX_NEW_TOKENS) -> RetrievalResults:
    """Retrieval accuracy of the dense baseline and each config on each task and length.

    ``configs``: name -> chain config (``dense`` is reserved for the baseline). ``model``:
    None / ``"default"`` (the embedded SmolLM2-135M), a local model path, or a loaded
    ``(model, tokenizer)``. ``text``: the haystack of the niah tasks (default ``docs``).
    Per (task, tokens) the dense baseline runs on every sample; when it fails more than
    ``1 - DENSE_FLOOR`` of them the configs are not run on the remaining samples and
    their entries are unscored ("the model itself cannot do this task at this length").
    ``on_entry`` gets each entry as soon as it is complete.
    """
    check_inputs(configs, tasks, lengths, samples, where)
    builders = {task: TaskBuilder(task, None, text, seed, (where[0], where[1], where[2]))
                for task in tasks}
    attentions = {name: ResearchAttention.create_from_config(cfg) for name, cfg in configs.items()}
    from sah.recording.embedded import MAX_TOKENS

    default = model is None or model == "default"
    tokenizer = _tokenizer_only(model)
    if tokenizer is not None:  # checked before the weights load
        context = MAX_TOKENS if default else model_context(model[0])
        for builder in builders.values():
            builder.tokenizer = tokenizer
            for tokens in lengths:
                builder.check_tokens(tokens, context,
                                     "the embedded model" if default else "the model")
    say = progress or (lambda message: None)
    loaded, tokenizer, model_seconds = _load(model, device)
    if model_seconds:
        say(f"loaded the model in {model_seconds:.0f} s")
    for builder in builders.values():
        builder.tokenizer = tokenizer
        for tokens in lengths:
            builder.check_tokens(tokens, model_context(loaded))
    answerer = Answerer(loaded, tokenizer, max_new_tokens)
    results = RetrievalResults(str(getattr(loaded.config, "_name_or_path", "") or
                                   type(loaded).__name__), str(answerer.device),
                               max_new_tokens, seed, model_seconds=model_seconds)
    for task, builder in builders.items():
        for tokens in lengths:
            _run_group(answerer, builder, tokens, samples, attentions, results, say, on_entry)
    return results


def _run_group(answerer: Answerer, builder: TaskBuilder, tokens: int, samples: int,
               attentions: Mapping[str, ResearchAttention], results: RetrievalResults,
               say: Callable[[str], None],
               on_entry: Optional[Callable[[RetrievalEntry], None]]) -> None:
    task = builder.task
    answers: dict = {name: [] for name in [DENSE, *attentions]}
    prefill_seconds = 0.0
    allowed_failures = int((1 - DENSE_FLOOR) * samples + 1e-9)
    for sample in builder.samples(tokens, samples):
        start = time.perf_counter()
        cache = answerer.prefill(sample)
        prefill_seconds += time.perf_counter() - start
        failed = sum(not a.passed for a in answers[DENSE])
        names: List[Tuple[str, Optional[ResearchAttention]]] = [(DENSE, None)]
        if failed <= allowed_failures:
            names += list(attentions.items())
        for name, attention in names:
            answer = answerer.answer(sample, cache, attention)
            answers[name].append(SampleAnswer(name, task, tokens, sample.index, sample.depth,
                                              sample.position, sample.value, answer.text,
                                              answer.passed, answer.seconds))
        del cache
        say(f"{task} {tokens} sample {sample.index + 1}/{samples} (depth {sample.depth:.2f}): "
            + ", ".join(f"{n} {'pass' if answers[n][-1].passed else 'fail'}"
                        for n, _ in names))
    dense = entry_of(DENSE, task, tokens, samples, answers[DENSE])
    scored = dense.accuracy >= DENSE_FLOOR
    entries = [dense] + [entry_of(name, task, tokens, samples, answers[name], scored)
                         for name in attentions]
    for entry in entries:
        results.entries.append(entry)
        if on_entry is not None:
            on_entry(entry)
    for name in [DENSE, *attentions]:
        results.answers.extend(answers[name])
    results.prefill.append({"task": task, "tokens": tokens, "samples": samples,
                            "seconds_per_sample": prefill_seconds / samples})
