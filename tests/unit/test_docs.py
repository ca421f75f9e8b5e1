"""Documentation a reader can navigate: a short front page, pages that exist, a reference that
matches the configs, and nothing that cites a file or issue outside the repository."""

from __future__ import annotations

import re
import subprocess
import sys

from helpers import REPO

DOCS = REPO / "docs"
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def test_readme_is_a_front_page() -> None:
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines; move detail to docs/"


def test_every_local_link_resolves() -> None:
    broken = []
    for page in [REPO / "README.md", *sorted(DOCS.glob("*.md"))]:
        for target in LINK.findall(page.read_text()):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            if not (page.parent / target).exists():
                broken.append(f"{page.relative_to(REPO)} -> {target}")
    assert not broken, broken


def test_the_reference_matches_the_configs() -> None:
    check = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "gen_docs.py"), "--check"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert check.returncode == 0, check.stderr


def test_every_analysis_key_is_in_the_reference() -> None:
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import gen_docs
    finally:
        sys.path.pop(0)
    reference = (DOCS / "reference.md").read_text()
    missing = []
    for path in sorted((REPO / "reprlab" / "conf" / "analysis").glob("*.yaml")):
        section = reference.split(f"### `{path.stem}`", 1)[-1].split("\n### ", 1)[0]
        missing += [f"{path.stem}: {key}" for key, _, _ in gen_docs.keys(path)
                    if f"| `{key}` |" not in section]  # fmt: skip
    assert not missing, missing
    for group in ("model", "experiment", "analysis", "attack", "dataset"):
        for path in (REPO / "reprlab" / "conf" / group).glob("*.yaml"):
            assert f"`{path.stem}`" in reference, f"{group}={path.stem} is not in the reference"


def test_nothing_cites_files_or_issues_outside_the_repository() -> None:
    files = subprocess.run(
        ["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    pattern = re.compile(r"\b(DESIGN|REFERENCE)\.md|\b[Ii]ssues? \d+|\(issue\b|[Ii]ssue \d+'s")
    offenders = []
    for name in files:
        path = REPO / name
        if path.suffix not in {".py", ".md", ".yaml", ".toml", ".txt", ""} or not path.is_file():
            continue
        if name == "tests/unit/test_docs.py":
            continue
        for number, line in enumerate(path.read_text(errors="ignore").splitlines(), 1):
            if pattern.search(line):
                offenders.append(f"{name}:{number}: {line.strip()[:80]}")
    assert not offenders, "\n".join(offenders)
