"""Device choice, seeding and module modes: the process and module state every run sets up."""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

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


SWITCH_VALUES = ("on", "off", "auto")
_SWITCH_ALIASES = {"true": "on", "false": "off", "on": "on", "off": "off", "auto": "auto"}


def switch_value(key: str, value: object) -> str:
    """``on``, ``off`` or ``auto`` for a speed switch given as one of those or a bool."""
    text = str(value).strip().lower()
    if text not in _SWITCH_ALIASES:
        raise ReprlabError(f"{key}={value!r} is invalid: choose one of on, off, auto")
    return _SWITCH_ALIASES[text]


def compile_problem(device: torch.device) -> str | None:
    """Why ``torch.compile`` cannot compile for ``device`` here, or None when it can.

    Dynamo must support this Python; Inductor needs Triton for CUDA and a working C++ compiler
    (``$CXX``, else g++) for the CPU.
    """
    import torch._dynamo

    if not torch._dynamo.is_dynamo_supported():
        return "torch.compile does not support this Python/platform"
    if device.type == "cuda":
        from torch.utils._triton import has_triton

        return None if has_triton() else "Triton is not installed (Inductor needs it for CUDA)"
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler

        get_cpp_compiler()
    except Exception as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        return f"no working C++ compiler for Inductor on the CPU ({first})"
    return None


@dataclass(frozen=True)
class SpeedSwitches:
    """How training runs on its device (never what it learns, so never in a store key):
    bf16 autocast, channels_last memory format, ``torch.compile``."""

    bf16: bool
    channels_last: bool
    compile: bool


def resolve_speed(
    bf16: object, channels_last: object, compile: object, device: torch.device
) -> SpeedSwitches:
    """The switches ``trainer.bf16/channels_last/compile`` (on, off, auto) for ``device``.

    ``auto``: bf16 and channels_last on CUDA; compile on CUDA where Triton is installed; all off
    on the CPU (fp32 stays exact there). ``on`` where it cannot apply is a ReprlabError: bf16 and
    channels_last need CUDA, compile needs what :func:`compile_problem` checks.
    """
    cuda = device.type == "cuda"
    values = {
        "bf16": switch_value("trainer.bf16", bf16),
        "channels_last": switch_value("trainer.channels_last", channels_last),
        "compile": switch_value("trainer.compile", compile),
    }
    for name in ("bf16", "channels_last"):
        if values[name] == "on" and not cuda:
            raise ReprlabError(
                f"trainer.{name}=on needs a CUDA device (the run's device is {device}); use "
                f"trainer.{name}=auto (on with CUDA) or off"
            )
    use_compile = values["compile"] == "on" or (values["compile"] == "auto" and cuda)
    if use_compile:
        problem = compile_problem(device)
        if problem is not None:
            if values["compile"] == "on":
                raise ReprlabError(
                    f"trainer.compile=on is unsupported here: {problem}; use trainer.compile=off"
                )
            use_compile = False
    return SpeedSwitches(
        bf16=values["bf16"] == "on" or (values["bf16"] == "auto" and cuda),
        channels_last=values["channels_last"] == "on"
        or (values["channels_last"] == "auto" and cuda),
        compile=use_compile,
    )
