"""The documentation says what the code does: sentences that state a behaviour are checked
on the page where they live, and the pages hold together (front page size, links)."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def page(name):
    """The text of one documentation page, whitespace collapsed to single spaces."""
    return " ".join((ROOT / name).read_text().split())


def test_quest_multi_query_choices_are_documented():
    """Quest with several queries per call: each query bounds its own page by the keys up
    to its position, and pages already all active are skipped (sah's choices beyond the
    spec; tests/test_hardening_core.py checks that the code does this)."""
    text = page("README.md")
    assert "Quest, several queries per call (sah's choice beyond the spec)" in text
    assert "bounds its own page by the keys up to its position" in text
    assert "pages whose allowed keys are all active already are skipped" in text


def test_command_line_num_samples_wins_is_documented():
    text = page("README.md")
    assert "`--num-samples` on the command line wins over the study's and every chain's own" in text


def test_qrandint_high_grid_samples_and_quiet_are_documented():
    """``qrandint``'s ``high`` is included, grid domains multiply ``num_samples``, and
    ``--quiet`` exists."""
    text = page("README.md")
    assert "`high` *included* when it is one" in text
    assert "every sample runs every point of its `grid` domains" in text
    assert "--quiet" in text
