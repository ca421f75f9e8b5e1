"""Robust training: TRADES and MART step functions against the authors' released losses, the
validation split (seeded, disjoint from the training images) and the best-robust checkpoint."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import FAST, run_reprlab
from test_attacks import _tiny_cnn
from test_user_errors import BASE, keep_signal_handlers, run_in  # noqa: F401

from reprlab.core import training_methods as train
from reprlab.core.attacks import PGD
from reprlab.data import dataset_info, load_tensors
from reprlab.errors import ReprlabError
from reprlab.run.config import DatasetSpec, ModelRecipe, TrainSpec, ValidationSpec
from reprlab.run.training_job import _split_loaders, split_indices

EPS, STEP, STEPS = 0.1, 0.03, 4


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(5)
    # Interior pixels: the authors' start x + 0.001·N(0, I) is not clamped before the first step.
    x = 0.2 + 0.6 * torch.rand(32, 1, 16, 16, generator=generator)
    return x, torch.randint(0, 10, (32,), generator=generator)


@pytest.fixture
def model() -> torch.nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return _tiny_cnn().train()


def _authors_inner_loop(model, x, noise, objective):  # the loop of trades_loss / mart_loss
    model.eval()
    x_adv = x.detach() + 0.001 * noise
    for _ in range(STEPS):
        x_adv.requires_grad_()
        with torch.enable_grad():
            loss = objective(x_adv)
        grad = torch.autograd.grad(loss, [x_adv])[0]
        x_adv = x_adv.detach() + STEP * torch.sign(grad.detach())
        x_adv = torch.min(torch.max(x_adv, x - EPS), x + EPS).clamp(0.0, 1.0)
    model.train()
    return x_adv.detach()


def authors_trades_loss(model, x, y, noise, beta):
    """Zhang et al.'s ``trades_loss`` (L∞), transcribed."""
    kl = torch.nn.KLDivLoss(reduction="sum")
    x_adv = _authors_inner_loop(
        model, x, noise, lambda a: kl(F.log_softmax(model(a), 1), F.softmax(model(x), 1))
    )
    logits = model(x)
    robust = (1.0 / len(x)) * kl(F.log_softmax(model(x_adv), 1), F.softmax(model(x), 1))
    return F.cross_entropy(logits, y) + beta * robust


def authors_mart_loss(model, x, y, noise, beta):
    """Wang et al.'s ``mart_loss`` (L∞), transcribed."""
    kl = torch.nn.KLDivLoss(reduction="none")
    x_adv = _authors_inner_loop(model, x, noise, lambda a: F.cross_entropy(model(a), y))
    logits, logits_adv = model(x), model(x_adv)
    adv_probs = F.softmax(logits_adv, dim=1)
    tmp1 = torch.argsort(adv_probs, dim=1)[:, -2:]
    new_y = torch.where(tmp1[:, -1] == y, tmp1[:, -2], tmp1[:, -1])
    loss_adv = F.cross_entropy(logits_adv, y) + F.nll_loss(
        torch.log(1.0001 - adv_probs + 1e-12), new_y
    )
    nat_probs = F.softmax(logits, dim=1)
    true_probs = torch.gather(nat_probs, 1, (y.unsqueeze(1)).long()).squeeze()
    loss_robust = (1.0 / len(x)) * torch.sum(
        torch.sum(kl(torch.log(adv_probs + 1e-12), nat_probs), dim=1) * (1.0000001 - true_probs)
    )
    return loss_adv + float(beta) * loss_robust


@pytest.mark.parametrize(("method", "reference", "beta"), [
    ("trades", authors_trades_loss, 6.0), ("mart", authors_mart_loss, 5.0),
])  # fmt: skip
def test_step_functions_match_the_authors_losses(model, batch, method, reference, beta) -> None:
    x, y = batch
    adversary = PGD(eps=EPS, step_size=STEP, steps=STEPS, random_start=True, keep_best=False)
    step = train._LOSSES[method]
    twin = copy.deepcopy(model)  # train-mode forwards move BatchNorm's running statistics
    loss, stats = step(model, model, x, y, adversary, beta, torch.Generator().manual_seed(9))
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(9))
    expected = reference(twin, x, y, noise, beta)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-4)
    assert set(stats) == {"acc", "robust_acc"}
    assert 0 <= stats["robust_acc"] <= len(y)


@dataclass(frozen=True)
class _FixedAdversary(PGD):
    """An 'adversary' returning given points: the outer losses alone, on known x′."""

    fixed: torch.Tensor | None = None

    def __call__(self, model, x, y=None, **kwargs):
        return self.fixed


