"""The one reading of a tap setting (``analysis.taps``, ``analysis.tap``, ``analysis.layers``).

Every analysis that takes taps from its config reads them here, so the same value means the same
taps everywhere and a mistake gets the same one-line message naming the key.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from reprlab.errors import ReprlabError
from reprlab.models import Classifier, select_taps

REPRESENTATION = "representation"
"""A single-tap setting's word for the model's penultimate representation tap (also: null)."""


def tap_list(key: str, value: Any, *, keywords: Sequence[str] = ("blocks", "all")) -> Any:
    """``value`` checked as a tap-list setting: one of ``keywords`` or a non-empty list of tap
    names (a single name counts as a one-item list). Raises a one-line error naming ``key``."""
    if isinstance(value, str):
        if value in keywords:
            return value
        if keywords == ():
            return [value]
    elif isinstance(value, Sequence) and all(isinstance(t, str) for t in value):
        if not value:
            raise ReprlabError(f"{key}=[] names no tap; {_choices(keywords)}")
        return list(value)
    else:
        try:  # OmegaConf's ListConfig is no Sequence
            names = list(value)
        except TypeError:
            names = None
        if names is not None and all(isinstance(t, str) for t in names):
            return tap_list(key, names, keywords=keywords)
    raise ReprlabError(
        f"{key}={value!r} is invalid: {_choices(keywords)} (see `reprlab taps model=<recipe>`)"
    )


def _choices(keywords: Sequence[str]) -> str:
    if not keywords:
        return "give a tap name or list tap names, e.g. [conv1,fc1]"
    return f"use {', '.join(keywords)} or list tap names, e.g. [conv1,fc1]"


def taps_in(
    model: Classifier,
    key: str,
    value: Any,
    *,
    keywords: Sequence[str] = ("blocks", "all"),
    cut: bool = False,
    where: str = "model",
) -> tuple[str, ...]:
    """The taps of ``model`` that setting ``key`` = ``value`` names, in forward order.

    ``cut=True`` accepts only block taps, the points where the network can be cut (stitching).
    """
    spec = tap_list(key, value, keywords=keywords)
    if cut and not isinstance(spec, str):
        for name in spec:
            if name not in model.block_taps:
                raise ReprlabError(
                    f"{key}: {where} ({model.arch}) cannot be cut at '{name}'; use a block tap: "
                    f"{', '.join(model.block_taps)}"
                )
    try:
        return tuple(select_taps(model, spec))
    except ReprlabError as err:
        raise ReprlabError(f"{key}: {err}") from None


def tap_in(model: Classifier, key: str, value: str | None, *, where: str = "model") -> str:
    """The one tap setting ``key`` names: ``value`` checked on ``model``, or its representation
    tap for None or ``"representation"``."""
    if value is None or value == REPRESENTATION:
        return model.representation_tap
    if not isinstance(value, str):
        raise ReprlabError(f"{key}={value!r} is invalid: give one tap name")
    try:
        (tap,) = select_taps(model, [value])
    except ReprlabError as err:
        raise ReprlabError(f"{key} for {where}: {err}") from None
    return tap
