"""``validate.tasks``: needle-in-a-haystack retrieval of a study's picks inside the model.

```yaml
validate:
  texts: [docs@16384]          # KL validation (may be left out when tasks are given)
  picks: [best, density_0.1]
  tasks:                       # sah.inmodel.retrieval; docs/retrieval.md
    - {task: passkey, lengths: [2048], samples: 10, picks: [density_0.1]}
    - {task: niah, lengths: [8192], samples: 10, text: docs@16384}
```

``task``: ``passkey``, ``niah`` or ``niah_multikey``; ``lengths``: prompt lengths in
tokens (an int or a list, each at most the embedded model's 8192); ``samples``: needles
per length at depths evenly spaced from 5% to 95% (default 10); ``text``: the haystack of
the niah tasks (default ``docs``; not for ``passkey``); ``picks``: which of the
section's picks run the task (default: all of them). Lengths too short for the task's
needle and question, or longer than the haystack text, are refused when the study is
checked against its recordings (:func:`check_task_lengths`, with the tokenizer).
"""

from __future__ import annotations

from typing import Any, List, Sequence

from sah.infra.checks import ConfigError, short_repr
from sah.study.spec import RetrievalTaskSpec

TASK_KEYS = ("task", "lengths", "samples", "text", "picks")
DEFAULT_SAMPLES = 10


def _check(cond: bool, path: str, message: str) -> None:
    if not cond:
        raise ConfigError(f"{path}: {message}")


def parse_tasks(data: Any, picks: Sequence[str]) -> List[RetrievalTaskSpec]:
    """The ``validate.tasks`` list (``picks``: the section's resolved picks)."""
    from sah.inmodel.retrieval.tasks import TASKS, TEXT_TASKS
    from sah.recording.embedded import MAX_TOKENS
    from sah.recording.texts import load_text, parse_text_spec

    if data is None:
        return []
    _check(isinstance(data, list) and bool(data), "validate.tasks",
           f"got {short_repr(data)}; expected a non-empty list such as "
           f"[{{task: passkey, lengths: [2048], samples: 10}}]")
    out: List[RetrievalTaskSpec] = []
    for i, entry in enumerate(data):
        where = f"validate.tasks[{i}]"
        _check(isinstance(entry, dict), where,
               f"got {short_repr(entry)}; expected a mapping {{task: passkey, lengths: [2048]}}")
        unknown = sorted(set(map(str, entry)) - set(TASK_KEYS))
        _check(not unknown, f"{where}.{unknown[0]}" if unknown else where,
               f"unknown key; a task takes {', '.join(TASK_KEYS)}")
        task = entry.get("task")
        _check(task in TASKS, f"{where}.task",
               f"got {short_repr(task)}; the tasks are {', '.join(TASKS)}")
        lengths = entry.get("lengths")
        lengths = [lengths] if isinstance(lengths, int) and not isinstance(lengths, bool) else lengths
        _check(isinstance(lengths, list) and bool(lengths), f"{where}.lengths",
               f"got {short_repr(entry.get('lengths'))}; expected prompt lengths in tokens, "
               f"e.g. [2048]")
        for j, n in enumerate(lengths):
            _check(not isinstance(n, bool) and isinstance(n, int) and 1 <= n <= MAX_TOKENS,
                   f"{where}.lengths[{j}]", f"got {short_repr(n)}; expected an int from 1 to "
                   f"{MAX_TOKENS} (the embedded model's context)")
            _check(n not in lengths[:j], f"{where}.lengths[{j}]",
                   f"got {n} again; list each length once")
        samples = entry.get("samples", DEFAULT_SAMPLES)
        _check(not isinstance(samples, bool) and isinstance(samples, int) and samples >= 1,
               f"{where}.samples", f"got {short_repr(samples)}; expected an int >= 1 (needles "
               f"per length)")
        text = entry.get("text")
        if text is not None:
            _check(task in TEXT_TASKS, f"{where}.text",
                   f"{task} uses its own filler; only {', '.join(TEXT_TASKS)} take a text")
            _check(isinstance(text, str) and text.strip() != "", f"{where}.text",
                   f"got {short_repr(text)}; expected a text name (docs, code, prose, manual), "
                   f"NAME@START or a UTF-8 file")
            try:
                load_text(parse_text_spec(text, f"{where}.text").text, f"{where}.text")
            except (ValueError, FileNotFoundError) as exc:
                raise ConfigError(str(exc)) from None
        chosen = entry.get("picks", list(picks))
        _check(isinstance(chosen, list) and bool(chosen), f"{where}.picks",
               f"got {short_repr(chosen)}; expected a non-empty list from {', '.join(picks)}")
        for j, pick in enumerate(chosen):
            _check(pick in picks and pick not in chosen[:j], f"{where}.picks[{j}]",
                   f"got {short_repr(pick)}; give each once, from validate.picks "
                   f"({', '.join(picks)})")
        key = (task, text)
        _check(key not in [(t.task, t.text) for t in out], where,
               f"task {task} is listed twice; give all its lengths in one entry")
        out.append(RetrievalTaskSpec(task, [int(n) for n in lengths], samples, text,
                                     [str(p) for p in chosen]))
    return out


def check_task_lengths(source: str, tasks: Sequence[RetrievalTaskSpec], tokenizer: Any) -> None:
    """Each length holds the task's needle(s) and question, and fits its haystack text."""
    from sah.inmodel.retrieval.tasks import TaskBuilder

    for i, spec in enumerate(tasks):
        where = f"{source}: validate.tasks[{i}]"
        builder = TaskBuilder(spec.task, tokenizer, spec.text, 0,
                              (f"{where}.task", f"{where}.lengths", f"{where}.text"))
        for n in spec.lengths:
            try:
                builder.check_tokens(n)
            except (ValueError, FileNotFoundError) as exc:
                raise ConfigError(str(exc)) from None
