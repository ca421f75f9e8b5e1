"""Device choice and seeding: the two pieces of process state every run sets up."""

from __future__ import annotations

import random

import numpy as np
import torch

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
