"""Stop signals: one that arrives while a run writes its outputs waits until they are
written; Ctrl-C twice ends a real `sah tune` process with one message."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sah.tuning.signals import signals_deferred as _signals_deferred
from tuning_support import save_synthetic, write_study

ROOT = Path(__file__).resolve().parents[1]


def test_signal_during_outputs_is_held_until_the_block_ends(tmp_path):
    seen = []
    previous = signal.signal(signal.SIGTERM, lambda n, f: seen.append(n))
    try:
        with _signals_deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            (tmp_path / "a").write_text("written after the signal")
            assert seen == []  # held
        assert seen == [signal.SIGTERM]  # delivered once the block ended
        assert (tmp_path / "a").read_text() == "written after the signal"
        assert signal.getsignal(signal.SIGTERM) is not None
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_ctrl_c_during_outputs_raises_after_them(tmp_path):
    # Python's own Ctrl-C handler, even when the test runner was started ignoring SIGINT
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            with _signals_deferred():
                os.kill(os.getpid(), signal.SIGINT)
                (tmp_path / "b").write_text("done")
    finally:
        signal.signal(signal.SIGINT, previous)
    assert (tmp_path / "b").read_text() == "done"


def test_ctrl_c_twice_exits_130_with_one_message_and_no_traceback(tmp_path):
    """Ctrl-C twice during a run (a real `sah tune` process, two real SIGINTs): exit status
    130 and one last message naming --resume, no KeyboardInterrupt traceback."""
    rec = save_synthetic(tmp_path / "rec.safetensors", num_layers=4, num_heads=4, num_kv_heads=2,
                         head_dim=32, num_keys=4096, num_queries=64, seed=1)
    study = write_study(tmp_path / "s.yaml", {
        "name": "cc", "recording": str(rec), "searcher": "random", "num_samples": 200, "seed": 1,
        "configs_per_trial": 2, "chains": [{"name": "sl", "maskers": [
            {"type": "SinkMaskerConfig", "sink_size": {"search": "randint", "low": 1, "high": 64}},
            {"type": "LocalMaskerConfig", "window_size": {"search": "uniform", "low": 0.01, "high": 0.5}}]}]})
    results = tmp_path / "results"
    proc = subprocess.Popen([sys.executable, "-m", "sah.cli", "tune", "--config", str(study),
                             "--results-dir", str(results), "--quiet"],
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=str(ROOT),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            # Ctrl-C reaches the command even when the test runner itself
                            # ignores SIGINT (started in the background by a shell)
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            if any((results / "cc" / "ray" / "_batched").glob("trial_*/result.json")):
                break
            time.sleep(0.2)
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        proc.send_signal(signal.SIGINT)
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, out[-3000:]
    assert "Traceback" not in out and "KeyboardInterrupt" not in out, out[-3000:]
    last = out.strip().splitlines()[-1]
    assert last.startswith("sah") and "--resume" in last, out[-3000:]
