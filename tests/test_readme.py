"""The README's Python examples run as written."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks():
    """Blocks of the API tour and the masker how-to (other sections show shell commands)."""
    text = README.read_text()
    text = text[text.index("## A quick tour"):text.index("## Layout")]
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_readme_python_examples_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    blocks = python_blocks()
    assert len(blocks) >= 3
    for block in blocks:
        namespace = {"__name__": "readme_example"}
        exec(compile(block, str(README), "exec"), namespace)
