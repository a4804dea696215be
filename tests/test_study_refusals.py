"""Bad studies and chain config files are refused before anything is written, with one line
naming the file, the YAML path, the value and the fix: colliding chain names, alias bombs,
absurd totals, unreadable or too deeply nested files, missing or pickled weight files,
duplicate keys and layers, bad ``fit_hash_attention`` options."""

import json
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from sah.attention import ResearchAttentionConfig
from sah.maskers.hash_attention import random_hat_weights
from sah.study.parse import load_study
from sah.infra.checks import ConfigError
from tuning_support import assert_refused, save_synthetic, write_study

ROOT = Path(__file__).resolve().parents[1]


def chain(name, **sink):
    return {"name": name, "maskers": [{"type": "SinkMaskerConfig", "sink_size": 4, **sink},
                                      {"type": "LocalMaskerConfig",
                                       "window_size": {"search": "randint", "low": 2, "high": 9}}]}


def study(rec, **extra):
    data = {"name": "t", "recording": str(rec), "searcher": "random", "num_samples": 2,
            "density_targets": [0.2], "chains": [chain("a")]}
    data.update(extra)
    return data


def test_chain_names_that_would_collide_as_output_files_are_refused(tmp_path, rec_path):
    """Chains ``a`` and ``a.density_0.2`` (target 0.2) would both write
    tuned/a.density_0.2.yaml: names equal up to case, or one being the other plus an output
    suffix (.hub, .density_<t>, .allocated), are refused; names sharing a prefix are fine."""
    for other, path in (("a.density_0.2", "chains[1].name"), ("A", "chains[1].name"),
                        ("a.hub", "chains[1].name"), ("A.Density_0.5", "chains[1].name"),
                        ("a.allocated.density_0.2", "chains[1].name")):
        message = assert_refused(tmp_path, study(rec_path, chains=[chain("a"), chain(other)]), path,
                          repr(other), "rename one")
        assert "'a'" in message
    # the shorter name second: still the pair, blamed on the one with the suffix
    assert_refused(tmp_path, study(rec_path, chains=[chain("b.hub"), chain("b")]), "chains[0].name")
    # names that only share a prefix are fine
    ok = load_study(write_study(tmp_path / "study.yaml", study(
        rec_path, chains=[chain("a"), chain("a.v2"), chain("ab")])))
    assert [c.name for c in ok.chains] == ["a", "a.v2", "ab"]


# "billion laughs" inline: each level repeats the one before 9 times (9**8 = 43 million values)
BOMB = "[&a0 [x, x, x, x, x, x, x, x, x], " + ", ".join(
    f"&a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 8)) + "]"


def test_alias_bombs_are_refused_at_once(tmp_path, rec_path):
    """A YAML alias bomb (43 million values) in ``seed``, a chain name, a masker field or
    ``hat_weights`` is refused at once with a short line naming the file, never formatted
    or serialised; a subprocess with a generous timeout guards against a hang."""
    plain = "chains:\n- name: c\n  maskers: [{type: SinkMaskerConfig, sink_size: 4}]\n"
    cases = {
        "seed": f"seed: {BOMB}\n{plain}",
        "chain name": f"chains:\n- name: {BOMB}\n  maskers: [{{type: SinkMaskerConfig, sink_size: 4}}]\n",
        "masker field": f"chains:\n- name: c\n  maskers: [{{type: SinkMaskerConfig, sink_size: {BOMB}}}]\n",
        "hat_weights": "chains:\n- name: c\n  maskers: [{type: HashAttentionTopKMaskerConfig, "
                       f"heavy_size: 4, hat_weights: {{0: {BOMB}}}}}]\n",
    }
    files = {label: str(write_study(tmp_path / f"{label.replace(' ', '_')}.yaml",
                                    f"name: bomb\nrecording: {rec_path}\n{body}"))
             for label, body in cases.items()}
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


