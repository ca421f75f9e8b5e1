"""Every bad input is one line, exit 2, nothing written.

The CLI is called in-process (``reprlab.cli.app.main``): a bad input must be refused by the checks
that run before Hydra starts, so no job, directory or store entry is ever created. The run
directory would land in the test's working directory (``paths.outputs`` is relative), which must
stay empty.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import torch

from reprlab.analyses import validate_run
from reprlab.cli.app import main
from reprlab.cli.run import compose_config
from reprlab.errors import ReprlabError
from reprlab.run.config import MAX_SEED, group_options, recipe

BASE = ["dataset=synthetic", "model=cnn_small", "analysis=train", "progress=false"]


@pytest.fixture(autouse=True)
def keep_signal_handlers():
    """``reprlab run`` installs a SIGTERM handler; give the test process its own back."""
    previous = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, previous)


def run_in(cwd: Path, monkeypatch, capsys, *args: str) -> tuple[int, list[str]]:
    monkeypatch.chdir(cwd)
    code = main(["run", *args])
    err = capsys.readouterr().err
    return code, [line for line in err.splitlines() if line.strip()]


# Each observed crash, wrongly accepted value and wrong message found by probing the CLI.
BAD_INPUTS = [
    (["seed=abc"], ["seed:", "Integer"]),
    (["seed=-1"], ["seed=-1 is invalid", "0..4294967295"]),
    (["seed=1.5"], ["seed:", "1.5"]),
    ([f"seed={MAX_SEED + 1}"], ["seed=4294967296 is invalid"]),
    (["model.seed=-1"], ["model.seed=-1 is invalid"]),
    (["num_workers=abc"], ["num_workers:"]),
    (["num_workers=-2"], ["num_workers=-2 is invalid"]),
    (["monitor.examples=abc"], ["monitor.examples:"]),
    (["monitor.examples=0"], ["monitor.examples=0 is invalid"]),
    (["monitor.attack_steps=0"], ["monitor.attack_steps=0 is invalid"]),
    (["analysis=evaluate", "analysis.examples=abc"], ["analysis.examples:"]),
    (["analysis=evaluate", "analysis.batch_size=abc"], ["analysis.batch_size:"]),
    (["analysis=evaluate", "analysis.eps=[abc]"], ["analysis.eps=", "list of radii"]),
    (["analysis=evaluate", "analysis.eps=2"], ["analysis.eps=2", "at most 1"]),
    (["analysis=cka", "analysis.examples=abc"], ["analysis.examples:"]),
    (["analysis=cka", "analysis.exact=abc"], ["analysis.exact:", "bool"]),
    (["analysis=cka", "analysis.taps=[]"], ["analysis.taps=[] names no tap"]),
    (["model=null"], ["model=null is invalid", "cnn_small", "resnet18_at"]),
    (["attack=null"], ["attack=null is invalid", "pgd_linf"]),
    (["~model"], ["no model chosen", "model=<recipe>", "cnn_small"]),
    (["--cfg", "job", "model=nope"], ["unknown model 'nope'"]),
    (["--cfg", "job", "nokey=1"], ["unknown group or key 'nokey'"]),
    (["--cfg", "job", "model.nokey=1"], ["model.nokey"]),
    (["attack.steps=0"], ["attack.steps=0 is invalid"]),
    (["attack.eps=1e9"], ["attack.eps=1000000000.0 is invalid", "at most 1 on synthetic"]),
    (["attack=pgd_l2", "attack.eps=17"], ["attack.eps=17.0 is invalid", "at most 16"]),
    (["attack.eps=inf"], ["attack.eps=inf is invalid"]),
    (["attack.eps=nan"], ["attack.eps=nan is invalid"]),
    (["model=cnn_small_at", "model.adversary.eps=2"], ["model.adversary.eps=2.0 is invalid"]),
    (["progress=abc"], ["progress:", "bool"]),
    (["hydra.run.dir="], ["hydra.run.dir='' is invalid"]),
    (["-m", "seed=0,1", "hydra.sweep.dir="], ["hydra.sweep.dir='' is invalid"]),
    (["paths.outputs="], ["paths.outputs='' is invalid"]),
    (["device=${nowhere}"], ["device:", "nowhere"]),
    (["model.train.batch_size=2001"], ["model.train.batch_size=2001", "2000 training images"]),
    (["dataset.train_limit=100"], ["model.train.batch_size=128", "100 training images"]),
    (["model.train.momentum=1"], ["model.train.momentum=1.0 is invalid"]),
    (["model.train.lr=inf"], ["model.train.lr=inf is invalid"]),
    (["-m", "seed=-1,0"], ["sweep job", "seed=-1 is invalid"]),
    # Found by tests/cli/test_fuzz_inputs.py or by reading the code paths a run takes.
    (["analysis=cka", "analysis.taps=3"], ["analysis.taps=3 is invalid"]),
    (["analysis=${oops}"], ["unknown analysis"]),
    (["analysis.name=${oops}"], ["analysis.name:", "oops"]),
    (["attack.targeted=true"], ["attack.targeted=true is invalid"]),
    (["model.name=a/b"], ["model.name='a/b' is invalid"]),
    (
        ["model.train.optimizer=sgd", "model.train.nesterov=true", "model.train.momentum=0"],
        ["model.train.nesterov=true needs model.train.momentum > 0"],
    ),
    (["model.train.batch_size=1"], ["model.train.batch_size=1 is invalid", "BatchNorm"]),
    (["device=meta"], ["unknown device 'meta'"]),
    (["analysis=cka_epochs", "model.train.epochs=1"], ["train for more, e.g. model.train.ep"]),
    (
        ["analysis=cka_epochs", "model.train.epochs=2", "model.snapshot_epochs=[2]"],
        ["keeps none before epoch 2"],
    ),
    (
        ["analysis=cka_epochs", "model.train.epochs=2", "analysis.epochs=[2]"],
        ["names only the final epoch"],
    ),
    (["device=cpu:3"], ["unknown device 'cpu:3'"]),
    # Cluster and store faults: run directories, the store's path, searches of 0 steps.
    (["hydra.run.dir=/"], ["hydra.run.dir=/ is refused", "system directory"]),
    (["hydra.run.dir=/proc/reprlab_x"], ["under the system directory /proc"]),
    (["-m", "seed=0,1", "hydra.sweep.dir=/"], ["hydra.sweep.dir=/ is refused"]),
    (["paths.store=/etc/hostname"], ["/etc/hostname is a file", "paths.store="]),
    (["paths.store=/etc/hostname/store"], ["/etc/hostname is a file"]),
    (["attack=autoattack", "attack.target_classes=50"], ["attack.target_classes=50 is invalid"]),
    (["attack=autoattack", "attack.seed=-1"], ["attack.seed=-1 is invalid"]),
    (["attack=autoattack", "attack.seed=99999999999999999999"], ["attack.seed=9999"]),
    (["analysis=stir", "analysis.steps=0"], ["analysis.steps=0 is invalid"]),
    (["analysis=vulnerability", "analysis.search_steps=0"], ["analysis.search_steps=0"]),
    (["analysis=vulnerability", "analysis.head_attack_steps=0"], ["head_attack_steps=0"]),
    (["analysis=vulnerability_learn", "analysis.search_steps=0"], ["analysis.search_steps=0"]),
    # Inputs that used to start work that would not finish.
    (["device=cpu", "trainer.compile=on"], ["trainer.compile=on is refused on the CPU"]),
    (["analysis=evaluate", "analysis.eps=[]"], ["analysis.eps=[] names no radius"]),
    (
        ["analysis=evaluate", "analysis.attacks=[pgd_linf,pgd_l2]"],
        ["analysis.attacks has pgd_l2, an l2 attack", "attack.norm=linf"],
    ),
    (["dataset.train_limit=1000000000000"], ["more than the 2000 training images of synthetic"]),
    (["attack.steps=10000000000"], ["attack.steps=10000000000 is invalid: at most 100000"]),
]
CASE_SECONDS = 120
"""Each case's time limit: a check that hangs fails its case instead of the whole run."""


