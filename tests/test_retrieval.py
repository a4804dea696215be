"""Needle-in-a-haystack retrieval inside the real embedded model (SmolLM2-135M).

Short prompts (a few hundred tokens) keep the forward passes small; the chain runs in every
layer for the question and the answer, as the protocol says.
"""

import json

import pytest
import torch

from sah import ResearchAttention, ResearchAttentionConfig
from sah.inmodel.retrieval import (DENSE, UNSCORED, Answerer, TaskBuilder, depths,
                                   validate_retrieval)
from sah.recording.default_model import load_default_model

pytestmark = pytest.mark.slow

SINK_LOCAL = [{"type": "SinkMaskerConfig", "sink_size": 4},
              {"type": "LocalMaskerConfig", "window_size": 16}]


def chain(*maskers):
    return ResearchAttentionConfig.from_dict(list(maskers))


@pytest.fixture(scope="module")
def model_and_tokenizer():
    return load_default_model(attn_implementation="sdpa")


# ---------------------------------------------------------------------- tasks
def test_depths_are_evenly_spaced_from_5_to_95_percent():
    assert depths(1) == [0.5]
    assert depths(3) == [0.05, 0.5, 0.95]
    assert depths(20)[0] == 0.05 and depths(20)[-1] == 0.95
    steps = torch.diff(torch.tensor(depths(20), dtype=torch.float64))
    assert torch.allclose(steps, torch.full_like(steps, 0.9 / 19), atol=1e-6)


@pytest.mark.parametrize("task", ["passkey", "niah", "niah_multikey"])
def test_samples_are_exact_length_seeded_and_hold_the_needle_at_its_depth(model_and_tokenizer,
                                                                          task):
    _, tokenizer = model_and_tokenizer
    builder = TaskBuilder(task, tokenizer, "prose" if task != "passkey" else None)
    samples = builder.samples(400, 5)
    again = TaskBuilder(task, tokenizer, "prose" if task != "passkey" else None).samples(400, 5)
    other = TaskBuilder(task, tokenizer, "prose" if task != "passkey" else None,
                        seed=1).samples(400, 5)
    assert [s.value for s in samples] == [s.value for s in again]
    assert all(torch.equal(a.ids, b.ids) for a, b in zip(samples, again))
    assert [s.value for s in samples] != [s.value for s in other]
    assert len({s.value for s in samples}) == 5
    positions = []
    for sample in samples:
        assert sample.ids.shape == (1, 400)
        text = tokenizer.decode(sample.ids[0].tolist())
        assert text.count(sample.value) == (2 if task == "passkey" else 1)
        question = tokenizer.decode(sample.ids[0, sample.context:].tolist())
        assert "pass key" in question if task == "passkey" else sample.key in question
        assert sample.value not in question
        needle = tokenizer.decode(sample.ids[0, sample.position:sample.position + 25].tolist())
        assert sample.value in needle
        # the needle starts near its nominal depth of the context (a sentence boundary)
        assert abs(sample.position / sample.context - sample.depth) < 0.12
        positions.append(sample.position)
        if task == "niah_multikey":
            assert text.count("special magic numbers for") == 4
            keys = [text.split("special magic numbers for ")[i + 1].split(" ")[0]
                    for i in range(4)]
            assert len(set(keys)) == 4 and f"{sample.key}" in keys
    assert positions == sorted(positions) and positions[0] < positions[-1]


# ---------------------------------------------------------------------- answers
def test_dense_finds_the_pass_key_and_a_short_local_window_does_not(model_and_tokenizer):
    """The answer runs with the chain in every layer: sink 4 + local 16 cannot see a needle
    hundreds of tokens back; the dense prefill is reused unchanged for every config."""
    model, tokenizer = model_and_tokenizer
    answerer = Answerer(model, tokenizer)
    sample = TaskBuilder("passkey", tokenizer).samples(320, 3)[0]  # depth 5%
    cache = answerer.prefill(sample)
    keys_before = cache.layers[3].keys.clone()
    dense = answerer.answer(sample, cache)
    assert dense.passed and sample.value in dense.text and dense.new_tokens <= 8
    local = answerer.answer(sample, cache, ResearchAttention.create_from_config(chain(*SINK_LOCAL)))
    assert not local.passed and local.new_tokens >= 1
    assert cache.get_seq_length() == sample.context
    assert torch.equal(cache.layers[3].keys, keys_before)
    assert answerer.answer(sample, cache).text == dense.text  # same prefill, same answer


