"""A stop signal that arrives while a run writes its outputs waits until they are written."""

import os
import signal

import pytest

from sah.tuning.signals import signals_deferred as _signals_deferred


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
