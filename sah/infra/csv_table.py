"""Reading back a CSV table sah wrote (``trials.csv``, ``per_layer.csv``), checked: a file cut
mid-line (a copy that stopped, a full disk, an editor) or edited by hand is refused with one
line naming the file, the line and, for a bad cell, the column and its value."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Sequence, Tuple

from sah.infra.checks import ConfigError, short_repr

FIX = "the file is cut or was edited; write it again (sah tune --resume, or run the study again)"


def read_table(path: Path, required: Sequence[str]) -> Iterator[Tuple[int, Dict[str, str]]]:
    """(line number, row) of every data row; the header must hold ``required`` columns and
    every row exactly the header's number of fields."""
    path = Path(path)
    with path.open(newline="", encoding="utf-8") as fh:
        try:
            reader = csv.reader(fh)
            header = next(reader, None)
            if header is None:
                raise ConfigError(f"{path}: empty file (no header line); {FIX}")
            missing = [c for c in required if c not in header]
            if missing:
                raise ConfigError(f"{path}: line 1: header lacks the column(s) "
                                  f"{', '.join(missing)}; {FIX}")
            for fields in reader:
                line = reader.line_num
                if not fields:
                    continue
                if len(fields) != len(header):
                    raise ConfigError(f"{path}: line {line}: {len(fields)} fields where the header "
                                      f"has {len(header)}; {FIX}")
                yield line, dict(zip(header, fields))
        except (csv.Error, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: not a readable CSV table ({exc}); {FIX}") from None


def cell(path: Path, line: int, column: str, text: str, convert: Callable[[str], Any]) -> Any:
    """``convert(text)``; a value it refuses is one line naming file, line, column, value."""
    try:
        return convert(text)
    except Exception:  # noqa: BLE001 (a parser's own error type, e.g. YAML's, included)
        raise ConfigError(f"{path}: line {line}: column {column} holds {short_repr(text)}, "
                          f"not {_KINDS.get(convert, 'a value of its search domain')}; {FIX}"
                          ) from None


_KINDS = {int: "a whole number", float: "a number"}
