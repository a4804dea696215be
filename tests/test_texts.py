"""Named texts, text specs (NAME@START), spans, and embedded recording names."""

import pytest

from sah.recording.embedded import MAX_TOKENS, is_embedded_name, parse_embedded, resolve_recording
from sah.recording.texts import (TEXT_NAMES, load_text, parse_text_spec, spans_overlap,
                                 token_window)


def test_named_texts_are_real_and_distinct():
    texts = [load_text(n) for n in TEXT_NAMES]
    assert [t.name for t in texts] == ["docs", "code", "prose", "manual"]
    assert len({t.sha256 for t in texts}) == 4
    assert all(len(t.content) > 60_000 for t in texts[:3]) and len(texts[3].content) > 30_000
    assert "def " in load_text("code").content and "# Lib/argparse.py" in load_text("code").content
    assert "PYTHON SOFTWARE FOUNDATION LICENSE" in load_text("prose").content
    assert load_text("default") is load_text("docs")
    manual = load_text("manual").content  # IDLE's help.html, tags stripped
    assert "Integrated Development and Learning Environment" in manual
    assert "<" + "div" not in manual and "&amp;" not in manual and "\n\n\n" not in manual


def test_html_text_strips_tags_scripts_and_entities():
    from sah.recording.texts import html_text
    page = ("<html><head><style>p {x: 1}</style><script>var a = '<b>';</script></head>"
            "<body><h1>Title</h1>\n\n\n\n  <p>a &amp; b&nbsp;c</p></body></html>")
    assert html_text(page) == "Title\n\na & b\xa0c"


def test_text_files_and_errors(tmp_path):
    f = tmp_path / "a@1.txt"
    f.write_text("hello world")
    assert load_text(str(f)).content == "hello world"
    assert parse_text_spec(str(f)).start == 0  # an existing file with '@' is taken whole
    assert parse_text_spec("prose@4096").text == "prose" and parse_text_spec("prose@4096").start == 4096
    assert str(parse_text_spec("code@7")) == "code@7"
    with pytest.raises(ValueError, match="token offset"):
        parse_text_spec("prose@x")
    with pytest.raises(FileNotFoundError, match="neither a text name"):
        load_text(str(tmp_path / "missing.txt"))
    with pytest.raises(ValueError, match="is a directory"):
        load_text(str(tmp_path))
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\xff\xfe\x00abc")
    with pytest.raises(ValueError, match="not UTF-8"):
        load_text(str(bad), "--text")


class _WordTokenizer:
    """Whitespace 'tokenizer' (ids = word lengths): enough to check windows and margins."""

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [len(w) for w in text.split()]}


def test_token_window_offsets_and_too_short(tmp_path):
    f = tmp_path / "t.txt"
    f.write_text(" ".join("x" * (i % 7 + 1) for i in range(10_000)))
    text = load_text(str(f))
    ids = token_window(_WordTokenizer(), text, 5, 20)
    assert ids.shape == (1, 20) and ids[0].tolist() == [(i % 7 + 1) for i in range(5, 25)]
    with pytest.raises(ValueError, match="has 10000 tokens"):
        token_window(_WordTokenizer(), text, 9_990, 20)


def test_spans_overlap():
    assert spans_overlap(("a", 0, 10), ("a", 9, 20))
    assert not spans_overlap(("a", 0, 10), ("a", 10, 20))
    assert not spans_overlap(("a", 0, 10), ("b", 0, 10))


def test_embedded_names(tmp_path):
    assert parse_embedded("default").text == "docs" and parse_embedded("default").num_tokens == 2048
    item = parse_embedded("prose-8192@100")
    assert (item.text, item.num_tokens, item.start) == ("prose", 8192, 100)
    assert parse_embedded("code@4096").start == 4096
    assert parse_embedded("results/x.safetensors") is None and parse_embedded("novel") is None
    assert parse_embedded("docs").path(tmp_path) != parse_embedded("docs@1").path(tmp_path)
    assert parse_embedded("docs").path(tmp_path) == parse_embedded("default").path(tmp_path)
    with pytest.raises(ValueError, match="64 to 8192 tokens"):
        parse_embedded(f"docs-{MAX_TOKENS + 1}")
    with pytest.raises(ValueError, match="takes no size"):
        parse_embedded("default-4096")
    assert is_embedded_name("docs-99999") and not is_embedded_name("x.safetensors")
    with pytest.raises(ValueError, match="is a directory"):
        resolve_recording(str(tmp_path), "study.yaml: recordings[0]")
    with pytest.raises(FileNotFoundError, match="study.yaml: recordings\\[0\\].*does not exist"):
        resolve_recording(str(tmp_path / "nope.safetensors"), "study.yaml: recordings[0]")
