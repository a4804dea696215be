"""The lock of a run folder: ``<run>/run.lock`` names the process running the run (pid,
host, start time). A second ``sah tune`` on the same folder (two ``--resume`` at once, or
a new run racing another of the same name) is refused with one line naming that process.

A lock whose process is gone is stale (a run killed with SIGKILL, a crash): on the host
that holds it, a lock whose pid no longer runs (or runs another program started after the
lock) is taken over with a note. A lock from another host cannot be checked from here:
the line says which host and process to check and to delete the file once that run is
not running."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any, Dict, Optional

from sah.infra.checks import ConfigError

LOCK_FILE = "run.lock"


def _boot_ticks(pid: int) -> Optional[int]:
    """Start time of process ``pid`` in clock ticks after boot (Linux), None if unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    try:  # the command name (field 2) may hold spaces: fields count from the last ")"
        return int(stat[stat.rindex(")") + 2:].split()[19])
    except (ValueError, IndexError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _holder_running(holder: Dict[str, Any]) -> bool:
    pid = holder.get("pid")
    if not isinstance(pid, int) or pid <= 0 or not _alive(pid):
        return False
    ticks = holder.get("start_ticks")
    now_ticks = _boot_ticks(pid)
    # the pid was reused by a process started later: the holder is gone
    return not (isinstance(ticks, int) and now_ticks is not None and now_ticks != ticks)


def _read(path: Path) -> Dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


class RunLock:
    """``with RunLock(run_dir): ...`` holds ``<run_dir>/run.lock`` (the folder exists)."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK_FILE
        self.held = False
        self.took_over: Optional[Dict[str, Any]] = None

    def acquire(self) -> "RunLock":
        me = {"pid": os.getpid(), "host": socket.gethostname(),
              "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "start_ticks": _boot_ticks(os.getpid())}
        for _ in range(5):
            if self._create(me):
                self.held = True
                return self
            holder = _read(self.path)
            if not holder and self.path.exists():  # being written by its maker: look again
                time.sleep(0.05)
                holder = _read(self.path)
            if holder.get("host") != me["host"] and holder:
                raise ConfigError(
                    f"{self.path}: the run is locked by process {holder.get('pid')} on host "
                    f"{holder.get('host')} (started {holder.get('started')}); wait for it to "
                    f"finish, or, if no run is going on there, delete {self.path} and try again")
            if holder and _holder_running(holder):
                raise ConfigError(
                    f"{self.path}: the run is already going on in process {holder['pid']} on "
                    f"this host (started {holder.get('started')}); wait for it to finish or "
                    f"stop it (Ctrl-C), then --resume")
            # stale (its process is gone) or unreadable: move it aside; one taker wins
            aside = self.path.with_name(f"{LOCK_FILE}.stale-{os.getpid()}")
            try:
                os.rename(self.path, aside)
            except FileNotFoundError:
                continue
            os.unlink(aside)
            self.took_over = holder
        raise ConfigError(f"{self.path}: could not take the run's lock (other processes keep "
                          f"taking it); try again")

    def _create(self, me: Dict[str, Any]) -> bool:
        tmp = self.path.with_name(f".{LOCK_FILE}.{os.getpid()}")
        tmp.write_text(json.dumps(me))
        try:
            os.link(tmp, self.path)  # atomic, exclusive, and the lock is whole when seen
            return True
        except FileExistsError:
            return False
        finally:
            tmp.unlink()

    def release(self) -> None:
        if self.held:
            holder = _read(self.path)
            if holder.get("pid") == os.getpid():
                try:
                    self.path.unlink()
                except FileNotFoundError:
                    pass
            self.held = False

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()
