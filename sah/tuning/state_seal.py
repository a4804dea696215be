"""Ray Tune's saved state of a run is only ever read back if THIS installation wrote it.

``--resume`` restores each unfinished experiment with ``Tuner.restore``, which unpickles
``tuner.pkl``, the searcher's state and objects inside ``experiment_state-*.json``:
unpickling runs code. So every file of every experiment is signed while the run writes
it: ``<run>/ray-state.sig.json`` lists each file's SHA-256 and an HMAC of that list made
with this installation's key (:mod:`sah.infra.install_key`, kept outside the run folder).
The list is signed again about once a second while Ray Tune runs (:class:`SealCallback`;
files whose size and time did not change are not read again, an unchanged list is not
written again, and a big folder is signed less often, so that signing takes at most about
a tenth of the driver's time) and once more when the experiment stops, however it stops
(done, Ctrl-C, SIGTERM, an error).

Before ``--resume`` starts anything, :func:`check_sealed` compares every experiment folder
with its signed list: a folder from elsewhere, with a file changed, added or removed, or
without a signature, is refused with one line and nothing runs. A run killed with SIGKILL
(or by a power cut) can have written state after its last signature; it is then refused
too, and the line says what to do: resume with ``--allow-pickle`` if you made the folder
yourself (Ray's state is then read unchecked), or start afresh under another name.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Tuple

from ray.tune import Callback

from sah.infra.checks import ConfigError
from sah.infra.files import atomic_write_text
from sah.infra.install_key import sign, signature_valid

SEAL_FILE = "ray-state.sig.json"
_LINK = "symbolic link"
_EVERY = 1.0  # seconds between two signatures while Ray Tune runs


def _is_uri(path: str) -> bool:
    return "://" in str(path)


def _sha256_local(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _local_files(root: str, known: Optional[Dict[str, Tuple[int, int, str]]] = None
                 ) -> Dict[str, str]:
    """Relative path -> SHA-256 of every file under ``root`` (a symbolic link is listed as
    such, never followed). ``known`` caches (size, mtime_ns, digest) per path."""
    out: Dict[str, str] = {}
    for folder, dirs, files in os.walk(root, followlinks=False):
        for name in list(dirs):
            if os.path.islink(os.path.join(folder, name)):
                out[os.path.relpath(os.path.join(folder, name), root)] = _LINK
                dirs.remove(name)
        for name in files:
            full = os.path.join(folder, name)
            rel = os.path.relpath(full, root)
            try:
                st = os.lstat(full)
            except FileNotFoundError:  # Ray replaced it meanwhile
                continue
            if os.path.islink(full):
                out[rel] = _LINK
                continue
            stamp = (st.st_size, st.st_mtime_ns)
            cached = known.get(rel) if known is not None else None
            if cached is not None and cached[:2] == stamp:
                out[rel] = cached[2]
                continue
            try:
                digest = _sha256_local(full)
            except FileNotFoundError:
                continue
            out[rel] = digest
            if known is not None:
                known[rel] = (*stamp, digest)
    return out


def _uri_files(root: str) -> Dict[str, str]:
    import pyarrow.fs as pafs
    fs, base = pafs.FileSystem.from_uri(root)
    out: Dict[str, str] = {}
    try:
        infos = fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
    except FileNotFoundError:
        return out
    for info in infos:
        if info.type != pafs.FileType.File:
            continue
        digest = hashlib.sha256()
        with fs.open_input_stream(info.path) as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        out[info.path[len(base):].lstrip("/")] = digest.hexdigest()
    return out


def experiment_files(exp_dir: str, known: Optional[Dict[str, Any]] = None) -> Dict[str, str]:
    """Every file of one experiment folder (a local folder or a URI) with its digest."""
    if _is_uri(exp_dir):
        return _uri_files(exp_dir)
    return _local_files(exp_dir, known) if os.path.isdir(exp_dir) else {}


def _message(name: str, files: Dict[str, str]) -> bytes:
    return json.dumps({"experiment": name, "files": files}, sort_keys=True).encode()


def _read_seal(run_dir: Path) -> Dict[str, Any]:
    try:
        doc = json.loads((Path(run_dir) / SEAL_FILE).read_text())
    except (OSError, ValueError):
        return {}
    experiments = doc.get("experiments") if isinstance(doc, dict) else None
    return experiments if isinstance(experiments, dict) else {}


def seal(run_dir: Path, name: str, exp_dir: str, known: Optional[Dict[str, Any]] = None,
         unless: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """Sign the files of experiment ``name`` (folder ``exp_dir``) in
    ``<run>/ray-state.sig.json``; nothing is written when they are ``unless`` (the files
    signed last time). Returns the files signed."""
    files = experiment_files(exp_dir, known)
    if unless is not None and files == unless:
        return files
    experiments = _read_seal(run_dir)
    experiments[name] = {"files": files, "signature": sign(_message(name, files))}
    atomic_write_text(Path(run_dir) / SEAL_FILE,
                      json.dumps({"format": 1, "experiments": experiments}, indent=1,
                                 sort_keys=True))
    return files


def _difference(signed: Dict[str, str], found: Dict[str, str]) -> str:
    for rel in sorted(found):
        if found[rel] == _LINK:
            return f"{rel} is a symbolic link"
        if rel not in signed:
            return f"{rel} was added after it was signed"
        if signed[rel] != found[rel]:
            return f"{rel} changed after it was signed"
    missing = sorted(set(signed) - set(found))
    return f"{missing[0]} was removed after it was signed" if missing else ""


def seal_problem(run_dir: Path, name: str, exp_dir: str) -> str:
    """Why the experiment folder cannot be trusted ("" when its signature holds)."""
    found = experiment_files(exp_dir)
    if not found:
        return ""  # nothing saved yet: nothing is read back
    entry = _read_seal(run_dir).get(name)
    if not isinstance(entry, dict) or not isinstance(entry.get("files"), dict):
        return f"no signature of this installation for it in {Path(run_dir) / SEAL_FILE}"
    signed = {str(k): str(v) for k, v in entry["files"].items()}
    if not signature_valid(_message(name, signed), entry.get("signature")):
        return ("its signature was not made by this installation (the folder comes from "
                "elsewhere or was changed)")
    return _difference(signed, found)


def check_sealed(run_dir: Path, experiments: Iterable[Tuple[str, str]]) -> None:
    """Refuse (one line, :class:`ConfigError`) unless every experiment folder in
    ``experiments`` ((name, folder) pairs) holds exactly what this installation signed.
    Skipped when the person opted in to unpickling (``--allow-pickle``)."""
    from sah.infra.pickle_opt_in import pickle_allowed
    if pickle_allowed():
        return
    for name, exp_dir in experiments:
        problem = seal_problem(run_dir, name, exp_dir)
        if problem:
            raise ConfigError(
                f"{exp_dir}: Ray Tune's saved state was not written by this installation "
                f"({problem}); --resume would unpickle it, which can run code, so nothing was "
                f"started. If you made this run folder yourself on this machine (e.g. a run "
                f"killed with SIGKILL before it could sign its last state), resume with "
                f"--allow-pickle; otherwise start the study afresh with another --name")


class SealCallback(Callback):
    """Signs an experiment's files about once a second while Ray Tune runs it (after Ray
    saved its state in the step) and when it ends. Holds no key (Ray pickles callbacks
    into the experiment folder): the key is read from the cache folder when signing."""

    def __init__(self, run_dir: Path, name: str, exp_dir: str) -> None:
        self.run_dir, self.name, self.exp_dir = str(run_dir), name, str(exp_dir)
        self._reset()

    def _reset(self) -> None:
        self._known: Dict[str, Any] = {}
        self._signed: Optional[Dict[str, str]] = None
        self._last, self._took = 0.0, 0.0

    def __getstate__(self) -> Dict[str, Any]:
        return {"run_dir": self.run_dir, "name": self.name, "exp_dir": self.exp_dir}

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset()

    def seal_now(self) -> None:
        start = time.monotonic()
        self._signed = seal(Path(self.run_dir), self.name, self.exp_dir,
                            None if _is_uri(self.exp_dir) else self._known, self._signed)
        self._last = time.monotonic()
        self._took = self._last - start

    def on_step_end(self, iteration: int, trials: List[Any], **info: Any) -> None:
        # about once a second, less often for big folders: at most a tenth of the driver's time
        if (not _is_uri(self.exp_dir)
                and time.monotonic() - self._last >= max(_EVERY, 10 * self._took)):
            self.seal_now()

    def on_experiment_end(self, trials: List[Any], **info: Any) -> None:
        self.seal_now()
