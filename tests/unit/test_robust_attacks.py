"""Attacks: PGD-CW and the clean first start on the shared optimiser; AutoAttack and APGD
from the authors' code (pyautoattack) behind reprlab's attack protocol, checked against the
package called directly and against torchattacks' re-implementation."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from test_attacks import NUM_CLASSES, _make_task, _tiny_cnn
from torch import nn

from reprlab.core.attacks import PGD, Attack, correct_under, margin, robust_accuracy
from reprlab.core.autoattack import AutoAttack
from reprlab.errors import ReprlabError
from reprlab.models.base import Body, Classifier, sequential_stages


def _train(model: Classifier, x: torch.Tensor, y: torch.Tensor, epochs: int = 3) -> Classifier:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
        for _ in range(epochs):
            for batch in torch.randperm(len(x)).split(100):
                loss = F.cross_entropy(model(x[batch]), y[batch])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
    model.zero_grad(set_to_none=True)
    return model.eval()


@pytest.fixture(scope="module")
def model() -> Classifier:
    x, y = _make_task(3000, seed=1)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = _tiny_cnn()
    return _train(net, x, y)


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor]:
    return _make_task(400, seed=2)


def _seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- PGD-CW and the clean first start -----------------------------------------------------------


def test_margin_is_the_best_other_logit_minus_the_true_one() -> None:
    logits = torch.tensor([[2.0, 5.0, -1.0], [0.5, 0.2, 0.1], [1.0, 1.0, 3.0]])
    y = torch.tensor([1, 0, 0])
    # independent: loop over examples
    expected = torch.tensor(
        [max(v for j, v in enumerate(row.tolist()) if j != t) - row[t].item()
         for row, t in zip(logits, y.tolist(), strict=True)]
    )  # fmt: skip
    assert torch.allclose(margin(logits, y), expected)
    assert margin(logits, y).tolist() == pytest.approx([-3.0, -0.3, 2.0])


def test_pgd_cw_maximises_the_margin_and_breaks_the_model(model, data) -> None:
    x, y = data
    cw = PGD(eps=0.1, step_size=0.025, steps=20, loss="cw")
    x_adv = cw(model, x, y, generator=_seeded())
    assert (x_adv - x).abs().max() <= 0.1 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    with torch.no_grad():
        before, after = margin(model(x), y), margin(model(x_adv), y)
    assert after.mean() > before.mean() + 1.0
    clean = robust_accuracy(model, [data], progress=False)
    robust = robust_accuracy(model, [data], cw, generator=_seeded(), progress=False)
    assert robust < clean - 0.3
    assert cw.describe() == "PGD-CW-20 linf" and cw.settings()["loss"] == "cw"


def test_targeted_pgd_cw_reaches_the_target(model, data) -> None:
    x, y = data
    target = (y + 1) % NUM_CLASSES
    attack = PGD(eps=0.3, step_size=0.03, steps=30, loss="cw", targeted=True)
    x_adv = attack(model, x, target, generator=_seeded())
    with torch.no_grad():
        hit = (model(x_adv).argmax(1) == target).float().mean()
    assert hit > 0.8


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_clean_first_with_one_run_is_the_no_start_attack(model, data, norm) -> None:
    x, y = data
    eps = 0.1 if norm == "linf" else 1.0
    settings = {"norm": norm, "eps": eps, "step_size": 2.5 * eps / 10, "steps": 10}
    no_start = PGD(**settings, random_start=False)(model, x, y)
    clean_first = PGD(**settings, random_start=True, clean_first=True)(
        model, x, y, generator=_seeded()
    )
    assert torch.equal(no_start, clean_first)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_clean_first_plus_a_random_restart_is_never_weaker_per_example(model, data, norm) -> None:
    """Per example: robust under (clean start, then a random restart) implies robust under the
    no-start attack and under the single random-start attack (the default evaluation PGD
    is no weaker than the no-start attack)."""
    eps = 0.1 if norm == "linf" else 1.0
    settings = {"norm": norm, "eps": eps, "step_size": 2.5 * eps / 10, "steps": 10}
    both = PGD(**settings, random_start=True, clean_first=True, restarts=2)
    no_start = PGD(**settings, random_start=False)
    in_ball = PGD(**settings, random_start=True)
    correct = {
        name: correct_under(model, [data], attack, generator=_seeded(), progress=False)
        for name, attack in {"both": both, "none": no_start, "ball": in_ball}.items()
    }
    assert not (correct["both"] & ~correct["none"]).any()
    assert not (correct["both"] & ~correct["ball"]).any()
    assert correct["both"].sum() < min(correct["none"].sum(), correct["ball"].sum()) + 1


def test_every_attack_follows_the_protocol() -> None:
    assert isinstance(PGD(), Attack)
    assert isinstance(AutoAttack(), Attack)


# --- AutoAttack via the authors' code ------------------------------------------------------------


def test_autoattack_equals_the_package_called_directly(model, data) -> None:
    """Same model, images, seed and batch size: the same adversarial examples, bit for bit (the
    wrappers that count stages and draw the progress bars change nothing)."""
    import pyautoattack

    x, y = data[0][:40], data[1][:40]
    ours = AutoAttack(
        eps=0.06, version="custom", attacks=("apgd-ce", "apgd-t"), seed=3, batch_size=25,
        apgd_iterations=10, progress=False,
    )  # fmt: skip
    result = ours.run(copy.deepcopy(model), x, y, progress=False)
    direct = pyautoattack.AutoAttack(
        model, norm="Linf", eps=0.06, seed=3, version="custom", attacks=["apgd-ce", "apgd-t"],
        device="cpu",
    )  # fmt: skip
    direct.apgd.n_iter = direct.apgd_targeted.n_iter = 10
    x_direct, y_direct = direct.run_standard_evaluation(x, y, batch_size=25)
    assert torch.equal(result.x_adv, x_direct)
    assert torch.equal(result.correct, y_direct == y)
    stages = list(result.stages.values())
    assert list(result.stages) == ["apgd-ce", "apgd-t"]
    assert stages == sorted(stages, reverse=True)  # each stage only removes robust points
    assert stages[-1] == pytest.approx(result.correct.float().mean().item())
    assert result.clean_correct / len(y) >= stages[0]


def test_autoattack_keeps_the_model_intact_and_the_callers_rng(model, data) -> None:
    x, y = data[0][:8], data[1][:8]
    subject = copy.deepcopy(model).train()
    modes = [m.training for m in subject.modules()]
    buffers = [b.clone() for b in subject.buffers()]
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    attack = AutoAttack(
        eps=0.02, version="custom", attacks=("fab-t",), target_classes=2, model_mode="train",
        progress=False,
    )  # fmt: skip
    x_adv = attack(subject, x, y)
    assert torch.equal(torch.rand(3), expected_next)  # the package reseeds; we restore
    assert [m.training for m in subject.modules()] == modes
    assert all(torch.equal(a, b) for a, b in zip(subject.buffers(), buffers, strict=True))
    assert all(p.grad is None for p in subject.parameters())  # FAB calls backward
    assert all(p.requires_grad for p in subject.parameters())
    assert (x_adv - x).abs().max() <= 0.02 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1


def test_whole_set_attacks_see_all_examples_at_once(model, data) -> None:
    x, y = data[0][:50], data[1][:50]
    attack = AutoAttack(
        eps=0.05, version="custom", attacks=("apgd-ce",), apgd_iterations=10, batch_size=20,
        progress=False,
    )  # fmt: skip
    split = robust_accuracy(model, [(x[:15], y[:15]), (x[15:], y[15:])], attack, progress=False)
    assert split == attack.run(model, x, y, progress=False).correct.float().mean().item()


def test_fewer_than_ten_classes_get_fewer_target_classes(data) -> None:
    """Restricted ImageNet has 9 classes; here 5: APGD-T and FAB-T target the 4 others."""
    x, y = data[0][:30], data[1][:30] % 5
    net = nn.Sequential(nn.Flatten(), nn.Linear(256, 32), nn.ReLU(), nn.Linear(32, 5))
    body = Body(net=net, stages=sequential_stages(net, {"hidden": "2", "logits": "3"}),
                representation="hidden")  # fmt: skip
    model = _train(Classifier("mlp5", body, mean=[0.5], std=[0.25], image_size=16), x, y, 5)
    attack = AutoAttack(
        eps=0.05, version="custom", attacks=("apgd-t", "fab-t"), apgd_iterations=5,
        progress=False,
    )  # fmt: skip
    result = attack.run(model, x, y, progress=False)
    assert not any("target classes" in w for w in result.warnings), result.warnings
    with pytest.raises(ReprlabError, match="exceeds the 4 other classes"):
        AutoAttack(target_classes=9, progress=False).run(model, x, y, progress=False)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"version": "fast"}, "unknown AutoAttack version 'fast'"),
        ({"version": "custom"}, "needs attacks"),
        ({"version": "custom", "attacks": ("apgd-x",)}, "unknown AutoAttack component"),
        ({"attacks": ("apgd-ce",)}, "fixes its attacks"),
        ({"eps": -0.1}, "eps must be >= 0"),
    ],
)
def test_autoattack_rejects_bad_settings(settings, message) -> None:
    with pytest.raises(ReprlabError, match=message):
        AutoAttack(**settings)


def test_autoattack_settings_name_the_package_seed_and_components() -> None:
    recorded = AutoAttack(eps=0.3, seed=7, target_classes=8).settings()
    assert recorded["package"].startswith("pyautoattack 0.2")
    assert recorded["seed"] == 7 and recorded["version"] == "standard"
    assert recorded["components"] == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert recorded["target_classes"] == 8 and recorded["square"]["queries"] == 5000
    assert recorded["apgd"]["restarts"] == 1 and recorded["apgd"]["iterations"] == 100


def test_apgd_ce_against_torchattacks_reimplementation(model, data) -> None:
    """torchattacks' APGD is a port of the same algorithm: on the same model, images and seed its
    robust accuracy lands within a few examples of the authors' (not bit-identical: it draws its
    random start and step schedule differently; the README quotes the full AutoAttack gap)."""
    torchattacks = pytest.importorskip("torchattacks")
    x, y = data[0][:200], data[1][:200]
    ours = AutoAttack(
        eps=0.05, version="custom", attacks=("apgd-ce",), apgd_iterations=20, apgd_restarts=1,
        seed=0, progress=False,
    )  # fmt: skip
    theirs = torchattacks.APGD(model, norm="Linf", eps=0.05, steps=20, n_restarts=1, seed=0)
    accuracy_ours = ours.run(model, x, y, progress=False).correct.float().mean().item()
    with torch.random.fork_rng():
        x_theirs = theirs(x, y)
    with torch.no_grad():
        accuracy_theirs = (model(x_theirs).argmax(1) == y).float().mean().item()
    assert abs(accuracy_ours - accuracy_theirs) <= 0.03


@pytest.mark.slow
def test_standard_autoattack_authors_vs_torchattacks(model, data) -> None:
    """The full standard ensembles on the same model, images and seed (README: the difference)."""
    torchattacks = pytest.importorskip("torchattacks")
    x, y = data[0][:100], data[1][:100]
    ours = AutoAttack(eps=0.05, seed=0, progress=False).run(model, x, y, progress=False)
    theirs = torchattacks.AutoAttack(model, norm="Linf", eps=0.05, version="standard",
                                     n_classes=NUM_CLASSES, seed=0)  # fmt: skip
    with torch.random.fork_rng():
        x_theirs = theirs(x, y)
    with torch.no_grad():
        accuracy_theirs = (model(x_theirs).argmax(1) == y).float().mean().item()
    accuracy_ours = ours.correct.float().mean().item()
    print(f"authors' AutoAttack {accuracy_ours:.3f}, torchattacks {accuracy_theirs:.3f}")
    assert abs(accuracy_ours - accuracy_theirs) <= 0.05