def test_absurd_numbers_of_configurations_are_refused_before_any_is_built(tmp_path, rec_path):
    """``num_samples: 1000000000`` (or a grid that multiplies out past the limit) is checked
    against ``max_configurations`` (study key or --max-configurations) before any
    configuration is built and before anything is written; the limit can be raised."""
    path = write_study(tmp_path / "study.yaml", study(rec_path, num_samples=1_000_000_000))
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
    assert_refused(tmp_path, study(rec_path, chains=[grid]), "1,000,000 configurations")
    # the whole run refuses it too, writing nothing; the limit can be raised
    assert_refused(tmp_path, study(rec_path, num_samples=1_000_000_000), "max_configurations")
    raised = load_study(write_study(tmp_path / "study.yaml", study(
        rec_path, num_samples=1_000_000_000, max_configurations=2_000_000_000)))
    assert raised.chains[0].expected_trials() == 1_000_000_000  # counted, never built
    from sah.cli import main
    small = write_study(tmp_path / "study.yaml", study(rec_path, num_samples=300))
    assert main(["tune", "--config", str(small),
                 "--results-dir", str(tmp_path / "results"), "--max-configurations", "100"]) == 2
    assert not (tmp_path / "results").exists()


def nested(depth):
    """A YAML flow sequence nested ``depth`` levels deep."""
    return "[" * depth + "]" * depth


