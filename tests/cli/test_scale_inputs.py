"""Bad scale-out inputs: one line, exit 2, nothing written.

In-process like tests/cli/test_user_errors.py: the checks run before Hydra starts, so the working
directory (where ``outputs/`` would land) must stay empty.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import pytest
import torch

from reprlab.cli import launchers
from reprlab.cli.app import main
from reprlab.errors import ReprlabError
from reprlab.runtime import compile_problem, resolve_speed

BASE = ["dataset=synthetic", "model=cnn_small", "analysis=train", "progress=false", "device=cpu"]


@pytest.fixture(autouse=True)
def keep_signal_handlers():
    previous = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, previous)


def refused(cwd: Path, monkeypatch, capsys, *args: str) -> str:
    """Run ``reprlab run <args>`` in ``cwd``; assert exit 2, one line, nothing written."""
    monkeypatch.chdir(cwd)
    code = main(["run", *args])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2, lines
    assert len(lines) == 1, lines
    assert list(cwd.iterdir()) == []
    return lines[0]


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["trainer.devices=4096"], "trainer.devices=4096 is more than this machine has"),
        (["trainer.devices=0"], "trainer.devices=0 is invalid"),
        (["trainer.devices=2", "model.train.batch_size=33"], "does not split over trainer."),
        (["trainer.devices=2", "trainer.sync_batchnorm=true"], "sync_batchnorm=true needs CUDA"),
        (["trainer.bf16=on"], "trainer.bf16=on needs a CUDA device"),
        (["trainer.channels_last=on"], "trainer.channels_last=on needs a CUDA device"),
        (["trainer.compile=sometimes"], "trainer.compile='sometimes' is invalid"),
    ],
)
def test_bad_trainer_settings(tmp_path, monkeypatch, capsys, overrides, expected) -> None:
    assert expected in refused(tmp_path, monkeypatch, capsys, *BASE, *overrides)


def test_compile_requested_where_unsupported(tmp_path, monkeypatch, capsys) -> None:
    """No C++ compiler for Inductor on the CPU: compile=on is refused, auto quietly off."""
    import torch._inductor.config as inductor

    monkeypatch.setattr(inductor.cpp, "cxx", ("/nonexistent/g++",))
    assert "no working C++ compiler" in compile_problem(torch.device("cpu"))
    with pytest.raises(ReprlabError, match=r"trainer\.compile=on is unsupported here"):
        resolve_speed("auto", "auto", "on", torch.device("cpu"))
    # The CLI refuses compile=on on the CPU first, whether or not a compiler is present.
    line = refused(tmp_path, monkeypatch, capsys, *BASE, "trainer.compile=on")
    assert "trainer.compile=on is refused on the CPU" in line
    assert not resolve_speed("auto", "auto", "auto", torch.device("cpu")).compile


def test_speed_switches_resolve_by_device() -> None:
    cpu = resolve_speed("auto", "auto", "off", torch.device("cpu"))
    assert (cpu.bf16, cpu.channels_last, cpu.compile) == (False, False, False)
    off = resolve_speed(False, "off", "false", torch.device("cpu"))
    assert not (off.bf16 or off.channels_last or off.compile)
    with pytest.raises(ReprlabError, match=r"trainer\.bf16=on needs a CUDA device"):
        resolve_speed(True, "auto", "off", torch.device("cpu"))


@pytest.mark.parametrize("launcher", ["submitit_slurm", "slurm", "submitit_local"])
def test_launcher_without_submitit(tmp_path, monkeypatch, capsys, launcher) -> None:
    monkeypatch.setitem(sys.modules, "submitit", None)  # import submitit -> ImportError
    line = refused(
        tmp_path, monkeypatch, capsys, "-m", f"hydra/launcher={launcher}", *BASE, "seed=0,1"
    )
    assert f"hydra/launcher={launcher} needs the hydra-submitit-launcher plugin" in line
    assert "pip install 'reprlab[cluster]'" in line


def test_launcher_without_joblib(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "joblib", None)
    line = refused(tmp_path, monkeypatch, capsys, "-m", "hydra/launcher=joblib", *BASE, "seed=0,1")
    assert "needs the hydra-joblib-launcher plugin" in line


def test_slurm_without_sbatch(tmp_path, monkeypatch, capsys) -> None:
    pytest.importorskip("submitit")
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))
    line = refused(tmp_path, monkeypatch, capsys, "-m", "hydra/launcher=slurm", *BASE, "seed=0,1")
    assert "submits with SLURM's sbatch, which is not on PATH" in line


def test_launcher_cannot_be_swept(tmp_path, monkeypatch, capsys) -> None:
    line = refused(
        tmp_path, monkeypatch, capsys, "-m", "hydra/launcher=joblib,basic", *BASE, "seed=0,1"
    )
    assert "hydra/launcher cannot be swept" in line


MOUNTINFO = """\
22 1 0:21 / / rw,relatime - ext4 /dev/sda1 rw
30 22 0:40 / /shared rw,relatime - nfs4 srv:/export rw,vers=4.2,local_lock=none
31 22 0:41 / /scratch rw,relatime - nfs srv:/scratch rw,vers=3,nolock,local_lock=all
32 22 0:42 / /lustre rw - lustre mds@o2ib:/fs rw,localflock
33 22 0:43 / /lustre2 rw - lustre mds@o2ib:/fs2 rw,flock
34 22 0:44 / /my\\040data rw - nfs4 srv:/d rw,local_lock=flock
"""


@pytest.mark.parametrize(
    ("store", "problem"),
    [
        ("/shared/store", None),
        ("/scratch/me/store", "NFS mounted with nolock"),
        ("/lustre/store", "Lustre mounted localflock"),
        ("/lustre2/store", None),
        ("/my data/store", "NFS mounted with local_lock=flock"),
    ],
)
def test_slurm_refuses_a_store_whose_lock_is_local(store: str, problem: str | None) -> None:
    slurm = launchers.LAUNCHERS["submitit_slurm"]
    check = lambda: launchers.check_cluster(  # noqa: E731
        slurm, [store], which=lambda _: "/usr/bin/sbatch", mountinfo=MOUNTINFO
    )
    if problem is None:
        check()
    else:
        with pytest.raises(ReprlabError, match=problem):
            check()


def test_slurm_warns_about_a_local_store() -> None:
    warnings: list[str] = []
    launchers.check_cluster(
        launchers.LAUNCHERS["submitit_slurm"], ["/home/me/store"],
        which=lambda _: "/usr/bin/sbatch", mountinfo=MOUNTINFO, warn=warnings.append,
        one_node_here=lambda: False,
    )  # fmt: skip
    assert len(warnings) == 1 and "only this machine sees" in warnings[0]
    launchers.check_cluster(
        launchers.LAUNCHERS["submitit_slurm"], ["/home/me/store"],
        which=lambda _: "/usr/bin/sbatch", mountinfo=MOUNTINFO, warn=warnings.append,
        one_node_here=lambda: True,
    )  # fmt: skip
    assert len(warnings) == 1, "a one-node cluster on this machine shares its disk: no warning"
    # local launchers share this machine's store: nothing to check
    launchers.check_cluster(launchers.LAUNCHERS["joblib"], ["/scratch/x"], mountinfo=MOUNTINFO)


def test_trainer_settings_never_change_a_model_store_key() -> None:
    """Speed switches and data parallelism change how a model is trained, not what it is."""
    from reprlab.cli.run import compose_config
    from reprlab.io.store import store_key
    from reprlab.run.config import dataset_spec, recipe
    from reprlab.run.recipes import model_identity

    def key(*overrides: str) -> str:
        cfg = compose_config([*BASE, *overrides])
        return store_key(model_identity(recipe(cfg.model), dataset_spec(cfg.dataset)))

    plain = key()
    for overrides in (
        ["trainer.devices=4", "trainer.sync_batchnorm=true"],
        ["trainer.bf16=off", "trainer.channels_last=on", "trainer.compile=auto"],
    ):
        assert key(*overrides) == plain
    assert key("model.train.batch_size=64") != plain  # the key does see the recipe
