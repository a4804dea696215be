"""Issue 15 (hardening), the study side: bad studies and chain configs are refused before
anything is written, with one line naming the file, the YAML path, the value and the fix."""

import json
import math
import os
import pickle
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from sah.tuning.search_space import ray_domain
import yaml

from sah.attention import ResearchAttentionConfig
from sah.maskers.hash_attention import random_hat_weights
from sah.objectives import get_objective, pareto_front, sparsity_objective
from sah.recording import make_synthetic_recording, save_recording
from sah.tuning.runner import RunOptions, run_study
from sah.study.space import Domain
from sah.study.parse import load_study
from sah.infra.checks import ConfigError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def rec_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("rec") / "rec.safetensors"
    save_recording(make_synthetic_recording(num_layers=2, num_heads=2, num_kv_heads=1,
                                            head_dim=16, num_keys=64, num_queries=4), path)
    return path


def chain(name, **sink):
    return {"name": name, "maskers": [{"type": "SinkMaskerConfig", "sink_size": 4, **sink},
                                      {"type": "LocalMaskerConfig",
                                       "window_size": {"search": "randint", "low": 2, "high": 9}}]}


def study(rec, **extra):
    data = {"name": "t", "recording": str(rec), "searcher": "random", "num_samples": 2,
            "density_targets": [0.2], "chains": [chain("a")]}
    data.update(extra)
    return data


def write(tmp_path, data, name="study.yaml"):
    path = tmp_path / name
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


def refused(tmp_path, data, *fragments, overrides=None):
    """Run the study: it must be refused with one line holding ``fragments``, and nothing
    written."""
    path = write(tmp_path, data)
    results = tmp_path / "results"
    options = RunOptions(config=str(path), results_dir=str(results), progress=False,
                         **(overrides or {}))
    with pytest.raises((ConfigError, FileNotFoundError, FileExistsError)) as info:
        run_study(options)
    message = str(info.value)
    assert "\n" not in message and len(message) < 600, message
    assert str(path) in message, message
    for fragment in fragments:
        assert fragment in message, message
    assert not results.exists()
    return message


# ---------------------------------------------------------------------- item 4
def test_issue15_item4_chain_names_that_collide_as_output_files_are_refused(tmp_path, rec_path):
    """issue 15 item 4: chains ``a`` and ``a.density_0.2`` (target 0.2) both wrote
    tuned/a.density_0.2.yaml; names equal up to case, or one being the other plus an
    output suffix (.hub, .density_<t>, .allocated), are refused."""
    for other, path in (("a.density_0.2", "chains[1].name"), ("A", "chains[1].name"),
                        ("a.hub", "chains[1].name"), ("A.Density_0.5", "chains[1].name"),
                        ("a.allocated.density_0.2", "chains[1].name")):
        message = refused(tmp_path, study(rec_path, chains=[chain("a"), chain(other)]), path,
                          repr(other), "rename one")
        assert "'a'" in message
    # the shorter name second: still the pair, blamed on the one with the suffix
    refused(tmp_path, study(rec_path, chains=[chain("b.hub"), chain("b")]), "chains[0].name")
    # names that only share a prefix are fine
    ok = load_study(write(tmp_path, study(rec_path, chains=[chain("a"), chain("a.v2"),
                                                            chain("ab")])))
    assert [c.name for c in ok.chains] == ["a", "a.v2", "ab"]


# ---------------------------------------------------------------------- item 5
# "billion laughs" inline: each level repeats the one before 9 times (9**8 = 43 million values)
BOMB = "[&a0 [x, x, x, x, x, x, x, x, x], " + ", ".join(
    f"&a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 8)) + "]"