@pytest.fixture(autouse=True)
def time_limit(request):
    """Fail a case that runs longer than CASE_SECONDS (SIGALRM raises in the test)."""

    def expired(signum, frame):
        raise TimeoutError(f"{request.node.name} took more than {CASE_SECONDS} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, CASE_SECONDS)
    yield
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize(
    ("args", "fragments"), BAD_INPUTS, ids=[" ".join(a) for a, _ in BAD_INPUTS]
)
def test_bad_input_is_one_line_exit_2_nothing_written(
    tmp_path: Path, monkeypatch, capsys, args: list[str], fragments: list[str]
) -> None:
    code, lines = run_in(tmp_path, monkeypatch, capsys, *BASE, *args)
    assert code == 2
    assert len(lines) == 1, lines
    assert lines[0].startswith("reprlab: error: ")
    for fragment in fragments:
        assert fragment in lines[0]
    assert list(tmp_path.iterdir()) == [], "nothing may be written before the error"


def test_messages_name_the_real_culprit(tmp_path: Path, monkeypatch, capsys) -> None:
    _, lines = run_in(tmp_path, monkeypatch, capsys, *BASE, "analysis=evaluate", "attack.eps=inf")
    assert "attack.eps" in lines[0] and "analysis.eps" not in lines[0]
    _, lines = run_in(tmp_path, monkeypatch, capsys, *BASE, "~model")
    assert "second model" not in lines[0]


@pytest.mark.parametrize(
    "overrides",
    [
        ["seed=0"],
        [f"seed={MAX_SEED}", f"model.seed={MAX_SEED}"],
        ["attack=pgd_l2", "attack.eps=16"],
        ["attack.eps=1", "attack.steps=1"],
        ["monitor.examples=null", "num_workers=0"],
        ["analysis=evaluate", "analysis.eps=0.5"],
        ["model.train.batch_size=2000"],
        ["model.train.epochs=1"],
        ["model=cnn_small_at", "model.train.epochs=3", "analysis=cka_epochs"],
        # What the user asked for: keep no snapshots; evaluate the whole test split.
        ["model.snapshot_epochs=[]"],
        ["analysis=evaluate", "analysis.examples=100000000"],
        ["dataset.train_limit=2000"],
        ["attack.steps=100000"],
    ],
)
def test_boundary_values_are_accepted(overrides: list[str]) -> None:
    validate_run(compose_config([*BASE, *overrides]))


def test_snapshot_epochs_follow_train_epochs_by_default() -> None:
    def kept(*overrides: str, where: str = "model") -> list[int]:
        cfg = compose_config(list(overrides))
        return recipe(cfg[where], where).snapshot_epochs

    assert kept("model=cnn_small") == [1]  # the demo's CNN trains one epoch
    assert kept("model=cnn_small", "model.train.epochs=2") == [1, 2]
    assert kept("model=cnn_small", "model.train.epochs=4") == [1, 2, 4]
    assert kept("model=resnet18") == [1, 5, 10, 25, 50, 100, 150, 200]
    assert kept("model=resnet18_at", "model.train.epochs=30") == [1, 5, 10, 25, 30]
    assert kept("ref=cnn", "ref.train.epochs=7", where="ref") == [1, 5, 7]
    # A list given on the command line is taken as given, and checked.
    assert kept("model=cnn_small", "model.train.epochs=2", "model.snapshot_epochs=[2]") == [2]
    with pytest.raises(ReprlabError, match=r"snapshot_epochs has \[3\] outside 1..2"):
        kept("model=cnn_small", "model.train.epochs=2", "model.snapshot_epochs=[3]")


def test_hydra_errors_are_whole_lines() -> None:
    with pytest.raises(ReprlabError) as caught:
        compose_config(["model=nope"])
    message = str(caught.value)
    assert "\n" not in message
    assert "Could not find 'model/nope'" in message
    listed = message.split("Available options in 'model':")[1]
    assert [name.strip() for name in listed.split(",")] == group_options("model")
    assert "HYDRA_FULL_ERROR" not in message and "search path" not in message


def test_weights_that_do_not_fit_name_the_keys(tmp_path: Path) -> None:
    from reprlab.io.runs import RunDirectory
    from reprlab.run.context import RunContext

    cfg = compose_config([*BASE, f"paths.outputs={tmp_path / 'outputs'}"])
    ctx = RunContext(cfg, RunDirectory(tmp_path / "run"))
    spec = ctx.recipe("model")
    state = ctx.build(spec).state_dict()
    names = list(state)
    state["renamed.weight"] = state.pop(names[0])
    last = names[-1]
    state[last] = torch.zeros(3, *state[last].shape[1:])
    with pytest.raises(ReprlabError) as caught:
        ctx.load(spec, state, "weights.pt")
    message = str(caught.value)
    assert message.startswith(f"weights.pt does not fit {spec.arch}: ")
    assert "\n" not in message
    assert f"missing keys {names[0]}" in message
    assert "unexpected keys renamed.weight" in message
    assert f"{last} [3]" in message, message
