"""Texts to record from and validate on: named texts that ship with every Python, or files.

Named texts (offline, deterministic for a given Python version; each use stores the
text's sha256, so a text that differs between installs is told apart):

| name | what | about |
|---|---|---|
| ``docs`` | the Python language reference prose of ``pydoc_data.topics``, topics in sorted order, separated by blank lines (the earlier "default corpus", unchanged) | 113 K tokens |
| ``code`` | Python source of standard-library modules: ``functools``, ``textwrap``, ``dataclasses``, ``argparse``, ``collections`` (each file preceded by a ``# Lib/<path>`` line) | 64 K tokens |
| ``prose`` | English prose shipped with Python: the licence (``LICENSE.txt``) and IDLE's ``README.txt``, ``HISTORY.txt`` and ``NEWS.txt`` | 26 K tokens |
| ``manual`` | IDLE's user manual as shipped for its Help menu (``idlelib/help.html``), tags stripped (:func:`html_text`): a fourth text, for held-out checks of what was tuned or allocated on the other three | 9.7 K tokens |

(token counts with the SmolLM2 tokenizer, Python 3.11). Anything else is a UTF-8 text file.

A *text spec* names a text and, optionally, where to start in it: ``NAME`` or
``NAME@START`` (``START`` a token offset, e.g. ``prose@8192``), where ``NAME`` is one of
the names above or a file path (an existing file whose name contains ``@`` is taken whole).
A window of a text is ``count`` token ids in the model's own convention: the special
tokens its tokenizer puts before a text (:func:`special_prefix`: Gemma's ``<bos>``; none
for SmolLM2, whose windows are the text's tokens alone), then the text tokenised without
special tokens from token ``START``, up to ``count`` ids in all. Its *span*
``[START, START + count - len(prefix))`` (text tokens) together with the text's sha256 is
what recordings and validation runs store, so overlapping uses of one text can be refused;
recordings also store the convention (:func:`tokenization_metadata`).
"""

from __future__ import annotations

import hashlib
import os
import platform
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

#: Standard-library files of the named texts, relative to the standard library folder.
CODE_FILES = ("functools.py", "textwrap.py", "dataclasses.py", "argparse.py",
              "collections/__init__.py")
PROSE_FILES = ("LICENSE.txt", "idlelib/README.txt", "idlelib/HISTORY.txt", "idlelib/NEWS.txt")
MANUAL_FILE = "idlelib/help.html"
TEXT_NAMES = ("docs", "code", "prose", "manual")
#: ``default`` is the text of the default recording: ``docs``.
ALIASES = {"default": "docs"}
#: Tokens tokenised past a window, so that cutting the text inside a word cannot change it.
TOKEN_MARGIN = 64


@dataclass(frozen=True)
class Text:
    """A text to record from: its name (a text name or the file path as given), content,
    a description of where it comes from, and the sha256 of its UTF-8 bytes."""

    name: str
    content: str
    source: str
    sha256: str

    @property
    def is_named(self) -> bool:
        return self.name in TEXT_NAMES


@dataclass(frozen=True)
class TextSpec:
    """A text (name or file, as given) and the token offset where its windows start."""

    text: str
    start: int = 0

    def __str__(self) -> str:
        return self.text if self.start == 0 else f"{self.text}@{self.start}"


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _stdlib_dir() -> Path:
    return Path(os.__file__).resolve().parent


def _stdlib_files(files: Sequence[str], name: str, header: bool) -> str:
    root = _stdlib_dir()
    parts: List[str] = []
    for rel in files:
        path = root / rel
        if not path.is_file():
            raise FileNotFoundError(
                f"text {name!r}: {path} is not part of this Python install (some Linux "
                f"distributions split it into another package); use another text "
                f"({', '.join(n for n in TEXT_NAMES if n != name)}) or a text file")
        body = path.read_text(encoding="utf-8")
        parts.append(f"# Lib/{rel}\n{body}" if header else body.strip())
    return ("\n\n" if not header else "\n").join(parts)


def _docs() -> Tuple[str, str]:
    from pydoc_data.topics import topics

    text = "\n\n".join(topics[key].strip() for key in sorted(topics))
    return text, f"pydoc_data.topics (Python {platform.python_version()}, topics in sorted order)"


def _code() -> Tuple[str, str]:
    return (_stdlib_files(CODE_FILES, "code", header=True),
            f"Python {platform.python_version()} standard library source: "
            f"{', '.join(CODE_FILES)}")


def _prose() -> Tuple[str, str]:
    return (_stdlib_files(PROSE_FILES, "prose", header=False),
            f"Python {platform.python_version()} prose: {', '.join(PROSE_FILES)}")


def html_text(markup: str) -> str:
    """The text of an HTML page: character data outside ``<script>``/``<style>``, entities
    decoded, each line stripped, runs of blank lines collapsed to one."""
    from html.parser import HTMLParser

    class _Text(HTMLParser):
        def __init__(self) -> None:
            super().__init__(convert_charrefs=True)
            self.parts: List[str] = []
            self.hidden = 0

        def handle_starttag(self, tag, attrs) -> None:  # noqa: ANN001
            self.hidden += tag in ("script", "style")

        def handle_endtag(self, tag) -> None:  # noqa: ANN001
            self.hidden -= tag in ("script", "style") and self.hidden > 0

        def handle_data(self, data: str) -> None:
            if not self.hidden:
                self.parts.append(data)

    parser = _Text()
    parser.feed(markup)
    parser.close()
    lines = [line.strip() for line in "".join(parser.parts).splitlines()]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def _manual() -> Tuple[str, str]:
    return (html_text(_stdlib_files((MANUAL_FILE,), "manual", header=False)),
            f"Python {platform.python_version()} IDLE manual: {MANUAL_FILE}, tags stripped")


