"""Commands refuse with one clear error line (exit 2) instead of a traceback, and write
nothing: work too big for memory, a results folder that cannot hold a run, a run.yaml that
is not sah's, a full disk while a run writes its outputs. Real Ray Tune on a small
recording."""

import errno
import json
import os
from pathlib import Path

from sah.cli import main
from tuning_support import (error_line, read_csv, recording_fixture, sink_local_and_strided,
                            write_study)

rec_path = recording_fixture(seed=2)


def test_resources_and_patterns_estimate_memory_before_allocating(tmp_path, capsys):
    """``sah resources --mask_size 1000000`` and ``sah patterns --size 1000000`` (or
    ``--size 100000 --full_png``) would need TiBs: the memory is estimated first and the work
    refused with the figure and the fix; the sparsity lines alone, counted a chunk of rows
    at a time, still work."""
    assert main(["resources", "--pattern", "normal", "--mask_size", "1000000"]) == 2
    line = error_line(capsys.readouterr().err, "resources")
    assert "500,000,500,000 active positions" in line and "TiB of memory" in line
    assert "is available" in line and "use a smaller --mask_size" in line
    assert main(["patterns", "--size", "1000000", "--output_dir", str(tmp_path)]) == 2
    line = error_line(capsys.readouterr().err, "patterns")
    assert "TiB of memory" in line and "--skip_pattern_print" in line
    assert main(["patterns", "--size", "100000", "--full_png", "--skip_pattern_print",
                 "--output_dir", str(tmp_path)]) == 2
    assert "drop --full_png" in error_line(capsys.readouterr().err, "patterns")
    # the sparsity lines alone need no points: counted a chunk of rows at a time
    assert main(["patterns", "--size", "1000000", "--skip_pattern_print", "--no_graphic"]) == 0
    assert "Normal Mask Sparsity: 50.0000%" in capsys.readouterr().out
    assert not any(tmp_path.iterdir())


def test_bad_results_dir_and_unreadable_run_yaml_are_one_line(tmp_path, rec_path, capsys):
    """``sah tune`` with a --results-dir that is a file, lies under a file or is not
    writable, and ``--resume`` onto an empty, list or invalid run.yaml: each is one error
    line, exit 2, and nothing is written. (Export and compare on broken run folders:
    tests/test_compare.py.)"""
    study = write_study(tmp_path / "s.yaml", sink_local_and_strided(rec_path, "s"))
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    assert main(["tune", "--config", str(study), "--results-dir", str(a_file)]) == 2
    assert "is a file, not a folder" in error_line(capsys.readouterr().err, "tune")
    assert main(["tune", "--config", str(study), "--results-dir", str(a_file / "sub")]) == 2
    assert "which is a file" in error_line(capsys.readouterr().err, "tune")
    if os.geteuid() == 0:  # root writes anywhere except where the kernel refuses
        locked = Path("/sys/sah-results")
    else:
        (tmp_path / "locked").mkdir(mode=0o500)
        locked = tmp_path / "locked" / "results"
    assert main(["tune", "--config", str(study), "--results-dir", str(locked)]) == 2
    assert "cannot write in" in error_line(capsys.readouterr().err, "tune")
    assert not locked.exists()

    results = tmp_path / "results"
    for text in ("", "- a\n- b\n", "study: [\n", "study: 3\n"):
        (results / "s").mkdir(parents=True, exist_ok=True)
        (results / "s" / "run.yaml").write_text(text)
        assert main(["tune", "--config", str(study), "--results-dir", str(results), "--resume"]) == 2
        line = error_line(capsys.readouterr().err, "tune")
        assert "run.yaml" in line and ("not a run.yaml written by sah" in line
                                       or "not valid YAML" in line), line
        assert sorted(p.name for p in (results / "s").iterdir()) == ["run.yaml"]


def test_full_disk_while_writing_outputs_is_one_line_and_resume_writes_them(
        ray_session, rec_path, tmp_path, capsys, monkeypatch):
    """A full disk while a run writes its outputs: one line naming the file and the fix, no
    file half-written, no temp file left, and --resume writes the outputs. (ENOSPC is raised
    by the atomic writer when it writes summary.md.)"""
    import sah.infra.files as files
    real = files._write_and_sync

    def full_disk(fh, data, path):
        if path.name == "summary.md":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fh, data, path)

    monkeypatch.setattr(files, "_write_and_sync", full_disk)
    study = write_study(tmp_path / "s.yaml", sink_local_and_strided(rec_path, "full"))
    args = ["tune", "--config", str(study), "--results-dir", str(tmp_path / "results"), "--quiet"]
    assert main(args) == 2
    line = error_line(capsys.readouterr().err, "tune")
    run_dir = tmp_path / "results" / "full"
    assert "no space left on the device while writing" in line and "summary.md" in line
    assert "--resume" in line
    assert not (run_dir / "summary.md").exists()
    leftovers = [p for p in run_dir.rglob(".*") if "ray" not in p.relative_to(run_dir).parts]
    assert leftovers == []  # no temp file left behind
    assert len(read_csv(run_dir / "trials.csv")) == 6 + 4  # written whole before the failure
    assert "_outputs" not in json.loads((run_dir / "progress.json").read_text())
    monkeypatch.undo()
    assert main([*args, "--resume"]) == 0
    assert (run_dir / "summary.md").is_file()
    assert json.loads((run_dir / "progress.json").read_text())["_outputs"] == "complete"
