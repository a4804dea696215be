"""A run folder whose ``trials.csv`` or ``per_layer.csv`` was cut mid-line (a copy that
stopped, a full disk) or edited by hand: ``sah export``, ``compare``, ``allocate`` and
``transfer`` each refuse it with one line naming the file and the line, exit 2, and no
traceback."""

import shutil

import pytest

from run_folder_support import interrupted_run, sah

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return interrupted_run(tmp_path_factory.mktemp("halfway"))


def copy_with(run, tmp_path, name, change):
    """A copy of the run folder with ``name`` rewritten by ``change(text)``."""
    _, run_dir = run
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    path = copy / name
    path.write_text(change(path.read_text()))
    return copy


def cut_in_second_row(text):
    lines = text.splitlines(keepends=True)
    assert len(lines) >= 3
    return "".join(lines[:2]) + lines[2][:len(lines[2]) // 2]


def commands(run_dir):
    rec = run_dir.parent.parent / "rec.safetensors"
    return {"export": ("export", run_dir, "--chain", "sink_local"),
            "compare": ("compare", run_dir),
            "allocate": ("allocate", run_dir, "--chain", "sink_local", "--density", "0.5",
                         "--no-validate", "--partial", "--quiet"),
            "transfer": ("transfer", run_dir, "--recording", rec, "--partial", "--quiet")}


def assert_one_line(result, *fragments):
    code, out, err = result
    assert code == 2, (out, err)
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for fragment in fragments:
        assert fragment in err, err


def test_trials_csv_cut_mid_line_is_one_line_for_every_command(run, tmp_path):
    copy = copy_with(run, tmp_path, "trials.csv", cut_in_second_row)
    for name, argv in commands(copy).items():
        assert_one_line(sah(*argv), f"{copy / 'trials.csv'}: line 3:", "fields where the header has")


def test_a_bad_cell_in_trials_csv_names_line_column_and_value(run, tmp_path):
    def spoil(text):
        lines = text.splitlines(keepends=True)
        header = lines[0].rstrip("\n").split(",")
        cells = lines[1].rstrip("\n").split(",")
        cells[header.index("trial")] = "two"
        return "".join([lines[0], ",".join(cells) + "\n", *lines[2:]])
    copy = copy_with(run, tmp_path, "trials.csv", spoil)
    assert_one_line(sah("export", copy, "--chain", "sink_local"),
                    f"{copy / 'trials.csv'}: line 2: column trial holds 'two'")


def test_per_layer_csv_cut_mid_line_is_one_line_for_allocate(run, tmp_path):
    copy = copy_with(run, tmp_path, "per_layer.csv", cut_in_second_row)
    assert_one_line(sah(*commands(copy)["allocate"]), f"{copy / 'per_layer.csv'}: line 3:")
