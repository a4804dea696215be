"""Atomic file writes, the one implementation every part of sah uses (run outputs,
recordings, in-model results): write a temp file next to the target, flush it to disk,
rename it into place. The target holds its old content or the new one, never a part."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Union


def atomic_write_text(path: Union[str, Path], text: str) -> None:
    """Write ``text`` (UTF-8) atomically to ``path``."""
    atomic_write_bytes(path, text.encode())


def atomic_write_bytes(path: Union[str, Path], data: bytes) -> None:
    """Write ``data`` atomically to ``path``."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            _write_and_sync(fh, data, Path(path))

    atomic_write_with(path, write)


def _write_and_sync(fh: Any, data: bytes, path: Path) -> None:
    """Write ``data`` (bound for ``path``) to the open temp file and flush it to disk."""
    fh.write(data)
    fh.flush()
    os.fsync(fh.fileno())


def atomic_write_with(path: Union[str, Path], write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` to fill a temp file next to ``path`` (a library's own ``save`` to
    a path, for example), then rename it into place with the usual file mode. The temp
    file is removed on any failure; an ``OSError`` without a file name names ``path``."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        write(Path(tmp))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give the usual mode
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.errno is not None and exc.filename is None:
            raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc
        raise
    return path
