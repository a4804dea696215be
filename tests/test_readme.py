"""The README's Python examples run as written, and so do the cheap ones of the docs pages."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
RESOURCES = ROOT / "docs" / "resources.md"


def python_blocks(path=README, start="## A quick tour", end="## Layout"):
    """The ``python`` blocks of ``path`` between two headings (by default the README's API
    tour and masker how-to; other sections show shell commands)."""
    text = path.read_text()
    text = text[text.index(start):text.index(end)]
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def run_blocks(blocks, path):
    for block in blocks:
        namespace = {"__name__": "readme_example"}
        exec(compile(block, str(path), "exec"), namespace)


def test_readme_python_examples_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    blocks = python_blocks()
    assert len(blocks) >= 3
    run_blocks(blocks, README)


def test_resources_and_patterns_python_examples_run(tmp_path, monkeypatch):
    """docs/resources.md: the resource analysis and the structured patterns (numpy only)."""
    monkeypatch.chdir(tmp_path)
    blocks = python_blocks(RESOURCES, "## Mask resource analysis", "## Patterns")
    blocks += python_blocks(RESOURCES, "## Patterns", "![")
    assert len(blocks) == 2
    run_blocks(blocks, RESOURCES)
