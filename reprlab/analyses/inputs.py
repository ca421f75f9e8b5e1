"""The one source of inputs for every analysis: a fixed seeded sample, clean or adversarial.

A runner asks for a sample of a split once (the images are loaded once, on the run's device) and
then iterates it batch by batch: clean, attacked against one model, or attacked against each of
several models (each its own adversarial examples of the same source images, row for row).
Adversarial examples are drawn with a generator seeded by the run's seed, so a run is repeatable.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from reprlab.errors import ReprlabError
from reprlab.run.config import DatasetSpec
from reprlab.run.context import RunContext
from reprlab.runtime import seeded_generator

log = logging.getLogger("reprlab")

INPUT_KINDS = ("clean", "adversarial")
ATTACK_TARGETS = ("own", "model")
"""``own``: each model sees its own adversarial examples; ``model``: every model sees those
crafted against one named model."""

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass
class InputSource:
    """A fixed sample of ``examples`` images of ``split``, in batches of ``batch_size``.

    ``batches`` hold (x float32 [b, c, h, w] in [0, 1], y int64 [b]) on the run's device, in
    dataset order of the seeded sample. ``attack`` (may be None) is the run's attack,
    ``seed`` seeds every adversarial pass.
    """

    split: str
    batches: list[Batch]
    batch_size: int
    attack: nn.Module | None
    seed: int

    @property
    def examples(self) -> int:
        return sum(len(y) for _, y in self.batches)

    def kept_batches(self, min_batch: int = 1) -> int:
        """How many batches every iteration yields (those of at least ``min_batch`` examples)."""
        return sum(1 for _, y in self.batches if len(y) >= min_batch)

    def clean(self, min_batch: int = 1) -> Iterator[Batch]:
        """The clean batches (batches smaller than ``min_batch`` are dropped, with a warning)."""
        yield from self._kept(min_batch)

    def attacked(self, model: nn.Module, min_batch: int = 1) -> Iterator[Batch]:
        """Adversarial examples of every batch against ``model`` under the run's attack."""
        attack = self._require_attack()
        generator = self._generator()
        for x, y in self._kept(min_batch):
            yield attack(model, x, y, generator=generator), y

    def for_models(
        self,
        models: Sequence[nn.Module],
        kind: str,
        target: int | None,
        min_batch: int = 1,
    ) -> Iterator[tuple[torch.Tensor | tuple[torch.Tensor, ...], torch.Tensor]]:
        """Per batch, the input each of ``models`` sees, and the labels.

        ``kind="clean"``: one tensor for all. ``kind="adversarial"``: with ``target`` an index,
        one tensor attacked against ``models[target]``; with ``target=None``, a tuple holding
        each model's own adversarial examples of the same images.
        """
        if kind not in INPUT_KINDS:
            raise ValueError(f"unknown input kind {kind!r}; use one of {INPUT_KINDS}")
        if kind == "clean":
            yield from self._kept(min_batch)
            return
        attack = self._require_attack()
        generator = self._generator()
        for x, y in self._kept(min_batch):
            if target is not None:
                yield attack(models[target], x, y, generator=generator), y
            else:
                yield tuple(attack(model, x, y, generator=generator) for model in models), y

    def describe(self, kind: str, target_label: str | None = None) -> str:
        """One line naming the inputs, for figure titles and summaries."""
        if kind == "clean":
            return f"clean {self.split} inputs"
        attack = self._require_attack()
        against = f"{target_label}'s weights" if target_label else "each model's own weights"
        return (
            f"{attack.describe()} ε={attack.eps:.4g} examples of {self.split} "
            f"inputs against {against}"
        )

    def _kept(self, min_batch: int) -> Iterator[Batch]:
        for x, y in self.batches:
            if len(y) < min_batch:
                log.warning("dropping a last batch of %d examples (needs >= %d)", len(y), min_batch)
                continue
            yield x, y

    def _require_attack(self) -> nn.Module:
        if self.attack is None:
            raise ReprlabError("adversarial inputs need an attack; add attack=<name>")
        return self.attack

    def _generator(self) -> torch.Generator:
        device = self.batches[0][0].device if self.batches else torch.device("cpu")
        return seeded_generator(self.seed, device)


def sample(
    ctx: RunContext,
    *,
    examples: int | None,
    batch_size: int,
    split: str = "test",
    seed: int | None = None,
    with_attack: bool = True,
    dataset: DatasetSpec | None = None,
) -> InputSource:
    """A seeded sample of ``examples`` images of ``split`` (None: all), loaded once, of the
    run's dataset or ``dataset`` (e.g. the task a cross-task model was trained on).

    The sample and the adversarial passes are seeded with ``seed`` (default: the run's seed),
    recorded in run.json.
    """
    seed = ctx.seed if seed is None else seed
    loader = ctx.loader(split, examples, batch_size, seed=seed, dataset=dataset)
    batches = list(loader.epoch(0))
    if not batches:
        raise ReprlabError(f"no {split} examples in the sample; check analysis.examples")
    return InputSource(
        split=split,
        batches=batches,
        batch_size=batch_size,
        attack=ctx.attack() if with_attack else None,
        seed=seed,
    )
