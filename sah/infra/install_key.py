"""A secret key of this installation, kept OUTSIDE every run folder: in sah's cache folder
(``$SAH_CACHE_DIR``, else ``$XDG_CACHE_HOME/sah`` or ``~/.cache/sah``), file
``keys/run-state.key`` (32 random bytes, mode 0600, made on first use).

It signs what this installation wrote and will later read back as trusted (Ray Tune's
saved state of a run, :mod:`sah.tuning.state_seal`). A signature stored inside a run
folder proves nothing by itself; one made with this key proves the files were written
here. A run folder from elsewhere (another machine, another user, a shared storage path)
carries no valid signature for this key."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path
from typing import Optional

KEY_BYTES = 32
_cached: dict = {}


def cache_root() -> Path:
    if os.environ.get("SAH_CACHE_DIR"):
        return Path(os.environ["SAH_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sah"


def key_path() -> Path:
    return cache_root() / "keys" / "run-state.key"


def installation_key() -> bytes:
    """This installation's key, made on first use (two processes racing agree: the key is
    linked into place whole and exclusively; the loser reads the winner's)."""
    path = key_path()
    if _cached.get("path") == path:
        return _cached["key"]
    key = _read(path)
    if key is None:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(path.parent, 0o700)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(secrets.token_bytes(KEY_BYTES))
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)  # atomic and exclusive: a complete key or none
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
        key = _read(path)
    if key is None or len(key) != KEY_BYTES:
        raise OSError(f"{path}: not a key made by sah ({KEY_BYTES} bytes expected); delete it "
                      f"(runs signed with it can then only be resumed with --allow-pickle)")
    _cached.update(path=path, key=key)
    return key


def check_installation_key() -> None:
    """Make (or read) the key now, so a cache folder that cannot be written is one line
    (:class:`~sah.infra.checks.ConfigError`) before a run starts, not an error inside it."""
    from sah.infra.checks import ConfigError
    try:
        installation_key()
    except OSError as exc:
        raise ConfigError(f"{key_path()}: cannot make or read this installation's key "
                          f"({getattr(exc, 'strerror', None) or exc}); set SAH_CACHE_DIR to a "
                          f"folder you can write (it signs Ray Tune's state for --resume)"
                          ) from None


def _read(path: Path) -> Optional[bytes]:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def sign(message: bytes) -> str:
    """HMAC-SHA256 of ``message`` with this installation's key (hex)."""
    return hmac.new(installation_key(), message, hashlib.sha256).hexdigest()


def signature_valid(message: bytes, signature: str) -> bool:
    return isinstance(signature, str) and hmac.compare_digest(sign(message), signature)