def test_issue15_item5_alias_bombs_fail_at_once(tmp_path, rec_path):
    """issue 15 item 5: a YAML alias bomb (43 million values) in ``seed``, a chain name, a
    masker field or ``hat_weights`` hung validation (the message formatted the value; the
    weights went through json.dumps). Each is refused at once with a short message; a
    subprocess with a generous timeout guards against the hang."""
    plain = "chains:\n- name: c\n  maskers: [{type: SinkMaskerConfig, sink_size: 4}]\n"
    cases = {
        "seed": f"seed: {BOMB}\n{plain}",
        "chain name": f"chains:\n- name: {BOMB}\n  maskers: [{{type: SinkMaskerConfig, sink_size: 4}}]\n",
        "masker field": f"chains:\n- name: c\n  maskers: [{{type: SinkMaskerConfig, sink_size: {BOMB}}}]\n",
        "hat_weights": "chains:\n- name: c\n  maskers: [{type: HashAttentionTopKMaskerConfig, "
                       f"heavy_size: 4, hat_weights: {{0: {BOMB}}}}}]\n",
    }
    files = {label: str(write(tmp_path, f"name: bomb\nrecording: {rec_path}\n{body}",
                              f"{label.replace(' ', '_')}.yaml")) for label, body in cases.items()}
    script = textwrap.dedent(f"""\
        import json, sys
        from sah.tuning.runner import RunOptions, run_study
        out = {{}}
        for label, path in {json.dumps(files)}.items():
            try:
                run_study(RunOptions(config=path, results_dir={str(tmp_path / 'results')!r},
                                     progress=False))
                out[label] = "accepted"
            except Exception as exc:
                out[label] = str(exc)
        print(json.dumps(out))
        """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=240, cwd=str(ROOT), env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-2000:]
    messages = json.loads(done.stdout.strip().splitlines()[-1])
    for label, message in messages.items():
        assert "expands to more than 100,000 values" in message, (label, message[:300])
        assert files[label] in message and "\n" not in message and len(message) < 400
    assert not (tmp_path / "results").exists()


# ---------------------------------------------------------------------- item 6
def test_issue15_item6_absurd_totals_are_refused_up_front(tmp_path, rec_path):
    """issue 15 item 6: ``num_samples: 1000000000`` was accepted and the driver built every
    configuration until it crashed, leaving run.yaml behind. The total is checked against
    ``max_configurations`` (study key or --max-configurations) before anything is built."""
    path = write(tmp_path, study(rec_path, num_samples=1_000_000_000))
    with pytest.raises(ConfigError) as info:
        load_study(path)
    message = str(info.value)
    assert message.startswith(f"{path}: chains[0]: ") and "1,000,000,000 configurations" in message
    assert "max_configurations = 100,000" in message and "--max-configurations" in message
    # a grid that multiplies out past the limit is refused the same way
    grid = {"name": "g", "searcher": "grid", "maskers": [
        {"type": "StridedPatternConfig",
         "window_size": {"search": "grid", "values": list(range(1, 101))},
         "stride": {"search": "grid", "values": list(range(1, 101))}},
        {"type": "SinkMaskerConfig", "sink_size": {"search": "grid", "values": list(range(1, 101))}}]}
    refused(tmp_path, study(rec_path, chains=[grid]), "1,000,000 configurations")
    # the whole run refuses it too, writing nothing; the limit can be raised
    refused(tmp_path, study(rec_path, num_samples=1_000_000_000), "max_configurations")
    raised = load_study(write(tmp_path, study(rec_path, num_samples=1_000_000_000,
                                              max_configurations=2_000_000_000)))
    assert raised.chains[0].expected_trials() == 1_000_000_000  # counted, never built
    from sah.cli import main
    assert main(["tune", "--config", str(write(tmp_path, study(rec_path, num_samples=300))),
                 "--results-dir", str(tmp_path / "results"), "--max-configurations", "100"]) == 2
    assert not (tmp_path / "results").exists()


# ---------------------------------------------------------------------- item 10 (study input)
def test_issue15_item10_unreadable_study_files_are_one_line(tmp_path, rec_path):
    """issue 15 item 10: non-UTF-8 YAML, 100000-deep nesting and a 300-character --name
    gave tracebacks; each is one line naming the file (or flag), and nothing is written."""
    text = yaml.safe_dump(study(rec_path))
    refused(tmp_path, text.encode() + b"# caf\xe9\n", "not UTF-8 text", "byte 0xe9", "save the file as UTF-8")
    refused(tmp_path, text + "deep: " + "[" * 100000 + "]" * 100000 + "\n", "nested more than 100 levels")
    message = refused(tmp_path, study(rec_path), "name: got a name of 300 characters",
                      "use at most 100", overrides={"name": "n" * 300})
    assert len(message) < 400
    refused(tmp_path, study(rec_path, chains=[chain("c" * 101)]), "chains[0].name", "101 characters")
    # the CLI prints the same single line and exits 2
    from sah.cli import main
    bad = write(tmp_path, text.encode() + b"\xff\xfe", "bad.yaml")
    assert main(["tune", "--config", str(bad), "--results-dir", str(tmp_path / "results")]) == 2
    # chain config files (sah resources/patterns --config) are read the same way
    cfg = tmp_path / "chain.yaml"
    cfg.write_bytes(b"masker_configs: []\n# \xff\n")
    with pytest.raises(ConfigError, match="not UTF-8 text"):
        ResearchAttentionConfig.from_file(cfg)
    cfg.write_text("masker_configs: " + "[" * 50000 + "]" * 50000 + "\n")
    with pytest.raises(ConfigError, match="nested more than 100 levels"):
        ResearchAttentionConfig.from_file(cfg)
    assert not (tmp_path / "results").exists()