@pytest.mark.parametrize("method", ["trades", "mart"])
def test_outer_losses_follow_the_papers_formulas(model, batch, method) -> None:
    """Independent float64 recomputation from the papers' equations on fixed x′ (no inner loop):

    TRADES (Zhang et al. 2019, eq. 5): (1/n) Σ_i [CE(f(x_i), y_i)
      + β Σ_k p_k(x_i) log(p_k(x_i) / p_k(x′_i))];
    MART (Wang et al. 2020, eq. 6): (1/n) Σ_i [−log p_y(x′_i) − log(1 − max_{k≠y} p_k(x′_i))
      + λ KL(p(x_i) ‖ p(x′_i)) (1 − p_y(x_i))].
    """
    x, y = batch
    model.eval()  # eval: every forward pass sees the same network
    last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        last.weight.mul_(100)  # confident, so the KL terms weigh as much as the CE terms
    generator = torch.Generator().manual_seed(1)
    x_adv = (x + 3 * EPS * torch.sign(torch.randn(x.shape, generator=generator))).clamp(0, 1)
    adversary = _FixedAdversary(eps=EPS, step_size=STEP, steps=1, fixed=x_adv)
    beta = 6.0 if method == "trades" else 5.0
    loss, _ = train._LOSSES[method](model, model, x, y, adversary, beta, torch.Generator())
    with torch.no_grad():
        p = F.softmax(model(x).double(), dim=1)
        q = F.softmax(model(x_adv).double(), dim=1)
    rows = torch.arange(len(y))
    kl = (p * (p.log() - q.log())).sum(dim=1)
    if method == "trades":
        expected = (-p[rows, y].log() + beta * kl).mean()
    else:
        others = q.clone()
        others[rows, y] = -1.0
        bce = -q[rows, y].log() - (1 - others.max(dim=1).values).log()
        expected = (bce + beta * kl * (1 - p[rows, y])).mean()
    # the released code's guards (1e-12 in logs, 1.0001 and 1.0000001) shift it by < 1e-3
    assert loss.item() == pytest.approx(expected.item(), rel=1e-3)
    assert (beta * kl).mean() > 0.2 * expected  # the robust term is a large part of the loss


def test_trades_with_beta_zero_is_clean_cross_entropy(model, batch) -> None:
    x, y = batch
    adversary = PGD(eps=EPS, step_size=STEP, steps=2, random_start=True, keep_best=False)
    loss, _ = train._trades(model, model, x, y, adversary, 0.0, torch.Generator().manual_seed(0))
    assert loss.item() == pytest.approx(F.cross_entropy(model(x), y).item(), rel=1e-6)


def test_training_settings_check_the_method() -> None:
    adversary = PGD(eps=EPS, step_size=STEP, steps=2)
    assert train.TrainSettings(epochs=1, adversary=adversary).resolved_method == "pgd_at"
    with pytest.raises(ValueError, match="clash"):
        train.TrainSettings(epochs=1, method="trades")
    with pytest.raises(ValueError, match="beta"):
        train.TrainSettings(epochs=1, adversary=adversary, method="trades", beta=-1)


# --- validation split ---------------------------------------------------------------------------


def test_validation_split_is_seeded_disjoint_and_complete() -> None:
    train_idx, val_idx = split_indices(1000, 100, seed=3)
    assert len(val_idx) == 100 and len(train_idx) == 900
    assert not set(train_idx.tolist()) & set(val_idx.tolist())
    assert sorted(train_idx.tolist() + val_idx.tolist()) == list(range(1000))
    again, other = split_indices(1000, 100, seed=3)[1], split_indices(1000, 100, seed=4)[1]
    assert torch.equal(again, val_idx) and not torch.equal(other, val_idx)
    for bad in (0, 1000, 2000):
        with pytest.raises(ReprlabError, match="validation"):
            split_indices(1000, bad, seed=0)


