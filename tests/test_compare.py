"""`sah compare` and `sah export` on finished runs: chains as rows and runs as columns, the
fronts plotted together, and one error line for a run folder they cannot use. Two real
Ray Tune runs of a small study."""

import csv
import io

import pytest

from sah.cli import main
from sah.tuning.runner import RunOptions, run_study
from tuning_support import error_line, recording_fixture, sink_local_and_strided, write_study

rec_path = recording_fixture(seed=2)


@pytest.fixture(scope="module")
def two_runs(ray_session, rec_path, tmp_path_factory):
    """Two finished runs of the same study with different seeds."""
    base = tmp_path_factory.mktemp("runs")
    out = []
    for name, seed in (("run_a", 1), ("run_b", 2)):
        study = write_study(base / f"{name}.yaml", sink_local_and_strided(rec_path, name, seed=seed))
        out.append(run_study(RunOptions(config=str(study), results_dir=str(base / "results"),
                                        progress=False)))
    return out


def test_compare_puts_chains_in_rows_runs_in_columns_and_plots_the_fronts(two_runs, tmp_path,
                                                                          capsys):
    """`sah compare` prints a table per quantity with chains as rows and runs as columns
    (not a row per quantity), the same as CSV, and --plot draws the runs' Pareto fronts on
    one figure."""
    run_a, run_b = two_runs
    png = tmp_path / "fronts.png"
    assert main(["compare", str(run_a), str(run_b), "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines.count("| chain | run_a | run_b |") == 4  # score, error, trials, parameters
    assert len(lines) < 40
    score_rows = [ln for ln in lines if ln.startswith("| sink_local |")]
    assert len(score_rows) == 4 and score_rows[0].count("*") >= 1
    assert any("sink_size=" in ln and "window_size=" in ln for ln in score_rows)
    strided = [ln for ln in lines if ln.startswith("| strided |")]
    assert "4/4, 0 bits" in strided[2]
    from sah.runs.outputs import load_run
    from sah.runs.outputs.picks import best_row
    _, rows_a, _ = load_run(run_a)
    assert f"{best_row(rows_a, 'sink_local')['score']:.4g}" in score_rows[0]

    import matplotlib.image
    import matplotlib.pyplot as plt
    image = matplotlib.image.imread(png)
    assert image.shape[0] > 300 and image.shape[1] > 600
    for chain_index in (0, 1):  # both chains' colours are drawn
        colour = plt.get_cmap("tab10")(chain_index)[:3]
        close = (abs(image[..., :3] - colour).max(axis=-1) < 0.05).sum()
        assert close > 100, chain_index

    assert main(["compare", str(run_a), str(run_b), "--format", "csv"]) == 0
    table = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert [r[0] for r in table] == ["chain", "sink_local", "strided"]
    assert "run_a.score" in table[0] and "run_b.parameters" in table[0]


def test_export_and_compare_refuse_a_run_yaml_without_study_and_a_folder_as_output(
        two_runs, tmp_path, capsys):
    """A run.yaml without ``study`` in `sah export` / `sah compare`, and `sah export -o`
    onto a folder: each is one error line, exit 2, and nothing is written."""
    run_a = two_runs[0]
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "run.yaml").write_text("recording: x\n")
    (broken / "trials.csv").write_text((run_a / "trials.csv").read_text())
    assert main(["export", str(broken), "--chain", "strided"]) == 2
    assert "without 'study'" in error_line(capsys.readouterr().err, "export")
    assert main(["compare", str(run_a), str(broken)]) == 2
    assert "without 'study'" in error_line(capsys.readouterr().err, "compare")
    folder = tmp_path / "out"
    folder.mkdir()
    assert main(["export", str(run_a), "--chain", "strided", "-o", str(folder)]) == 2
    assert "is a folder; give a file name" in error_line(capsys.readouterr().err, "export")
    assert not any(folder.iterdir())