def test_validate_retrieval_scores_per_depth_and_shares_one_prefill(model_and_tokenizer):
    local = chain(*SINK_LOCAL)
    top_k = chain(*SINK_LOCAL, {"type": "OracleTopKConfig", "heavy_size": 0.1})
    results = validate_retrieval({"local": local, "top_k": top_k}, ["passkey"], [320], 3,
                                 model=model_and_tokenizer)
    assert [(e.config, e.task, e.tokens, e.samples) for e in results.entries] == \
        [(DENSE, "passkey", 320, 3), ("local", "passkey", 320, 3), ("top_k", "passkey", 320, 3)]
    dense, local_entry, top_k_entry = results.entries
    assert dense.accuracy == 1.0 and dense.per_depth == {"0.05": 1.0, "0.5": 1.0, "0.95": 1.0}
    assert top_k_entry.accuracy == 1.0
    assert local_entry.per_depth["0.05"] == 0.0 and local_entry.accuracy < 1.0
    assert len(results.answers) == 9 and len(results.prefill) == 1
    data = results.to_dict()
    assert set(data["entries"][0]) >= {"config", "task", "tokens", "samples", "accuracy",
                                       "per_depth"}
    assert "| local |" in results.table() and "5%" in results.table()


def test_a_length_the_model_cannot_do_is_reported_not_scored(model_and_tokenizer):
    """With one new token the dense model cannot write a 5-digit key: dense scores 0, the
    chains are not scored (and not run once dense has failed more than 10% of samples)."""
    results = validate_retrieval({"local": chain(*SINK_LOCAL)}, ["passkey"], [200], 3,
                                 model=model_and_tokenizer, max_new_tokens=1)
    dense, local = results.entries
    assert dense.accuracy == 0.0 and dense.scored
    assert local.accuracy is None and local.per_depth is None and not local.scored
    assert local.note == UNSCORED and UNSCORED in results.table()
    assert len([a for a in results.answers if a.config == "local"]) == 1


# ---------------------------------------------------------------------- the command
@pytest.fixture
def cli(model_and_tokenizer, monkeypatch, capsys):
    """``sah validate`` in-process; the model load returns the module's loaded model."""
    from sah.cli import main
    from sah.recording import default_model

    loads = []
    monkeypatch.setattr(default_model, "load_model",
                        lambda name, **kw: loads.append(name) or model_and_tokenizer)

    def run(*argv):
        code = main(["validate", *map(str, argv)])
        out, err = capsys.readouterr()
        return code, out, err, loads
    return run


def test_validate_task_command_writes_one_entry_per_config_task_and_length(cli, tmp_path):
    local = tmp_path / "local.yaml"
    chain(*SINK_LOCAL).to_file(local)
    out = tmp_path / "r.json"
    code, stdout, _, loads = cli("--task", "passkey", "--task", "niah", "--config", local,
                                 "--tokens", 256, "--tokens", 320, "--samples", 2,
                                 "--text", "prose", "--json", out, "--quiet")
    assert code == 0 and loads == ["default"]
    data = json.loads(out.read_text())
    keys = [(e["config"], e["task"], e["tokens"]) for e in data["entries"]]
    assert keys == [(c, t, n) for t in ("passkey", "niah") for n in (256, 320)
                    for c in (DENSE, str(local))]
    for entry in data["entries"]:
        assert entry["samples"] == 2
        if entry["scored"]:
            assert set(entry["per_depth"]) == {"0.05", "0.95"}
            assert entry["accuracy"] == sum(entry["per_depth"].values()) / 2
    assert "passkey, 256 tokens, 2 samples" in stdout and f"wrote {out}" in stdout


def test_validate_task_command_refuses_bad_input_in_one_line(cli, tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("masker_configs: []\n")
    short = tmp_path / "short.txt"
    short.write_text("just a few words. " * 20)
    out = tmp_path / "r.json"
    base = ["--config", good, "--json", out, "--quiet"]
    cases = [
        (["--task", "passkeys"], ["--task", "passkeys", "passkey, niah, niah_multikey"]),
        (["--task", "passkey", "--tokens", 9000], ["--tokens", "got 9000", "8192 positions"]),
        (["--task", "passkey", "--tokens", 30], ["--tokens", "got 30", "at least"]),
        (["--task", "niah_multikey", "--tokens", 100], ["--tokens", "got 100", "at least"]),
        (["--task", "passkey", "--samples", 0], ["--samples", "got 0", "at least 1"]),
        (["--task", "niah", "--text", short, "--tokens", 1024],
         ["--text", "short.txt", "shorter than a 1024-token niah prompt"]),
        (["--task", "niah", "--text", "nosuch"], ["--text", "nosuch"]),
        (["--task", "passkey", "--text", "docs"], ["--text", "passkey uses its own filler"]),
        (["--task", "passkey", "--positions", 16], ["--positions", "--task"]),
        (["--task", "passkey", "--tokens", 256, "--tokens", 256], ["--tokens 256", "twice"]),
        (["--text", "docs", "--samples", 3], ["--samples", "--task"]),
    ]
    for argv, needles in cases:
        code, stdout, stderr, loads = cli(*base, *argv)
        lines = stderr.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith("sah validate: error: "), \
            (argv, stderr)
        for needle in needles:
            assert needle in lines[0], (needle, lines[0])
        assert not out.exists() and stdout == ""
        assert loads == [], (argv, loads)  # refused before the model loads
