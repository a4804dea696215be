"""The documentation says what the code does: sentences that state a behaviour are checked
on the page where they live, and the pages hold together (a short front page whose first
commands are the set-up, links that lead somewhere)."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def page(name):
    """The text of one documentation page, whitespace collapsed to single spaces."""
    return " ".join((ROOT / name).read_text().split())


def markdown_pages():
    return [ROOT / "README.md", *sorted(DOCS.glob("*.md")), *sorted((ROOT / "benchmark").glob("*.md"))]


def without_code(text):
    """Markdown text without fenced code blocks and inline code (links there are not links)."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text)


def anchors(path):
    """GitHub's anchors for the headings of a markdown file."""
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.S | re.M)
    headings = re.findall(r"^#+ (.+)$", text, flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_quest_multi_query_choices_are_documented():
    """Quest with several queries per call: each query bounds its own page by the keys up
    to its position, and pages already all active are skipped (sah's choices beyond the
    spec; tests/test_maskers_top_k.py checks that the code does this)."""
    text = page("docs/maskers.md")
    assert "Quest, several queries per call (sah's choice beyond the spec)" in text
    assert "bounds its own page by the keys up to its position" in text
    assert "pages whose allowed keys are all active already are skipped" in text


def test_command_line_num_samples_wins_is_documented():
    text = page("docs/studies.md")
    assert "`--num-samples` on the command line wins over the study's and every chain's own" in text


def test_qrandint_high_grid_samples_and_quiet_are_documented():
    """``qrandint``'s ``high`` is included, grid domains multiply ``num_samples``, and
    ``--quiet`` exists."""
    text = page("docs/studies.md")
    assert "`high` *included* when it is one" in text
    assert "every sample runs every point of its `grid` domains" in text
    assert "--quiet" in text


def test_readme_is_a_short_front_page():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 300


def test_readme_first_shell_blocks_are_the_two_set_up_commands():
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"^```(\w*)\n(.*?)^```", text, flags=re.S | re.M)
    shell = [body.strip() for lang, body in blocks if lang in ("bash", "sh", "shell", "console")]
    assert shell[:2] == ["bash install.sh && python benchmark/run_optimize_configs.py",
                         "bash install.sh && python3 -m pytest -q"]
    # and they come before any other code block
    assert [lang for lang, _ in blocks[:2]] == ["bash", "bash"]


def test_every_relative_link_points_to_an_existing_file():
    missing = []
    for path in markdown_pages():
        for target in re.findall(r"\]\(([^)\s]+)\)", without_code(path.read_text())):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            file, _, anchor = target.partition("#")
            resolved = (path.parent / file).resolve()
            if not resolved.is_file():
                missing.append(f"{path.relative_to(ROOT)}: {target}")
            elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
                missing.append(f"{path.relative_to(ROOT)}: {target} (no such heading)")
    assert not missing, missing


def test_docs_index_lists_every_page():
    index = (DOCS / "README.md").read_text()
    for path in DOCS.glob("*.md"):
        if path.name != "README.md":
            assert f"]({path.name})" in index, path.name
