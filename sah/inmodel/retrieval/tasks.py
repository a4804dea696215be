"""Needle-in-a-haystack tasks, generated locally: seeded, no downloads.

Three tasks (:data:`TASKS`):

- ``passkey``: a 5-digit pass key in a repeated filler ("The grass is green. ..."); the
  needle is " The pass key is N. Remember it. N is the pass key."; the question
  " What is the pass key? The pass key is";
- ``niah``: one needle in natural text, RULER style: " One of the special magic numbers
  for {key} is: {number}." (a 7-digit number, a two-word key such as ``quiet-harbor``);
  the question " What is the special magic number for {key} mentioned in the provided
  text? The special magic number for {key} mentioned in the provided text is:". The
  haystack is a text of :mod:`sah.recording.texts` (``docs``, ``code``, ``prose``,
  ``manual``, ``NAME@START``) or a UTF-8 file; every sample takes its first tokens;
- ``niah_multikey``: ``niah`` plus 3 distractor needles, the same sentence for 3 other
  keys with their own numbers, at seeded positions.

A sample's prompt is exactly ``tokens`` token ids (tokenised without special tokens):
the context (haystack with the needle(s) inserted) followed by the question. Sample ``i``
of ``N`` puts its needle at depth ``0.05 + 0.9 * i / (N - 1)`` of the context (one sample:
0.5), at the sentence boundary of the haystack nearest to that depth (a position after a
token ending in ``.``, ``!``, ``?`` or a newline; the context's start or end if there is
none). Values, keys and distractor positions come from ``random.Random`` seeded by the
string ``"{seed}/{task}/{tokens}/{i}"``, so a sample is the same on every machine.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, List, Optional, Sequence

import torch

from sah.recording.texts import load_text, parse_text_spec, token_window

TASKS = ("passkey", "niah", "niah_multikey")
#: Tasks whose haystack is a text (``--text``); ``passkey`` uses its own filler.
TEXT_TASKS = ("niah", "niah_multikey")
DEFAULT_TEXT = "docs"
FILLER = " The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
DISTRACTORS = 3
#: Haystack tokens a prompt keeps at least, beside its needle(s) and question.
MIN_HAYSTACK = 16
_FIRST = ("amber", "quiet", "silver", "hollow", "rapid", "gentle", "crimson", "frozen", "lucky",
          "bitter", "golden", "hidden", "narrow", "ancient", "bright", "distant", "humble",
          "wooden", "velvet", "restless")
_SECOND = ("harbor", "falcon", "lantern", "meadow", "canyon", "orchard", "compass", "glacier",
           "pebble", "thunder", "violin", "garden", "beacon", "island", "marble", "pillow",
           "saddle", "tunnel", "willow", "cobalt")
_BOUNDARY_ENDS = (".", "!", "?", "\u010a")  # byte-level BPE writes a newline as U+010A


def check_task(task: Any, where: str = "--task") -> str:
    if task not in TASKS:
        raise ValueError(f"{where}: got {task!r}; the tasks are {', '.join(TASKS)}")
    return task


def depths(samples: int) -> List[float]:
    """The ``samples`` needle depths: evenly spaced from 0.05 to 0.95 (one sample: 0.5)."""
    if samples == 1:
        return [0.5]
    return [round(0.05 + 0.9 * i / (samples - 1), 6) for i in range(samples)]


@dataclass
class Sample:
    """One prompt: ``ids`` ``(1, tokens)``, the first ``context`` of them the haystack with
    the needle(s), the rest the question; ``value`` is what the answer must contain."""

    task: str
    index: int
    depth: float           # nominal depth of the needle in the context (0..1)
    position: int          # token offset of the needle in the prompt
    value: str
    key: str               # the needle's key ("pass key" for passkey)
    context: int
    ids: torch.Tensor = field(repr=False)

    @property
    def tokens(self) -> int:
        return int(self.ids.shape[1])

    def passed(self, answer: str) -> bool:
        return self.value in answer


class TaskBuilder:
    """Makes the samples of one task for one tokenizer; ``text`` is the haystack spec of
    the niah tasks (default ``docs``), ignored by ``passkey``."""

    def __init__(self, task: str, tokenizer: Any, text: Optional[str] = None,
                 seed: int = 0, where: Sequence[str] = ("--task", "--tokens", "--text")) -> None:
        self.task = check_task(task, where[0])
        self.tokenizer = tokenizer
        self.seed = seed
        self.where = tuple(where)
        self.text = (text or DEFAULT_TEXT) if task in TEXT_TASKS else None
        if self.text is not None:  # fail fast: unknown names, missing or non-UTF-8 files
            parsed = parse_text_spec(self.text, where[2])
            self._text = load_text(parsed.text, where[2])
            self._start = parsed.start

    def encode(self, text: str) -> List[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    # ------------------------------------------------------------------ pieces
    def _rng(self, tokens: int, index: int) -> random.Random:
        return random.Random(f"{self.seed}/{self.task}/{tokens}/{index}")

    @staticmethod
    def _key(rng: random.Random, avoid: Sequence[str] = ()) -> str:
        while True:
            key = f"{rng.choice(_FIRST)}-{rng.choice(_SECOND)}"
            if key not in avoid:
                return key

    def _needle(self, key: str, value: str) -> List[int]:
        if self.task == "passkey":
            return self.encode(f" The pass key is {value}. Remember it. {value} is the pass key.")
        return self.encode(f" One of the special magic numbers for {key} is: {value}.")

    def _question(self, key: str) -> List[int]:
        if self.task == "passkey":
            return self.encode(" What is the pass key? The pass key is")
        return self.encode(f" What is the special magic number for {key} mentioned in the "
                           f"provided text? The special magic number for {key} mentioned in "
                           f"the provided text is:")

    def longest_fixed(self) -> int:
        """The most tokens a sample's needle(s) and question can take (the longest key)."""
        key = max((f"{a}-{b}" for a in _FIRST for b in _SECOND),
                  key=lambda k: len(self.encode(k)))
        value = "8" * (5 if self.task == "passkey" else 7)
        needles = 1 + (DISTRACTORS if self.task == "niah_multikey" else 0)
        return needles * len(self._needle(key, value)) + len(self._question(key))

    def min_tokens(self) -> int:
        return self.longest_fixed() + MIN_HAYSTACK

    def check_tokens(self, tokens: int, context: Optional[int] = None,
                     model_label: str = "the model") -> None:
        """Refuse a prompt length the task cannot use: one line naming the flag and fix."""
        wt = self.where[1]
        if isinstance(tokens, bool) or not isinstance(tokens, int):
            raise ValueError(f"{wt}: got {tokens!r}; expected an int")
        if context is not None and tokens > context:
            raise ValueError(f"{wt}: got {tokens}; {model_label} has {context} positions: use "
                             f"{wt} {context} or fewer")
        low = self.min_tokens()
        if tokens < low:
            raise ValueError(f"{wt}: got {tokens}; a {self.task} prompt needs at least {low} "
                             f"tokens to hold its needle(s), question and {MIN_HAYSTACK} "
                             f"haystack tokens: use {wt} {low} or more")
        if self.text is not None:
            try:
                token_window(self.tokenizer, self._text, self._start, tokens,
                             f"{self.where[2]} {self.text}")
            except ValueError:
                raise ValueError(
                    f"{self.where[2]}: {self.text} is shorter than a {tokens}-token {self.task} "
                    f"prompt (its haystack needs up to {tokens} tokens from token "
                    f"{self._start}); give a longer text or lower {wt}") from None

    def haystack(self, count: int) -> List[int]:
        if self.task == "passkey":
            unit = self.encode(FILLER)
            return (unit * (count // len(unit) + 1))[:count]
        return token_window(self.tokenizer, self._text, self._start, count,
                            f"{self.where[2]} {self.text}")[0].tolist()

    def boundaries(self, ids: Sequence[int]) -> torch.Tensor:
        """Positions ``p`` in ``[0, len(ids)]`` where a needle may start: after a token
        ending a sentence or a line, and both ends."""
        pieces = self.tokenizer.convert_ids_to_tokens(list(ids))
        ends = [0] + [i + 1 for i, piece in enumerate(pieces)
                      if isinstance(piece, str) and piece.endswith(_BOUNDARY_ENDS)]
        return torch.tensor(sorted(set(ends) | {len(ids)}), dtype=torch.int64)

    # ------------------------------------------------------------------ samples
    def samples(self, tokens: int, count: int) -> List[Sample]:
        """The ``count`` samples of a ``tokens``-long prompt (checked first)."""
        self.check_tokens(tokens)
        hay_full = self.haystack(tokens)
        out = []
        for index, depth in enumerate(depths(count)):
            rng = self._rng(tokens, index)
            digits = 5 if self.task == "passkey" else 7
            value = str(rng.randrange(10 ** (digits - 1), 10 ** digits))
            key = "pass key" if self.task == "passkey" else self._key(rng)
            needle = self._needle(key, value)
            others: List[List[int]] = []
            if self.task == "niah_multikey":
                used = [key]
                for _ in range(DISTRACTORS):
                    used.append(self._key(rng, used))
                    others.append(self._needle(used[-1], str(rng.randrange(10 ** 6, 10 ** 7))))
            question = self._question(key)
            context = tokens - len(question)
            hay = hay_full[:context - len(needle) - sum(map(len, others))]
            bounds = self.boundaries(hay)
            main = int(bounds[(bounds - depth * len(hay)).abs().argmin()])
            inserts = [(main, 0, needle)]
            for j, other in enumerate(others):
                inserts.append((int(bounds[rng.randrange(len(bounds))]), j + 1, other))
            inserts.sort(key=lambda item: (item[0], item[1]))
            ids: List[int] = []
            last, position = 0, -1
            for at, order, piece in inserts:
                ids += hay[last:at]
                last = at
                if order == 0:
                    position = len(ids)
                ids += piece
            ids += hay[last:] + question
            if len(ids) != tokens:
                raise RuntimeError(f"{self.task} prompt has {len(ids)} tokens; expected {tokens}")
            out.append(Sample(self.task, index, depth, position, value, key, context,
                              torch.tensor([ids], dtype=torch.int64)))
        return out