def test_training_loader_never_sees_a_validation_image() -> None:
    spec = ModelRecipe(
        name="t", arch="cnn_small", seed=0, adversary=None,
        train=TrainSpec(epochs=1, batch_size=100, optimizer="adam", lr=1e-3, momentum=0.9,
                        nesterov=False, weight_decay=0.0, schedule="constant", milestones=[],
                        gamma=0.1, augment=False),
        validation=ValidationSpec(examples=300, seed=1, batch_size=128, attack_steps=2,
                                  keep_best=True),
    )  # fmt: skip
    dataset = DatasetSpec(name="synthetic", root="", train_limit=None, eps_linf=0.1, eps_l2=1.0)
    loader, held_out = _split_loaders(
        spec, spec.validation, dataset, dataset_info("synthetic"), torch.device("cpu")
    )
    images, labels = load_tensors("synthetic", "", "train")
    train_idx, val_idx = split_indices(len(labels), 300, seed=1)
    assert torch.equal(loader.images, images[train_idx])
    validation = torch.cat([x for x, _ in held_out])
    assert torch.equal(validation, images[val_idx].float() / 255)
    # no training image (as bytes) equals a validation image
    seen = {bytes(row.numpy()) for row in loader.images.flatten(1)}
    assert not any(bytes(row.numpy()) in seen for row in images[val_idx].flatten(1))
    served = torch.cat([x for x, _ in loader.epoch(1)])
    assert len(served) == (2000 - 300) // 100 * 100


# --- best-robust checkpoint, end to end -----------------------------------------------------------

VALIDATED = [
    *FAST,
    "model.train.epochs=4",
    "model.snapshot_epochs=[]",
    "model.validation={examples:400,seed:0,batch_size:200,attack_steps:3,keep_best:true}",
]


@pytest.mark.slow  # tens of seconds on the 2-core CPU; `make test-all` runs it
def test_checkpoint_best_picks_the_best_robust_validation_epoch(workdir: Path) -> None:
    result = run_reprlab("run", "analysis=train", *VALIDATED, cwd=workdir)
    assert result.returncode == 0, result.stderr
    result = run_reprlab(
        "run", "analysis=evaluate", *VALIDATED, "model.checkpoint=best", "analysis.examples=100",
        "analysis.eps=[0.1]", "attack.steps=3", cwd=workdir,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    (entry,) = [p for p in (workdir / "outputs" / "store").iterdir() if p.is_dir()]
    history = [json.loads(line) for line in (entry / "metrics.jsonl").read_text().splitlines()]
    robust = [record["val_robust_acc"] for record in history]
    best_epoch = robust.index(max(robust)) + 1  # the first of equals, as Rice et al. keep it
    meta = json.loads((entry / "meta.json").read_text())
    assert meta["best"]["epoch"] == best_epoch
    assert meta["monitor"]["split"] == "validation" and meta["monitor"]["examples"] == 400
    (run_json,) = (workdir / "outputs" / "runs" / "evaluate").rglob("run.json")
    used = json.loads(run_json.read_text())["models"]["model"]
    assert used["checkpoint"] == "best" and used["epoch"] == best_epoch
    snapshot = meta["files"][f"snapshots/epoch_{best_epoch:03d}.pt"]["sha256"]
    assert used["weights_sha256"] == snapshot
    if best_epoch != len(history):
        assert snapshot != meta["files"]["artifact.pt"]["sha256"]


ROBUST_BAD_INPUTS = [
    (["attack=autoattack", "attack.version=fast"], ["attack.version='fast'", "standard"]),
    (["model=cnn_small_trades", "model.adversary.beta=-1"], ["model.adversary.beta"]),
    (["model=cnn_small_mart", "model.adversary.method=free"], ["model.adversary.method"]),
    (
        ["model=cnn", "model.validation.examples=5000"],
        ["model.validation.examples=5000", "2000 training images"],
    ),
    (["model.checkpoint=best"], ["model.checkpoint=best", "cnn_small"]),
    (["analysis=cka_epochs", "analysis.epochs=[best]"], ["analysis.epochs has 'best'"]),
    (["analysis=evaluate", "analysis.attacks=[nope]"], ["analysis.attacks has 'nope'"]),
    (["attack=apgd_ce", "attack.attacks=[pgd]"], ["attack.attacks", "apgd-ce"]),
]


@pytest.mark.parametrize(
    ("args", "fragments"), ROBUST_BAD_INPUTS, ids=[" ".join(a) for a, _ in ROBUST_BAD_INPUTS]
)
def test_bad_robust_settings_print_one_line_and_write_nothing(
    tmp_path, monkeypatch, capsys, args, fragments
) -> None:
    code, lines = run_in(tmp_path, monkeypatch, capsys, *BASE, *args)
    assert code == 2
    assert len(lines) == 1, lines
    assert lines[0].startswith("reprlab: error: ")
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert list(tmp_path.iterdir()) == [], "nothing may be written before the error"
