"""install.sh, the set-up command: valid bash that says what it does."""

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_install_sh_prints_a_line_before_each_step_and_at_the_end():
    """install.sh is never silent for minutes: it prints a line before each step (what it
    installs) and one at the end; it is valid bash."""
    script = (ROOT / "install.sh").read_text()
    subprocess.run(["bash", "-n", str(ROOT / "install.sh")], check=True)
    lines = [ln.strip() for ln in script.splitlines()]
    installs = [i for i, ln in enumerate(lines) if re.search(r"-m pip install", ln)]
    assert len(installs) >= 3
    for i in installs:
        previous = [ln for ln in lines[:i] if ln and not ln.startswith("#")]
        # the nearest command before each pip install announces it (possibly inside an if)
        announce = [ln for ln in previous[-3:] if ln.startswith(("echo ", "say "))]
        assert announce, f"no line printed before: {lines[i]}"
    assert lines[-1].startswith(("echo ", "say ")) and "done" in lines[-1]
