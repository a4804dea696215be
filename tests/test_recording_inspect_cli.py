"""`sah inspect` statistics (against loop references) and `sah record` on a local HF model dir."""

import json
import math

import pytest
import torch

from sah.cli import main
from sah.recording.format import load_recording, save_recording
from sah.recording.inspect import summarize
from sah.recording.synthetic import make_synthetic_recording


def reference_stats(rec, index, edge, frac):
    """Per-row loops over (head, query): softmax over visible keys, then the three masses."""
    lr = rec.layers[index]
    g = rec.num_heads // rec.num_kv_heads
    first = last = top = 0.0
    rows = 0
    for head in range(rec.num_heads):
        for i, t in enumerate(rec.query_positions.tolist()):
            k = lr.keys[0, head // g, : t + 1].double()
            p = torch.softmax((k @ lr.queries[0, head, i].double()) * rec.scaling, -1)
            first += float(p[:edge].sum())
            last += float(p[max(0, t + 1 - edge):].sum())
            top += float(p.sort(descending=True).values[: math.ceil((t + 1) * frac)].sum())
            rows += 1
    return first / rows, last / rows, top / rows


def test_inspect_statistics_match_loops(tmp_path):
    rec = make_synthetic_recording(num_layers=2, num_heads=4, num_kv_heads=2, head_dim=32,
                                   num_keys=700, num_queries=6, seed=4)
    path = save_recording(rec, tmp_path / "s.safetensors")
    info = summarize(path, edge_keys=50, top_fraction=0.1)
    s = info["summary"]
    assert s["size_bytes"] == path.stat().st_size and s["num_keys"] == 700
    assert (s["num_heads"], s["num_kv_heads"], s["num_queries"], s["dtype"]) == (4, 2, 6, "float16")
    for index, st in enumerate(info["layers"]):
        first, last, top = reference_stats(rec, index, 50, 0.1)
        assert st["first_mass"] == pytest.approx(first, abs=1e-4)
        assert st["last_mass"] == pytest.approx(last, abs=1e-4)
        assert st["top_mass"] == pytest.approx(top, abs=1e-4)


def test_inspect_cli_table_and_json(tmp_path, capsys):
    rec = make_synthetic_recording(num_keys=512, num_queries=4)
    path = save_recording(rec, tmp_path / "s.safetensors")
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    for expected in ("size on disk", "8 query, 2 KV (group 4)", "keys          512",
                     "4 at positions 384..511", "float16", "first 128", "last 128", "top 5%"):
        assert expected in out
    assert main(["inspect", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert [st["layer"] for st in info["layers"]] == [0, 1]


def test_inspect_cli_bad_file(tmp_path, capsys):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"garbage!" * 3)
    assert main(["inspect", str(bad)]) == 2
    assert "sah inspect: error: recording" in capsys.readouterr().err


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    """A real (randomly initialised) Llama and word-level tokenizer saved as a HF directory."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = [f"w{i}" for i in range(200)]
    vocab = {"[UNK]": 0, **{w: i + 1 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                      max_position_embeddings=512)
    model = LlamaForCausalLM(cfg)
    d = tmp_path_factory.mktemp("tiny_llama")
    model.save_pretrained(d)
    fast.save_pretrained(d)
    text = tmp_path_factory.mktemp("text") / "words.txt"
    gen = torch.Generator().manual_seed(1)
    text.write_text(" ".join(words[int(i)] for i in torch.randint(0, 200, (300,), generator=gen)))
    return d, text


def test_record_cli_local_model_dir(tiny_model_dir, tmp_path):
    model_dir, text = tiny_model_dir
    out = tmp_path / "r.safetensors"
    assert main(["record", "--model", str(model_dir), "--text", str(text), "--tokens", "100",
                 "--queries", "5", "--layers", "0,2", "--out", str(out), "--dtype", "float32",
                 "--no-progress"]) == 0
    rec = load_recording(out)
    assert rec.layer_ids == [0, 2] and rec.num_keys == 100 and rec.num_queries == 5
    assert (rec.num_heads, rec.num_kv_heads, rec.head_dim) == (4, 2, 16)
    assert rec.text_source.endswith("words.txt")
    assert rec.metadata["text_name"] == str(text)
    assert (rec.metadata["token_start"], rec.metadata["token_end"]) == (0, 100)
    # the recording reproduces the model's own (eager) attention output at those positions
    from transformers import AutoModelForCausalLM, AutoTokenizer
    model = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="eager").eval()
    ids = AutoTokenizer.from_pretrained(model_dir)(text.read_text(),
                                                   add_special_tokens=False)["input_ids"][:100]
    seen = {}
    hooks = [model.model.layers[i].self_attn.o_proj.register_forward_pre_hook(
        lambda m, a, i=i: seen.__setitem__(i, a[0])) for i in (0, 2)]
    with torch.no_grad():
        model(input_ids=torch.tensor([ids]), use_cache=False)
    for h in hooks:
        h.remove()
    for index, layer in enumerate((0, 2)):
        ours = rec.context(index).dense_output[0].permute(1, 0, 2).reshape(5, 64)
        theirs = seen[layer][0, rec.query_positions]
        assert torch.allclose(ours, theirs, atol=1e-5, rtol=1e-4)


def test_record_cli_text_specs_and_inspect(tiny_model_dir, tmp_path, capsys):
    """--text FILE@START and a named text: the window starts at START, and the recording
    (and `sah inspect`) says which text, its sha256 and which token span it holds."""
    from transformers import AutoTokenizer

    from sah.recording.texts import load_text

    model_dir, text = tiny_model_dir
    base = ["record", "--model", str(model_dir), "--tokens", "60", "--queries", "4",
            "--layers", "1", "--dtype", "float32", "--no-progress"]
    tok = AutoTokenizer.from_pretrained(model_dir)
    ids = tok(text.read_text(), add_special_tokens=False)["input_ids"]
    records = {}
    for start in (0, 40):
        out = tmp_path / f"r{start}.safetensors"
        assert main(base + ["--text", f"{text}@{start}", "--out", str(out)]) == 0
        records[start] = rec = load_recording(out)
        assert (rec.metadata["token_start"], rec.metadata["token_end"]) == (start, start + 60)
        assert rec.metadata["text_sha256"] == load_text(str(text)).sha256
        assert rec.metadata["input_ids_sha256"] == __import__("hashlib").sha256(
            torch.tensor([ids[start:start + 60]]).numpy().tobytes()).hexdigest()
    assert not torch.equal(records[0].layers[0].keys, records[40].layers[0].keys)
    out = tmp_path / "prose.safetensors"
    assert main(base + ["--text", "prose@50", "--out", str(out)]) == 0
    rec = load_recording(out)
    assert rec.metadata["text_name"] == "prose" and rec.text_source.startswith("Python ")
    assert rec.metadata["text_sha256"] == load_text("prose").sha256
    capsys.readouterr()
    assert main(["inspect", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "prose tokens [50, 110) (60 tokens)" in shown
    assert load_text("prose").sha256 in shown and "LICENSE.txt" in shown


@pytest.mark.parametrize("argv,message", [
    (["--text", "/nonexistent.txt"], "--text: /nonexistent.txt is neither a text name"),
    (["--text", "prose@x"], "'x' after '@' is not a token offset"),
    (["--tokens", "10", "--queries", "20"], "--queries (20) cannot exceed --tokens (10)"),
    (["--tokens", "400"], "has 300 tokens; 400 tokens from token 0 need 400"),
    (["--tokens", "100", "--text", "{text}@250"], "has 300 tokens; 100 tokens from token 250 "
                                                  "need 350"),
    (["--tokens", "600"], "--tokens: 600 is past the model's context of 512 tokens"),
    (["--tokens", "100", "--layers", "0,9"], "--layers: [9] outside the model's layers 0..2"),
    (["--chunk-size", "0"], "--chunk-size: got 0"),
])
def test_record_cli_errors(tiny_model_dir, tmp_path, capsys, argv, message):
    model_dir, text = tiny_model_dir
    base = ["record", "--model", str(model_dir), "--text", str(text), "--out",
            str(tmp_path / "x.safetensors"), "--no-progress"]
    assert main(base + [a.replace("{text}", str(text)) for a in argv]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x.safetensors").exists()
