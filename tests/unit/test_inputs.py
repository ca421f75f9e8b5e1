"""The one source of inputs: clean, attacked against one model, or each model's own."""

from __future__ import annotations

import torch
from torch import nn

from reprlab.analyses.inputs import InputSource
from reprlab.core.attacks import PGD


def _linear(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 3))


def _source(sizes=(8, 8, 3)) -> InputSource:
    generator = torch.Generator().manual_seed(0)
    batches = [
        (
            torch.rand(n, 1, 4, 4, generator=generator),
            torch.randint(0, 3, (n,), generator=generator),
        )
        for n in sizes
    ]
    attack = PGD(norm="linf", eps=0.1, step_size=0.05, steps=3)
    return InputSource(split="test", batches=batches, batch_size=8, attack=attack, seed=5)


def test_clean_batches_are_the_sample_and_short_batches_can_be_dropped() -> None:
    source = _source()
    assert source.examples == 19
    assert [len(y) for _, y in source.clean()] == [8, 8, 3]
    assert [len(y) for _, y in source.clean(min_batch=4)] == [8, 8]
    for (x, y), (x0, y0) in zip(source.clean(), source.batches, strict=True):
        assert torch.equal(x, x0) and torch.equal(y, y0)


def test_each_model_sees_its_own_adversarial_examples_of_the_same_images() -> None:
    source = _source()
    models = [_linear(0), _linear(1)]
    own = list(source.for_models(models, "adversarial", target=None))
    generator = torch.Generator().manual_seed(5)  # the source's seed, one stream for the pass
    for (xs, y), (x, y0) in zip(own, source.batches, strict=True):
        assert torch.equal(y, y0) and len(xs) == 2
        for model, x_adv in zip(models, xs, strict=True):
            expected = source.attack(model, x, y, generator=generator)
            torch.testing.assert_close(x_adv, expected, rtol=0, atol=0)
            assert (x_adv - x).abs().max() <= 0.1 + 1e-6
    assert not torch.equal(own[0][0][0], own[0][0][1]), "two models, two attacks"


def test_attacks_against_one_model_are_shared_and_repeatable() -> None:
    source = _source()
    models = [_linear(0), _linear(1)]
    first = [x for x, _ in source.for_models(models, "adversarial", target=1)]
    again = [x for x, _ in source.attacked(models[1])]
    for a, b in zip(first, again, strict=True):
        assert torch.equal(a, b)
    clean = [x for x, _ in source.clean()]
    assert any(not torch.equal(a, c) for a, c in zip(first, clean, strict=True))
    accuracy_clean = sum((models[1](x).argmax(1) == y).sum() for x, y in source.clean())
    accuracy_adv = sum((models[1](x).argmax(1) == y).sum() for x, y in source.attacked(models[1]))
    assert accuracy_adv < accuracy_clean, "the attack lowers accuracy"
