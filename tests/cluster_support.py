"""A real two-node Ray cluster on this machine for the tests: a head (``ray start --head``) and
a separate worker node process, each with its own ``--temp-dir``, 1 CPU and a custom
resource (``node_a`` / ``node_b``), token authentication with a token generated here.

Nothing leaks into the test process: the token and the address go only to the
subprocesses' environments (never ``os.environ``, never ``RAY_ADDRESS``), each node writes
its address file into its own temp dir (not ``/tmp/ray``), so another test's local
``ray.init`` cannot find or join it. Every process is stopped by the session id of the
``ray start`` process that made it (SIGTERM, then SIGKILL), never with ``ray stop``.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List

ROOT = Path(__file__).resolve().parents[1]
RAY = [sys.executable, "-m", "ray.scripts.scripts"]
_LEAKY = ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(**extra: str) -> Dict[str, str]:
    """This process's environment without any Ray address or token, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in _LEAKY}
    env.update(extra)
    return env


def session_pids(sids: List[int]) -> List[int]:
    """Live processes whose session id is one of ``sids`` (a ``ray start`` started with
    ``start_new_session`` leads a session holding every process it spawned; Ray's workers
    change their process group, not their session). Zombies are left out."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[3]) in sids and fields[0] != "Z":  # state, ppid, pgrp, session, ...
            out.append(int(entry))
    return out


def stop_sessions(procs: List[subprocess.Popen], grace: float = 15.0) -> None:
    """SIGTERM the session leaders, wait, then SIGKILL whatever is left of their sessions."""
    sids = [p.pid for p in procs]
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.time() + grace
    while time.time() < deadline and session_pids(sids):
        for p in procs:
            p.poll()  # reap our own children as they exit
        time.sleep(0.1)
    for pid in session_pids(sids):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass


@dataclass
class TwoNodeCluster:
    address: str
    env: Dict[str, str]                 # what a driver needs: the token, nothing else
    nodes: Dict[str, str] = field(default_factory=dict)  # node id -> "node_a" / "node_b"
    procs: List[subprocess.Popen] = field(default_factory=list)
    logs: Path = Path(".")

    def node_id(self, label: str) -> str:
        return next(k for k, v in self.nodes.items() if v == label)


def _start_node(args: List[str], env: Dict[str, str], log: Path) -> subprocess.Popen:
    with log.open("w") as out:
        return subprocess.Popen([*RAY, "start", "--block", *args], env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


PROBE = """
import json, sys, time, ray
ray.init(address=sys.argv[1], log_to_driver=False, include_dashboard=False)
deadline = time.time() + float(sys.argv[2])
while time.time() < deadline:
    alive = [n for n in ray.nodes() if n["Alive"]]
    if len(alive) >= 2:
        break
    time.sleep(0.2)
print(json.dumps({n["NodeID"]: n["Resources"] for n in ray.nodes() if n["Alive"]}))
"""


@contextmanager
def two_node_cluster(timeout: float = 90.0) -> Iterator[TwoNodeCluster]:
    """The cluster's temp dirs, token and logs live in a short folder under /tmp (Ray's
    socket paths must stay under 108 bytes), removed at the end."""
    base = Path(tempfile.mkdtemp(prefix="sah-ray-"))
    token = base / "auth_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    env = clean_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token))
    # the nodes do not get this checkout on PYTHONPATH: sah's code reaches their workers with
    # the job (runtime_env py_modules), as on a real cluster
    nodes_env = {k: v for k, v in env.items() if k != "PYTHONPATH"}
    port = free_port()
    common = ["--num-cpus=1", "--num-gpus=0", "--object-store-memory=150000000",
              "--disable-usage-stats"]
    cluster = TwoNodeCluster(f"127.0.0.1:{port}", env, logs=base)
    try:
        cluster.procs.append(_start_node(
            ["--head", f"--port={port}", f"--temp-dir={base / 'head'}", *common,
             '--resources={"node_a": 1}', "--include-dashboard=false",
             f"--dashboard-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}"],
            nodes_env, base / "head.log"))
        started = time.time()
        while not (base / "head" / "ray_current_cluster").is_file():
            if cluster.procs[0].poll() is not None or time.time() - started > timeout:
                raise RuntimeError("the Ray head did not start:\n" + (base / "head.log").read_text())
            time.sleep(0.1)
        cluster.procs.append(_start_node(
            [f"--address={cluster.address}", f"--temp-dir={base / 'worker'}", *common,
             '--resources={"node_b": 1}', f"--dashboard-agent-listen-port={free_port()}"],
            nodes_env, base / "worker.log"))
        probe = subprocess.run([sys.executable, "-c", PROBE, cluster.address, str(timeout)],
                               env=env, capture_output=True, text=True, timeout=timeout + 30)
        if probe.returncode != 0:
            raise RuntimeError(f"cannot reach the test cluster:\n{probe.stderr[-3000:]}")
        found = json.loads(probe.stdout.strip().splitlines()[-1])
        for node_id, resources in found.items():
            cluster.nodes[node_id] = "node_a" if "node_a" in resources else "node_b"
        if sorted(cluster.nodes.values()) != ["node_a", "node_b"]:
            raise RuntimeError(f"the worker node did not join: {found}\n"
                               + (base / "worker.log").read_text()[-3000:])
        yield cluster
    finally:
        stop_sessions(cluster.procs)
        shutil.rmtree(base, ignore_errors=True)


def start_cli(args: List[str], env: Dict[str, str]) -> subprocess.Popen:
    """Start ``python -m sah.cli ARGS`` in its own session, the worktree's sah first on the
    path; finish it with :func:`finish_cli`."""
    env = {**env, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    return subprocess.Popen([sys.executable, "-m", "sah.cli", *args], env=env, cwd=str(ROOT),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def finish_cli(proc: subprocess.Popen, timeout: float = 240.0) -> subprocess.CompletedProcess:
    """Wait for a :func:`start_cli` command; on a timeout its whole session is stopped."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop_sessions([proc], grace=5)
        out, err = proc.communicate()
        raise AssertionError(f"{' '.join(proc.args)} ran past {timeout} s:\n{out}\n{err}")
    finally:
        if proc.poll() is None:
            stop_sessions([proc], grace=5)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def finish_all(procs: List[subprocess.Popen], timeout: float = 240.0
               ) -> List[subprocess.CompletedProcess]:
    """:func:`finish_cli` for each; if one fails, the others are stopped too."""
    try:
        return [finish_cli(p, timeout) for p in procs]
    finally:
        stop_sessions([p for p in procs if p.poll() is None], grace=5)


def run_cli(args: List[str], env: Dict[str, str], timeout: float = 240.0
            ) -> subprocess.CompletedProcess:
    return finish_cli(start_cli(args, env), timeout)