# ---------------------------------------------------------------------- item 11 (last clause)
def test_issue15_item11_missing_weight_file_is_checked_with_the_study(tmp_path, rec_path):
    """issue 15 item 11 (last clause): a missing ``hat_weight_file`` was not checked before
    the run (the chain just failed). It is checked with the rest of the study, before
    anything is written (the driver reads the study's weight files before it makes the run
    folder, sah.runs.artefacts); so is a .pkl without the person's opt-in."""
    hat = {"type": "HashAttentionTopKMaskerConfig", "heavy_size": 4, "hat_bits": 8,
           "hat_mlp_layers": 2, "hat_mlp_hidden_size": 6}
    missing = tmp_path / "nowhere.safetensors"
    refused(tmp_path, study(rec_path, chains=[{"name": "h", "maskers": [
        {**hat, "hat_weight_file": str(missing)}]}]),
        "chains[0].maskers[0]: hat_weight_file", str(missing), "no such file")
    refused(tmp_path, study(rec_path, chains=[{"name": "h", "maskers": [
        {**hat, "hat_weight_file": {"search": "choice", "values": [str(missing)]}}]}]),
        "chains[0].maskers[0].hat_weight_file")
    pkl = tmp_path / "w.pkl"
    pkl.write_bytes(pickle.dumps({0: random_hat_weights(2, 1, 16, 8, 2, 6, seed=1)}))
    refused(tmp_path, study(rec_path, chains=[{"name": "h", "maskers": [
        {**hat, "hat_weight_file": str(pkl)}]}]), "can run code", "--allow-pickle")


# ---------------------------------------------------------------------- item 12
def test_issue15_item12_duplicate_keys_and_layers_are_refused(tmp_path, rec_path):
    """issue 15 item 12: duplicate YAML keys (studies and chain config files) and
    ``layers: [0, 0]`` were accepted silently; they are refused with the YAML path."""
    text = textwrap.dedent(f"""\
        name: dup
        recording: {rec_path}
        chains:
          - name: a
            maskers:
              - type: SinkMaskerConfig
                sink_size: 4
                sink_size: 8
        """)
    refused(tmp_path, text, "chains[0].maskers[0].sink_size: key 'sink_size' is given twice",
            "lines 7 and 8", "keep one")
    refused(tmp_path, text.replace("        sink_size: 8\n", "") + "seed: 1\nseed: 2\n",
            "seed: key 'seed' is given twice")
    refused(tmp_path, study(rec_path, layers=[0, 0]), "layers[1]: got 0 again", "list each layer once")
    cfg = tmp_path / "chain.yaml"
    cfg.write_text("masker_configs:\n- type: SinkMaskerConfig\n  sink_size: 4\n  sink_size: 8\n")
    with pytest.raises(ConfigError, match=r"masker_configs\[0\]\.sink_size: key 'sink_size' is given twice"):
        ResearchAttentionConfig.from_file(cfg)
    cfg = tmp_path / "chain.json"
    cfg.write_text('{"masker_configs": [{"type": "SinkMaskerConfig", "sink_size": 4, "sink_size": 8}]}')
    with pytest.raises(ConfigError, match="given twice"):
        ResearchAttentionConfig.from_file(cfg)
    # YAML's merge key may still be overridden, as YAML intends
    from sah.infra.safe_yaml import load_yaml
    data = load_yaml("base: &b {type: SinkMaskerConfig, sink_size: 4}\n"
                     "masker_configs:\n- {<<: *b, sink_size: 8}\n", "merge.yaml")
    assert data["masker_configs"] == [{"type": "SinkMaskerConfig", "sink_size": 8}]


