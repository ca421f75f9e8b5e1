"""CI lints as well as tests, and the tree it lints is clean."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO


def make_target(name: str) -> list[str]:
    """The recipe lines of Makefile target ``name``."""
    lines = (REPO / "Makefile").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(rf"{name}\s*:", line))
    recipe = []
    for line in lines[start + 1 :]:
        if not line.startswith("\t"):
            break
        recipe.append(line.strip())
    return recipe


def test_ci_runs_ruff_check_and_format_check_before_the_tests() -> None:
    commands = [
        line.strip()
        for line in (REPO / ".ci" / "run").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert "make lint" in commands and "make test" in commands
    assert commands.index("make lint") < commands.index("make test")
    lint = make_target("lint")
    assert any(re.search(r"ruff check \.$", line) for line in lint), lint
    assert any(re.search(r"ruff format --check \.$", line) for line in lint), lint


def ruff() -> str:
    found = Path(sys.executable).with_name("ruff")
    if found.exists():
        return str(found)
    on_path = shutil.which("ruff")
    if on_path is None:
        pytest.skip("ruff is not installed")
    return on_path


def test_the_tree_passes_the_linters() -> None:
    for command in (["check", "."], ["format", "--check", "."]):
        result = subprocess.run(
            [ruff(), *command], cwd=REPO, capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, result.stdout + result.stderr
