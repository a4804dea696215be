"""Text to record from: a user's file or the default corpus (offline, real prose).

The default corpus is the Python documentation topics that ship with every Python
(``pydoc_data.topics``: the language reference's prose, about 465 K characters in Python
3.11), concatenated in sorted topic order, separated by blank lines. It is deterministic
for a given Python version; recordings store the text's sha256.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Optional, Tuple


def default_corpus_text() -> Tuple[str, str]:
    """``(text, source description)`` of the default corpus (the named text ``docs``)."""
    from sah.recording.texts import load_text

    text = load_text("docs")
    return text.content, text.source


def read_text(path: Optional[str]) -> Tuple[str, str]:
    """``(text, source)`` from ``path`` (UTF-8), or the default corpus when ``path`` is None."""
    if path is None or path == "default":
        return default_corpus_text()
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"--text: no such file {p}; give a UTF-8 text file or omit "
                                f"--text for the default corpus")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"--text: {p} is not UTF-8 text ({exc})") from None
    return text, str(p.resolve())


def tokenize(tokenizer, text: str, num_tokens: int, source: str = "text"):
    """The first ``num_tokens`` token ids of ``text`` as a ``(1, num_tokens)`` int64 tensor.

    Only a prefix of the text long enough for ``num_tokens`` is tokenised (grown if short).
    """
    import torch

    chars = max(1024, num_tokens * 8)
    while True:
        ids = tokenizer(text[:chars], add_special_tokens=False)["input_ids"]
        if len(ids) > num_tokens or chars >= len(text):
            break
        chars *= 2
    if len(ids) < num_tokens:
        raise ValueError(f"{source} has only {len(ids)} tokens; lower --tokens to at most "
                         f"{len(ids)} or give a longer text")
    return torch.tensor([ids[:num_tokens]], dtype=torch.int64)


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
