"""The fit loop: a head learns on a frozen encoder; frozen stays frozen; resume is exact."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from reprlab.core.fit import EPOCH_LINE_COLUMNS, FitSettings, epoch_line, fit
from reprlab.errors import ReprlabError

CPU = torch.device("cpu")
CLASSES, SHAPE = 4, (1, 8, 8)


def _task(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each class a fixed random binary 8x8 template (0.3 / 0.7) plus Gaussian noise σ = 0.15."""
    templates = 0.3 + 0.4 * (torch.rand(CLASSES, *SHAPE, generator=_seeded(99)) > 0.5)
    generator = _seeded(seed)
    y = torch.randint(0, CLASSES, (n,), generator=generator)
    return templates[y] + 0.15 * torch.randn(n, *SHAPE, generator=generator), y


class Batches:
    """Shuffled batches, the order a function of (seed, epoch) only."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int = 50) -> None:
        self.x, self.y, self.batch_size = x, y, batch_size

    def __len__(self) -> int:
        return len(self.x) // self.batch_size

    def epoch(self, epoch: int):
        order = torch.randperm(len(self.x), generator=_seeded(1000 + epoch))
        for index in order[: len(self) * self.batch_size].split(self.batch_size):
            yield self.x[index], self.y[index]


def _seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _encoder(seed: int = 0) -> nn.Sequential:
    """A random (untrained) conv encoder with BatchNorm: [n, 1, 8, 8] -> [n, 32]."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
        )


def _head(seed: int = 1) -> nn.Linear:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return nn.Linear(32, CLASSES)


def _probe_step(encoder: nn.Module, head: nn.Module, noise: float = 0.0):
    """Cross-entropy of head(encoder(x)); optional input noise drawn from the epoch generator."""

    def step(batch, generator):
        x, y = batch
        if noise:
            x = x + noise * torch.randn(x.shape, generator=generator)
        logits = head(encoder(x))
        return F.cross_entropy(logits, y), {"acc": (logits.argmax(1) == y).sum()}

    return step


