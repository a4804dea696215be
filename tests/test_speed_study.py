"""A study with `speed:` (real Ray Tune on a tiny synthetic recording): speed.csv holds the
latency ratios, block densities and bytes ratio of every pick, its mask figures agree with
sah.speed on the same tuned files, summary.md has the speed section with the machine,
speed.png is drawn, the finished run is complete for --resume, and a run stopped before
the step finished measures again on --resume without running trials."""

import csv

import pytest
import yaml

from sah.attention import ResearchAttentionConfig
from sah.recording import load_recording
from sah.runs.outputs.speed import COLUMNS
from sah.speed import cpu_model, traffic_figures
from sah.tuning.runner import RunOptions, run_study
from tuning_support import recording_fixture

pytestmark = pytest.mark.slow
LONG_KEYS = 1024


rec_path = recording_fixture("tiny.safetensors", num_layers=2, num_heads=4, num_kv_heads=2,
                             head_dim=16, num_keys=256, num_queries=4, seed=2)


def study(tmp_path, rec_path):
    data = {
        "name": "fast", "recording": str(rec_path), "density_targets": [0.3, 0.6],
        "searcher": "random", "num_samples": 4, "seed": 1,
        "speed": {"long_keys": LONG_KEYS, "repeats": 2},
        "chains": [
            {"name": "sink_local", "maskers": [
                {"type": "SinkMaskerConfig", "sink_size": 4},
                {"type": "LocalMaskerConfig",
                 "window_size": {"search": "uniform", "low": 0.05, "high": 0.6}}]},
            {"name": "quest", "maskers": [
                {"type": "SinkMaskerConfig", "sink_size": 4},
                {"type": "QuestTopKMaskerConfig", "page_size": 16,
                 "heavy_size": {"search": "uniform", "low": 0.05, "high": 0.5}}]},
        ],
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_study_measures_every_pick_speed(ray_session, rec_path, tmp_path, capsys):
    config = study(tmp_path, rec_path)
    run_dir = run_study(RunOptions(config=str(config), results_dir=str(tmp_path / "results"),
                                   progress=False))
    with open(run_dir / "speed.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames) == COLUMNS
        rows = list(reader)
    picks = sorted((r["chain"], r["pick"]) for r in rows)
    expected = sorted((c, p) for c in ("sink_local", "quest")
                      for p in ("best", "density_0.3", "density_0.6")
                      if (run_dir / ("tuned/" + c + (".yaml" if p == "best" else f".{p}.yaml"))).is_file())
    assert picks == expected and ("sink_local", "best") in picks and ("quest", "best") in picks
    trials = {(r["chain"], r["trial"]): r for r in csv.DictReader(open(run_dir / "trials.csv"))}
    recording = load_recording(rec_path)
    for r in rows:
        for key in ("block_density_64", "block_density_128", "bytes_ratio", "latency_ratio",
                    "latency_ratio_long", "ms", "dense_ms", "ms_long", "dense_ms_long"):
            assert float(r[key]) > 0, (key, r)
        assert int(r["keys"]) == 256 and int(r["long_keys"]) == LONG_KEYS
        assert float(r["latency_ratio"]) == pytest.approx(float(r["ms"]) / float(r["dense_ms"]))
        assert r["machine"].startswith(cpu_model())
        # the row's figures are those of its tuned file and its trial
        assert float(r["output_error"]) == pytest.approx(
            float(trials[(r["chain"], r["trial"])]["output_error"]))
        figures = traffic_figures(ResearchAttentionConfig.from_file(run_dir / r["config"]), recording)
        for key, value in figures.items():
            assert float(r[key]) == pytest.approx(value, rel=1e-9)
        # bytes read can never fall below the share of the values read
        assert float(r["bytes_ratio"]) >= 0.5 * float(r["density"]) - 1e-9
    summary = (run_dir / "summary.md").read_text()
    section = summary[summary.index("## Speed"):]
    assert f"Measured on {cpu_model()}" in section
    assert f"latency ratio ({LONG_KEYS} keys)" in section
    assert sum(line.startswith("| sink_local |") or line.startswith("| quest |")
               for line in section.splitlines()) == len(rows)
    assert summary.count("## Speed") == 1
    assert (run_dir / "speed.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the run is complete: --resume measures nothing again
    before = (run_dir / "speed.csv").stat().st_mtime_ns
    capsys.readouterr()
    run_study(RunOptions(config=str(config), results_dir=str(tmp_path / "results"),
                         resume=True, progress=False))
    assert "already complete" in capsys.readouterr().err
    assert (run_dir / "speed.csv").stat().st_mtime_ns == before
    # a run stopped before the step wrote speed.csv: --resume measures the picks again and
    # runs no trial again; the summary keeps one speed section
    (run_dir / "speed.csv").unlink()
    trials_before = (run_dir / "trials.csv").read_text()
    run_study(RunOptions(config=str(config), results_dir=str(tmp_path / "results"),
                         resume=True, progress=False))
    again = list(csv.DictReader(open(run_dir / "speed.csv", newline="")))
    assert [(r["chain"], r["pick"], r["block_density_64"]) for r in again] == \
        [(r["chain"], r["pick"], r["block_density_64"]) for r in rows]
    assert (run_dir / "trials.csv").read_text() == trials_before
    assert (run_dir / "summary.md").read_text().count("## Speed") == 1


def test_speed_section_is_replaced_not_repeated():
    from sah.runs.outputs.speed import with_speed_section
    text = "# Run\n\nbody\n\n## Speed\n\nold\n\n## In-model validation\n\nv\n"
    out = with_speed_section(text, ["", "## Speed", "", "new"])
    assert out == "# Run\n\nbody\n\n## Speed\n\nnew\n\n## In-model validation\n\nv\n"
    assert with_speed_section("# Run\n", ["", "## Speed", "", "new"]) == "# Run\n\n## Speed\n\nnew\n"