_BUILDERS = {"docs": _docs, "code": _code, "prose": _prose, "manual": _manual}
_CACHE: Dict[str, Text] = {}


def text_names() -> List[str]:
    return list(TEXT_NAMES)


def load_text(name_or_path: str, where: str = "--text") -> Text:
    """The named text (``docs``, ``code``, ``prose``, ``manual``; ``default`` = ``docs``) or a UTF-8 file.

    Raises ``FileNotFoundError`` / ``ValueError`` naming ``where``, the value and the fix."""
    if not isinstance(name_or_path, str) or not name_or_path:
        raise ValueError(f"{where}: got {name_or_path!r}; give a text name "
                         f"({', '.join(TEXT_NAMES)}) or a UTF-8 text file")
    name = ALIASES.get(name_or_path, name_or_path)
    if name in _BUILDERS:
        if name not in _CACHE:
            content, source = _BUILDERS[name]()
            _CACHE[name] = Text(name, content, source, text_sha256(content))
        return _CACHE[name]
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        raise ValueError(f"{where}: {name_or_path} is a directory; give a UTF-8 text file or "
                         f"a text name ({', '.join(TEXT_NAMES)})")
    if not path.is_file():
        raise FileNotFoundError(f"{where}: {name_or_path} is neither a text name "
                                f"({', '.join(TEXT_NAMES)}) nor an existing file")
    try:
        content = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{where}: {name_or_path} is not UTF-8 text ({exc.reason} at byte "
                         f"{exc.start}); convert it to UTF-8") from None
    return Text(name_or_path, content, str(path.resolve()), text_sha256(content))


def parse_text_spec(spec: str, where: str = "--text") -> TextSpec:
    """``NAME``, ``NAME@START``, ``FILE`` or ``FILE@START`` -> :class:`TextSpec`.

    The text itself is not read; :func:`load_text` does that."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"{where}: got {spec!r}; give a text name ({', '.join(TEXT_NAMES)}) "
                         f"or a file, optionally with @START (a token offset)")
    if "@" not in spec or Path(spec).expanduser().is_file():
        return TextSpec(spec, 0)
    text, _, start = spec.rpartition("@")
    try:
        offset = int(start)
    except ValueError:
        raise ValueError(f"{where}: {spec!r}: {start!r} after '@' is not a token offset; write "
                         f"NAME@START with START an int >= 0 (e.g. prose@4096)") from None
    if offset < 0 or not text:
        raise ValueError(f"{where}: {spec!r}: write NAME@START with a text before '@' and "
                         f"START an int >= 0")
    return TextSpec(text, offset)


def special_prefix(tokenizer) -> List[int]:
    """The ids ``tokenizer`` puts before every text when it adds its special tokens
    (Gemma: ``[<bos>]``; SmolLM2: none)."""
    sample = "Hello world"
    plain = list(tokenizer(sample, add_special_tokens=False)["input_ids"])
    full = list(tokenizer(sample)["input_ids"])
    cut = len(full) - len(plain)
    if cut > 0 and full[cut:] == plain:
        return full[:cut]
    if cut >= 0 and full[:len(plain)] == plain:  # special tokens after the text only
        return []
    raise ValueError(f"the tokenizer's special tokens are not a prefix of the text's tokens "
                     f"({full} against {plain}); sah cannot follow its convention")


def tokenization_metadata(tokenizer) -> Dict[str, object]:
    """The convention a window follows, as recordings store it: ``prefix_ids`` and
    ``prefix_tokens`` (what :func:`special_prefix` puts before the text)."""
    prefix = special_prefix(tokenizer)
    return {"prefix_ids": prefix, "prefix_tokens": tokenizer.convert_ids_to_tokens(prefix)}


def token_window(tokenizer, text: Text, start: int, count: int, where: str = "--text"):
    """``count`` ids as a ``(1, count)`` int64 tensor: the tokenizer's special prefix
    (:func:`special_prefix`), then the text's tokens from token ``start`` (tokenised without
    special tokens). Only a prefix of the text long enough is tokenised."""
    import torch

    prefix = special_prefix(tokenizer)
    count -= len(prefix)
    need = start + count
    chars = max(4096, need * 8)
    while True:
        ids = tokenizer(text.content[:chars], add_special_tokens=False)["input_ids"]
        # a prefix may end inside a word, whose tokens then differ from the whole text's:
        # keep a margin of tokens past the window unless the whole text was tokenised
        if len(ids) > need + TOKEN_MARGIN or chars >= len(text.content):
            break
        chars *= 2
    if len(ids) < need:
        raise ValueError(f"{where}: {text.name} has {len(ids)} tokens; {count} tokens from "
                         f"token {start} need {need}. Lower the token count or the start, or "
                         f"give a longer text")
    return torch.tensor([prefix + ids[start:need]], dtype=torch.int64)


def spans_overlap(a: Tuple[str, int, int], b: Tuple[str, int, int]) -> bool:
    """Whether two uses of texts overlap: ``(text sha256, start, end)`` with ``end`` excluded."""
    return a[0] == b[0] and a[1] < b[2] and b[1] < a[2]


def describe_span(name: str, start: int, end: int) -> str:
    return f"{name} tokens [{start}, {end})"


def text_of(metadata: Dict[str, object]) -> Optional[Tuple[str, int, int]]:
    """``(text sha256, start, end)`` of a recording's metadata, or None when it predates spans."""
    sha = metadata.get("text_sha256")
    start, end = metadata.get("token_start"), metadata.get("token_end")
    if isinstance(sha, str) and isinstance(start, int) and isinstance(end, int):
        return sha, start, end
    return None
