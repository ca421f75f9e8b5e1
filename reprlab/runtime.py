"""Device choice, seeding and module modes: the process and module state every run sets up."""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from reprlab.errors import ReprlabError


def resolve_device(name: str = "auto") -> torch.device:
    """Return the torch device for ``name``: ``auto`` picks CUDA when present, else CPU.

    Only ``auto``, ``cpu``, ``cuda`` and ``cuda:N`` (an existing GPU) are accepted: reprlab
    runs on nothing else (torch also parses ``meta``, ``mps``, ``cpu:3`` ...).
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        device = None
    if (
        device is None
        or device.type not in ("cpu", "cuda")
        or (device.type == "cpu" and device.index not in (None, 0))
    ):
        raise ReprlabError(f"unknown device '{name}'; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ReprlabError(
                f"device '{name}' asked for but CUDA is not available; use device=auto"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ReprlabError(
                f"device '{name}' does not exist: this machine has "
                f"{torch.cuda.device_count()} GPU(s), cuda:0..cuda:{torch.cuda.device_count() - 1}"
            )
    return device


def seed_everything(seed: int) -> dict[str, int]:
    """Seed Python, NumPy and torch (all devices) with ``seed``; return the seeds as recorded."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return {"python": seed, "numpy": seed % 2**32, "torch": seed}


def seeded_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A fresh ``torch.Generator`` on ``device`` seeded with ``seed``."""
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator


MODES = ("eval", "train", "keep")


@contextmanager
def module_mode(*modules: nn.Module, mode: str = "eval") -> Iterator[None]:
    """Put ``modules`` in ``mode`` for the block; restore every submodule's own flag on exit.

    ``mode`` is ``"eval"`` (``module.eval()``: BatchNorm uses its running statistics and does not
    update them, dropout is off), ``"train"`` (``module.train()``) or ``"keep"`` (leave the modes
    as they are). On exit, normal or by an exception, each submodule of each module gets back the
    ``training`` flag it had on entry, so a caller's mixed state (e.g. a frozen BatchNorm inside a
    training model) survives. A submodule shared by several modules is saved once.
    """
    if mode not in MODES:
        raise ValueError(f"unknown module mode '{mode}'; use one of {MODES}")
    saved = {id(sub): (sub, sub.training) for module in modules for sub in module.modules()}
    if mode != "keep":
        for module in modules:
            module.train(mode == "train")
    try:
        yield
    finally:
        for sub, training in saved.values():
            sub.training = training
