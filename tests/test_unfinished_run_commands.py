"""Commands that take a finished run say so when the run did not finish: ``sah allocate``
and ``sah transfer`` refuse an interrupted run with one line (finish it with
``--resume``, or ``--partial``); with ``--partial``, transfer names the chains that have
no finished trial instead of dropping them silently; a ``trials.csv`` without a completed
trial is refused rather than printed as an empty table."""

import shutil

import pytest

from run_folder_support import interrupted_run, sah

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return interrupted_run(tmp_path_factory.mktemp("halfway"))


def refused(result, *fragments):
    code, out, err = result
    assert code == 2, (out, err)
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, err
    assert out == ""


def test_allocate_and_transfer_refuse_an_interrupted_run(run):
    _, run_dir = run
    rec = run_dir.parent.parent / "rec.safetensors"
    for argv in (("allocate", run_dir, "--chain", "sink_local", "--density", "0.5",
                  "--no-validate", "--quiet"),
                 ("transfer", run_dir, "--recording", rec, "--quiet")):
        refused(sah(*argv), f"{run_dir}: the run did not finish", "sink_local, later",
                "sah tune --resume", "--partial")


def test_transfer_partial_names_the_chain_without_finished_trials(run):
    _, run_dir = run
    rec = run_dir.parent.parent / "rec.safetensors"
    code, out, err = sah("transfer", run_dir, "--recording", rec, "--partial", "--quiet")
    assert code == 0, err
    assert "chain(s) later have no completed trial and are left out" in out
    assert "the run did not finish (--partial)" in out
    assert "| sink_local |" in out


def test_transfer_of_a_header_only_trials_table_is_refused(run, tmp_path):
    _, run_dir = run
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    trials = copy / "trials.csv"
    trials.write_text(trials.read_text().splitlines(keepends=True)[0])
    rec = run_dir.parent.parent / "rec.safetensors"
    refused(sah("transfer", copy, "--recording", rec, "--partial", "--quiet"),
            f"{trials}: no completed trial in any chain (0 row(s))")