def _accuracy(encoder: nn.Module, head: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return (head(encoder(x)).argmax(1) == y).float().mean().item()


SETTINGS = FitSettings(epochs=3, optimizer="adam", lr=0.2, weight_decay=0.0, schedule="cosine")


@pytest.fixture(scope="module")
def data():
    return _task(600, seed=1), _task(400, seed=2)


def test_linear_head_learns_on_a_frozen_encoder_which_stays_bit_identical(data):
    (x, y), (x_test, y_test) = data
    encoder, head = _encoder().eval(), _head()
    frozen_before = copy.deepcopy(encoder.state_dict())
    head_before = copy.deepcopy(head.state_dict())
    seen_modes = []

    def evaluate(epoch: int) -> dict[str, float]:
        seen_modes.append((head.training, encoder.training))
        return {"test_acc": _accuracy(encoder, head, x_test, y_test)}

    before = _accuracy(encoder, head, x_test, y_test)
    history = fit(
        {"head": head},
        _probe_step(encoder, head),
        Batches(x, y),
        SETTINGS,
        device=CPU,
        frozen={"encoder": encoder},
        evaluate=evaluate,
        progress=False,
    )
    # Measured: 0.25 before, 0.935 after 3 epochs (train 0.96); chance is 0.25.
    assert before < 0.45 and history[-1]["test_acc"] > 0.85
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert 0.8 < history[-1]["train_acc"] <= 1.0
    assert [r["epoch"] for r in history] == [1, 2, 3]
    assert set(history[0]) >= {"lr", "train_loss", "train_acc", "seconds", "images_per_second"}
    # The frozen encoder: weights and BN statistics bit-identical, no .grad, flags restored.
    for name, value in encoder.state_dict().items():
        assert torch.equal(value, frozen_before[name]), name
    assert all(p.grad is None and p.requires_grad for p in encoder.parameters())
    assert not torch.equal(head.weight, head_before["weight"])
    # evaluate ran in eval mode; the caller's modes (head train, encoder eval) came back.
    assert seen_modes == [(False, False)] * 3
    assert head.training and not encoder.training


def test_frozen_batchnorm_in_train_mode_reestimates_statistics_but_keeps_weights(data):
    (x, y), _ = data
    encoder, head = _encoder(), _head()
    before = copy.deepcopy(encoder.state_dict())
    fit(
        {"head": head},
        _probe_step(encoder, head),
        Batches(x, y),
        FitSettings(**{**SETTINGS.__dict__, "epochs": 1}),
        device=CPU,
        frozen={"encoder": encoder},
        frozen_bn="train",
        progress=False,
    )
    after = encoder.state_dict()
    for name in ("0.weight", "0.bias", "1.weight", "1.bias"):
        assert torch.equal(after[name], before[name]), name
    assert not torch.allclose(after["1.running_mean"], before["1.running_mean"])
    assert not torch.allclose(after["1.running_var"], before["1.running_var"])
    assert after["1.num_batches_tracked"] == len(Batches(x, y))


class Interrupted(Exception):
    pass


def test_resume_from_a_mid_training_state_ends_bit_identical(data):
    """Kill after epoch 2 of 3, resume in fresh modules: identical head and frozen BN stats."""
    (x, y), _ = data
    settings = FitSettings(epochs=3, optimizer="sgd", lr=0.1, schedule="step", milestones=(0.5,))
    options = {"device": CPU, "frozen_bn": "train", "progress": False}

    def run(resume=None, on_epoch_end=None):
        encoder, head = _encoder(), _head(seed=1 if resume is None else 7)
        step = _probe_step(encoder, head, noise=0.05)  # draws from the epoch generator
        history = fit(
            {"head": head},
            step,
            Batches(x, y),
            settings,
            frozen={"encoder": encoder},
            resume=resume,
            on_epoch_end=on_epoch_end,
            **options,
        )
        return encoder, head, history

    reference_encoder, reference_head, reference_history = run()
    saved = {}

    def checkpoint_then_die(state, record):
        assert set(state["modules"]) == {"head", "encoder"}
        saved["state"] = copy.deepcopy(state)
        if record["epoch"] == 2:
            raise Interrupted

    with pytest.raises(Interrupted):
        run(on_epoch_end=checkpoint_then_die)
    encoder, head, history = run(resume=saved["state"])
    assert [r["epoch"] for r in history] == [1, 2, 3]
    assert [r["lr"] for r in history] == pytest.approx([0.1, 0.1, 0.01])  # milestone at 50%
    assert history[-1]["train_loss"] == reference_history[-1]["train_loss"]
    for module, reference in ((head, reference_head), (encoder, reference_encoder)):
        for (name, expected), actual in zip(
            reference.state_dict().items(), module.state_dict().values(), strict=True
        ):
            assert torch.equal(expected, actual), name


def test_stats_are_per_example_means_and_the_schedule_steps_per_iteration(data):
    (x, y), _ = data
    head = nn.Linear(64, CLASSES)

    def step(batch, generator):
        features, labels = batch
        return F.cross_entropy(head(features.flatten(1)), labels), {"ones": len(labels)}

    settings = FitSettings(epochs=2, lr=0.1, schedule="step", milestones=(0.25,), gamma=0.5)
    batches = Batches(x, y, batch_size=100)
    history = fit({"head": head}, step, batches, settings, device=CPU, progress=False)
    assert [r["train_ones"] for r in history] == [1.0, 1.0]
    # 6 iterations per epoch, milestone at 25% of 12 iterations: epoch 2 starts at 0.1 * 0.5.
    assert [r["lr"] for r in history] == pytest.approx([0.1, 0.05])


def test_misuse_is_refused():
    head, encoder = nn.Linear(2, 2), nn.Linear(2, 2)
    batches = Batches(torch.zeros(10, 2), torch.zeros(10, dtype=torch.long), batch_size=5)
    step = _probe_step(encoder, head)
    with pytest.raises(ReprlabError, match="frozen_bn"):
        fit({"head": head}, step, batches, SETTINGS, device=CPU, frozen_bn="test")
    with pytest.raises(ReprlabError, match="both trainable and frozen"):
        fit({"head": head}, step, batches, SETTINGS, device=CPU, frozen={"head": encoder})
    with pytest.raises(ReprlabError, match="shares parameters"):
        fit({"head": head}, step, batches, SETTINGS, device=CPU, frozen={"copy": head})
    with pytest.raises(ReprlabError, match="optimizer"):
        FitSettings(epochs=1, optimizer="lbfgs")
    with pytest.raises(ReprlabError, match="no weights"):
        fit(
            {"head": head},
            step,
            batches,
            SETTINGS,
            device=CPU,
            resume={"modules": {}, "epoch": 1},
            progress=False,
        )


def test_epoch_line_names_what_trains_and_fits_120_columns() -> None:
    """Eleven stitches' accuracies collapse to their range; the line leads with what trains."""
    taps = ["stem", *(f"layer{i}.{j}" for i in (1, 2, 3) for j in range(3)), "pool"]
    record = {"epoch": 1, "lr": 1e-3, "train_loss": 7.4231}
    record |= {f"train_acc_{tap}": 0.5 + 0.04 * k for k, tap in enumerate(taps)}
    record |= {"seconds": 344.2, "images_per_second": 14.5}
    line = epoch_line("11 stitches findings_std → findings_at", 1, 1, record)
    assert line == (
        "11 stitches findings_std → findings_at · epoch 1/1: loss 7.42, acc_* (11) 0.5-0.9 · 344 s"
    )
    model = {"epoch": 2, "lr": 0.1, "train_loss": 1.408, "train_acc": 0.5266,
             "train_robust_acc": 0.4474, "seconds": 9.32, "images_per_second": 1e3,
             "eval_clean_acc": 0.7, "eval_pgd5_acc": 0.466}  # fmt: skip
    assert epoch_line("model findings_at", 2, 10, model) == (
        "model findings_at · epoch 2/10: loss 1.41, acc 0.527, robust_acc 0.447, clean_acc 0.7, "
        "pgd5_acc 0.466 · 9.3 s"
    )
    long = epoch_line("x" * 200, 1, 1, {"epoch": 1, "train_loss": 1.0})
    assert len(long) == EPOCH_LINE_COLUMNS and long.endswith("…")
