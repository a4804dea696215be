"""A run folder is locked while a run uses it (``run.lock``: pid, host, start time): a second
``sah tune --resume`` of it is refused with one line naming the running process; a lock
left by a process that is gone (killed with SIGKILL) is recognised as stale and taken over,
and the killed run resumes to the end without losing its finished trials."""

import json
import os
import signal
import socket
import subprocess
import sys

import pytest

from sah.infra.checks import ConfigError
from sah.runs.lock import LOCK_FILE, RunLock
from run_folder_support import (NUM_SAMPLES, completed_rows, finished_batches, launch,
                                write_study, wait_for)


def dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_lock_held_by_a_live_process_refuses_and_a_dead_ones_is_taken_over(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / LOCK_FILE).write_text(json.dumps({
            "pid": holder.pid, "host": socket.gethostname(), "started": "then"}))
        with pytest.raises(ConfigError, match=f"already going on in process {holder.pid}"):
            RunLock(tmp_path).acquire()
    finally:
        holder.kill()
        holder.wait()
    # the same pid, now gone: stale
    lock = RunLock(tmp_path).acquire()
    assert lock.took_over["pid"] == holder.pid
    assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    lock.release()
    assert not (tmp_path / LOCK_FILE).exists()


def test_a_lock_from_another_host_is_refused_with_what_to_do(tmp_path):
    (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": dead_pid(), "host": "elsewhere-node",
                                                  "started": "2026-01-01T00:00:00"}))
    with pytest.raises(ConfigError) as info:
        RunLock(tmp_path).acquire()
    message = str(info.value)
    assert "host elsewhere-node" in message and f"delete {tmp_path / LOCK_FILE}" in message
    assert "\n" not in message


@pytest.mark.slow
def test_second_resume_is_refused_and_a_killed_runs_lock_is_taken_over(tmp_path):
    study = write_study(tmp_path, name="locked")
    results = tmp_path / "results"
    run_dir = results / "locked"
    first = launch(study, results)
    try:
        wait_for(first, lambda: finished_batches(run_dir / "ray" / "_batched") >= 1)
        second = launch(study, results, "--resume")
        out, _ = second.communicate(timeout=180)
        assert second.returncode == 2, out
        lines = out.strip().splitlines()
        assert len(lines) == 1 and f"already going on in process {first.pid}" in lines[0], out
        assert first.poll() is None  # the first run goes on
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
    lock = json.loads((run_dir / LOCK_FILE).read_text())
    assert lock["pid"] == first.pid and lock["host"] == socket.gethostname()

    resumed = launch(study, results, "--resume")
    out, _ = resumed.communicate(timeout=400)
    assert resumed.returncode == 0, out
    assert f"took over the lock of process {first.pid}" in out
    assert len(completed_rows(run_dir)) == NUM_SAMPLES
    assert not (run_dir / LOCK_FILE).exists()
