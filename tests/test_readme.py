"""The README's commands are the ones CI runs."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _bash_blocks(text: str) -> list[str]:
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", text, flags=re.DOTALL)]


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    blocks = _bash_blocks(readme)
    setup, run, test = blocks[0], blocks[1], blocks[2]
    assert 'pip install -e ".[dev]" -c constraints.txt' in setup
    assert 'python -m pip install --quiet -e ".[dev]" -c constraints.txt' in ci
    assert run.startswith("guardreasoner-vl moderate")
    assert ci.rstrip().splitlines()[-1] == test  # the last thing CI does is the README's test command


def test_readme_has_no_unfilled_placeholders():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert not re.search(r"^[A-Z_]+_SECTION$", readme, flags=re.MULTILINE)
