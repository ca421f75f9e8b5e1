"""A non-editable install (what `pip install .` gives a user) still finds every config."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from helpers import REPO

IGNORED = shutil.ignore_patterns(
    ".venv", ".git", "outputs", "build", "*.egg-info", "__pycache__", ".pytest_cache", ".ruff_cache"
)


def test_installed_package_ships_its_configs(tmp_path: Path) -> None:
    source, target = tmp_path / "source", tmp_path / "site"
    shutil.copytree(REPO, source, ignore=IGNORED)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(source),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    shutil.rmtree(source)  # nothing may be read from the source tree any more
    env = {**os.environ, "PYTHONPATH": str(target)}
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import reprlab, reprlab.run.config as c; print(reprlab.__file__); "
            "print(c.config_dir())",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    module_file, conf = probe.stdout.split()
    assert Path(module_file).is_relative_to(target)
    assert Path(conf).is_relative_to(target)
    expected = sorted(p.relative_to(REPO / "conf") for p in (REPO / "conf").rglob("*.yaml"))
    shipped = sorted(p.relative_to(conf) for p in Path(conf).rglob("*.yaml"))
    assert shipped == expected
    shown = subprocess.run(
        [
            sys.executable,
            "-m",
            "reprlab",
            "run",
            "model=resnet18_at",
            "ref=cnn_small",
            "dataset=cifar10",
            "--cfg",
            "job",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert shown.returncode == 0, shown.stderr
    assert "name: resnet18_at" in shown.stdout and "name: cnn_small" in shown.stdout