# ---------------------------------------------------------------------- item 18
def brute_force_front(points):
    """The dominance rule itself: keep every finite point no other point dominates."""
    finite = [i for i, (d, e) in enumerate(points) if math.isfinite(d) and math.isfinite(e)]
    keep = [i for i in finite if not any(
        points[j][0] <= points[i][0] and points[j][1] <= points[i][1]
        and (points[j][0] < points[i][0] or points[j][1] < points[i][1]) for j in finite)]
    return sorted(keep, key=lambda i: (points[i][0], points[i][1], i))


def test_issue15_item18_pareto_keeps_duplicates_and_objectives_take_any_number():
    """issue 15 item 18: ``pareto_front`` dropped exact duplicates that its own dominance
    rule keeps; ``sparsity_.5`` and ``sparsity_1e1`` were refused although the spec allows
    any number. Negative and non-finite targets get a clear message."""
    assert pareto_front([(0.1, 0.5), (0.1, 0.5), (0.2, 0.1)]) == [0, 1, 2]
    rnd = random.Random(15)
    for _ in range(300):
        pts = [(rnd.choice([0.1, 0.2, 0.3, rnd.random()]), rnd.choice([0.5, 0.25, rnd.random()]))
               for _ in range(rnd.randint(1, 30))]
        pts += rnd.sample(pts, rnd.randint(0, len(pts)))  # exact duplicates
        if rnd.random() < 0.3:
            pts.append((float("nan"), 0.0))
        rnd.shuffle(pts)
        assert pareto_front(pts) == brute_force_front(pts), pts
    for name, target in (("sparsity_.5", 0.5), ("sparsity_1e1", 10.0), ("sparsity_5.", 5.0),
                         ("sparsity_2.5E0", 2.5), ("sparsity_0", 0.0)):
        for error, density in ((0.1, 0.001), (0.3, 0.2)):
            assert get_objective(name)(error, density) == sparsity_objective(target)(error, density)
    for name, why in (("sparsity_-5", "negative"), ("sparsity_nan", "not a finite"),
                      ("sparsity_inf", "not a finite"), ("sparsity_1e999", "not a finite"),
                      ("sparsity_ten", "not a finite"), ("sparsity_", "not a finite")):
        with pytest.raises(ConfigError, match=why) as info:
            get_objective(name)
        assert "objective: got" in str(info.value) and "sparsity_10" in str(info.value)


# ---------------------------------------------------------------------- item 20
def test_issue15_item20_command_line_num_samples_wins(tmp_path, rec_path):
    """issue 15 item 20: ``--num-samples`` was ignored by chains with their own
    ``num_samples``; the command-line value now wins over the study's and the chains'."""
    own = {**chain("own"), "num_samples": 5}
    path = write(tmp_path, study(rec_path, num_samples=4, chains=[chain("plain"), own]))
    assert [c.num_samples for c in load_study(path).chains] == [4, 5]
    options = RunOptions(config=str(path), num_samples=3)
    forced = load_study(path, options.overrides())
    assert [c.num_samples for c in forced.chains] == [3, 3]
    assert all(c.to_dict()["num_samples"] == 3 for c in forced.chains)  # run.yaml says so
    from sah.cli.tune import add_arguments
    import argparse
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert "wins over" in next(a.help for a in parser._actions if a.dest == "num_samples")


# ---------------------------------------------------------------------- item 25
def test_issue15_item25_readme_states_qrandint_ends_grid_samples_and_quiet():
    """issue 15 item 25: the README did not say whether ``qrandint``'s ``high`` is included,
    that grid domains multiply ``num_samples``, or that ``--quiet`` exists. The docs say so
    (tests/test_docs.py), and ``high`` is included on every path: our sampler, Ray's domain
    and Optuna's."""
    rng = np.random.default_rng(0)
    for low, high, q, values in ((3, 20, 4, {4, 8, 12, 16, 20}), (0, 6, 1, set(range(7))),
                                 (2, 12, 5, {5, 10})):
        domain = Domain.parse({"search": "qrandint", "low": low, "high": high, "q": q}, "x")
        assert {domain.sample(rng) for _ in range(500)} == values
        ray_dom = ray_domain(domain, as_grid=False)
        assert {int(ray_dom.sample()) for _ in range(500)} == values
        from ray.tune.search.optuna import OptunaSearch
        dist = OptunaSearch.convert_search_space({"x": ray_dom})["x"]
        assert set(range(dist.low, dist.high + 1, dist.step)) == values
    with pytest.raises(ConfigError, match="no multiple of q"):
        Domain.parse({"search": "qrandint", "low": 5, "high": 7, "q": 4}, "x")