def test_unreadable_or_too_deep_study_files_and_long_names_are_one_line(tmp_path, rec_path,
                                                                        capsys):
    """Non-UTF-8 YAML, deep nesting and a 300-character --name are each refused with one
    short line naming the file (or flag), and nothing is written. sah's own depth limit
    (100 levels) is checked with its wording; for 100,000 levels only the behaviour is:
    whichever check stops first (sah's, or the YAML library's own scanner limit, which
    newer PyYAML releases reach first), the refusal is one line naming the file."""
    text = yaml.safe_dump(study(rec_path))
    assert_refused(tmp_path, text.encode() + b"# caf\xe9\n", "not UTF-8 text", "byte 0xe9",
                   "save the file as UTF-8")
    assert_refused(tmp_path, text + f"deep: {nested(101)}\n", "nested more than 100 levels")
    assert_refused(tmp_path, text + f"deep: {nested(100000)}\n")
    message = assert_refused(tmp_path, study(rec_path), "name: got a name of 300 characters",
                             "use at most 100", overrides={"name": "n" * 300})
    assert len(message) < 400
    assert_refused(tmp_path, study(rec_path, chains=[chain("c" * 101)]), "chains[0].name",
                   "101 characters")
    # the CLI prints the same single line and exits 2
    from sah.cli import main
    bad = write_study(tmp_path / "bad.yaml", text.encode() + b"\xff\xfe")
    capsys.readouterr()
    assert main(["tune", "--config", str(bad), "--results-dir", str(tmp_path / "results")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(bad) in err and "not UTF-8 text" in err, err
    # chain config files (sah resources/patterns --config) are read the same way
    cfg = tmp_path / "chain.yaml"
    cfg.write_bytes(b"masker_configs: []\n# \xff\n")
    with pytest.raises(ConfigError, match="not UTF-8 text"):
        ResearchAttentionConfig.from_file(cfg)
    cfg.write_text(f"masker_configs: {nested(101)}\n")
    with pytest.raises(ConfigError, match="nested more than 100 levels"):
        ResearchAttentionConfig.from_file(cfg)
    cfg.write_text(f"masker_configs: {nested(50000)}\n")
    with pytest.raises(ConfigError) as info:
        ResearchAttentionConfig.from_file(cfg)
    message = str(info.value)
    assert message.startswith(str(cfg)) and "\n" not in message and len(message) < 600, message
    assert not (tmp_path / "results").exists()


def test_missing_or_pickled_weight_files_are_refused_with_the_study(tmp_path, rec_path):
    """A missing ``hat_weight_file`` (given or among a search's choices) is refused with the
    rest of the study, before anything is written (the driver reads the study's weight files
    before it makes the run folder, sah.runs.artefacts); so is a .pkl without the person's
    opt-in."""
    hat = {"type": "HashAttentionTopKMaskerConfig", "heavy_size": 4, "hat_bits": 8,
           "hat_mlp_layers": 2, "hat_mlp_hidden_size": 6}
    missing = tmp_path / "nowhere.safetensors"
    assert_refused(tmp_path, study(rec_path, chains=[{"name": "h", "maskers": [
        {**hat, "hat_weight_file": str(missing)}]}]),
        "chains[0].maskers[0]: hat_weight_file", str(missing), "no such file")
    assert_refused(tmp_path, study(rec_path, chains=[{"name": "h", "maskers": [
        {**hat, "hat_weight_file": {"search": "choice", "values": [str(missing)]}}]}]),
        "chains[0].maskers[0].hat_weight_file")
    pkl = tmp_path / "w.pkl"
    pkl.write_bytes(pickle.dumps({0: random_hat_weights(2, 1, 16, 8, 2, 6, seed=1)}))
    assert_refused(tmp_path, study(rec_path, chains=[{"name": "h", "maskers": [
        {**hat, "hat_weight_file": str(pkl)}]}]), "can run code", "--allow-pickle")


def test_duplicate_keys_and_layers_are_refused(tmp_path, rec_path):
    """Duplicate YAML or JSON keys (studies and chain config files) and ``layers: [0, 0]``
    are refused with the YAML path and both lines; YAML's merge key may still be
    overridden."""
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
    assert_refused(tmp_path, text,
                   "chains[0].maskers[0].sink_size: key 'sink_size' is given twice",
                   "lines 7 and 8", "keep one")
    assert_refused(tmp_path, text.replace("        sink_size: 8\n", "") + "seed: 1\nseed: 2\n",
                   "seed: key 'seed' is given twice")
    assert_refused(tmp_path, study(rec_path, layers=[0, 0]), "layers[1]: got 0 again",
                   "list each layer once")
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


BAD_FIT_OPTIONS = [
    ({"steps": -1}, "fit_hash_attention.steps: got -1"),
    ({"bits": 0}, "fit_hash_attention.bits: got 0"),
    ({"hat_mlp_hidden_size": 2.5}, "fit_hash_attention.hat_mlp_hidden_size: got 2.5"),
    ({"lr": "fast"}, "fit_hash_attention.lr: got 'fast'"),
    ({"hat_mlp_activation": "softmax"}, "fit_hash_attention.hat_mlp_activation: got 'softmax'"),
    ({"recall_size": 1.5}, "fit_hash_attention.recall_size: got 1.5"),
    ({"steps": True}, "fit_hash_attention.steps: got True"),
    ({"stpes": 3}, "fit_hash_attention.stpes: unknown option"),
    ({"heldout": "x"}, "fit_hash_attention.heldout: unknown option"),
    ({"bits": 8, "hat_bits": 8}, "fit_hash_attention.bits: bits is short for hat_bits"),
    ([1, 2], "fit_hash_attention: got list"),
]


@pytest.mark.parametrize("fit, fragment", BAD_FIT_OPTIONS)
def test_bad_fit_options_are_refused_before_the_run_folder_exists(tmp_path, fit, fragment):
    """Bad ``fit_hash_attention`` values (``steps: -1``, ``bits: 0``, unknown options, ...)
    are refused with the rest of the study, naming the file and YAML path, writing
    nothing."""
    rec = save_synthetic(tmp_path / "rec.safetensors", seed=1, num_keys=128)
    data = {"name": "resumable", "recording": str(rec), "searcher": "random",
            "num_samples": 3, "seed": 1, "fit_hash_attention": fit,
            "chains": [{"name": "hat", "maskers": [
                {"type": "HashAttentionTopKMaskerConfig", "heavy_size": 0.2}]}]}
    message = assert_refused(tmp_path, data)
    assert message.startswith(f"{tmp_path / 'study.yaml'}: {fragment}"), message
