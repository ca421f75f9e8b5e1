"""`reprlab run --help`, `--cfg` and refusals: one line, exit 2, the closest match named, and no
torch import (they answer in about a second)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from helpers import REPO, reprlab_env

from reprlab.cli.app import main


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["run", *args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    ("args", "suggestion"),
    [
        (["analysis.exampels=100"], "did you mean analysis.examples?"),
        (["modle=cnn_small"], "did you mean model?"),
        (["model=cnn_smal"], "did you mean cnn_small?"),
        (["--cfgg", "job"], "did you mean --cfg?"),
        (["analysis=stitching", "analysis.stich=conv"], "did you mean analysis.stitch?"),
        (["--cfg", "jb"], "did you mean job?"),
        (["--config-name", "mine"], "experiment file"),
    ],
)
def test_a_typo_gets_one_line_naming_the_closest_match(
    capsys: pytest.CaptureFixture[str], args: list[str], suggestion: str
) -> None:
    code, out, err = _run(capsys, *args)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("reprlab: error: ")
    assert suggestion in err


def test_multirun_with_cfg_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(capsys, "-m", "model=cnn_small,cnn_small_at", "--cfg", "job")
    assert code == 2 and err.count("\n") == 1
    assert "cannot be combined with -m" in err and "Traceback" not in err


def test_cfg_job_resolve_prints_the_resolved_config(capsys: pytest.CaptureFixture[str]) -> None:
    # cka_epochs' snapshot list comes from a resolver: it must come back as a list OmegaConf takes
    code, out, err = _run(
        capsys, "analysis=cka_epochs", "model.train.epochs=3", "--cfg", "job", "--resolve"
    )
    assert code == 0, err
    import yaml

    assert yaml.safe_load(out)["model"]["snapshot_epochs"] == [1, 2, 3]
    assert "${" not in out  # every interpolation resolved


def test_help_shows_the_chosen_analysis_keys_with_comments(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = _run(capsys, "analysis=stitching", "--help")
    assert code == 0
    assert "analysis=stitching: its keys" in out
    assert "stitch: conv" in out and "Bansal et al. 2021" in out  # a key and its comment
    for group in ("dataset", "model", "attack", "analysis", "logger", "experiment"):
        assert f"\n  {group} " in out
    assert max(len(line) for line in out.splitlines()) <= 120


def test_help_cfg_and_refusals_never_import_torch() -> None:
    script = (
        "import sys, contextlib, io\n"
        "from reprlab.cli.app import main\n"
        "codes = []\n"
        "for args in (['--help'], ['analysis=stir', '--help'], ['model=nope'],\n"
        "             ['analysis.exampels=1'], ['--cfg', 'job', '--resolve']):\n"
        "    with contextlib.redirect_stdout(io.StringIO()), "
        "contextlib.redirect_stderr(io.StringIO()):\n"
        "        try:\n"
        "            codes.append(main(['run', *args]))\n"
        "        except SystemExit as e:\n"
        "            codes.append(e.code or 0)\n"
        "print(codes, 'torch' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, env=reprlab_env(), capture_output=True,
        text=True, timeout=120,
    )  # fmt: skip
    assert done.stdout.strip() == "[0, 0, 2, 2, 0] False", done.stderr
