"""`sah tune --resume` never unpickles Ray Tune state this installation did not write: a run
folder whose pickles were swapped, or one signed by another installation (another cache
folder, i.e. another key), is refused with one line before anything runs; the same
folder, untouched, resumes to the end."""

import pickle
import shutil
import signal
from pathlib import Path

import pytest

from run_folder_support import (NUM_SAMPLES, completed_rows, finished_batches, launch,
                                write_study, wait_for)

pytestmark = pytest.mark.slow


class WritesAFile:
    """Unpickling this creates ``path``: what a malicious pickle in a run folder would do."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(Path(folder).rglob("*"))
            if p.is_file()}


def test_resume_refuses_swapped_pickles_and_foreign_folders_then_resumes_its_own(tmp_path):
    cache = {"SAH_CACHE_DIR": str(tmp_path / "cache")}
    study = write_study(tmp_path)
    results = tmp_path / "results"
    run_dir = results / "stopme"
    proc = launch(study, results, env=cache)
    wait_for(proc, lambda: finished_batches(run_dir / "ray" / "_batched") >= 1)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 130, out
    before = len(completed_rows(run_dir))
    assert 2 <= before < NUM_SAMPLES, out

    # 1. the pickles of a copy replaced with one that writes a file when unpickled
    marker = tmp_path / "pwned"
    swapped_results = tmp_path / "swapped"
    shutil.copytree(results, swapped_results)
    pickles = sorted((swapped_results / "stopme" / "ray").rglob("*.pkl"))
    assert any(p.name == "tuner.pkl" for p in pickles)
    for path in pickles:
        path.write_bytes(pickle.dumps(WritesAFile(marker)))
    pickle.loads(pickles[0].read_bytes())  # the pickle works: unpickling it makes the file
    assert marker.exists()
    marker.unlink()
    kept = snapshot(swapped_results)
    proc = launch(study, swapped_results, "--resume", env=cache)
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 2, out
    lines = out.strip().splitlines()
    assert len(lines) == 1 and ".pkl changed after it was signed" in lines[0], out
    assert "--allow-pickle" in lines[0] and "--name" in lines[0]
    assert not marker.exists()
    assert snapshot(swapped_results) == kept  # nothing written, nothing run

    # 2. an untouched copy, resumed by another installation (another key)
    foreign_results = tmp_path / "foreign"
    shutil.copytree(results, foreign_results)
    kept = snapshot(foreign_results)
    proc = launch(study, foreign_results, "--resume",
                  env={"SAH_CACHE_DIR": str(tmp_path / "other-cache")})
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 2, out
    assert len(out.strip().splitlines()) == 1, out
    assert "not made by this installation" in out, out
    assert snapshot(foreign_results) == kept

    # 3. the installation that wrote it resumes it, keeping the finished trials
    first = {(r["trial"], r["score"]) for r in completed_rows(run_dir)}
    proc = launch(study, results, "--resume", env=cache)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    rows = completed_rows(run_dir)
    assert len(rows) == NUM_SAMPLES
    assert first <= {(r["trial"], r["score"]) for r in rows}
