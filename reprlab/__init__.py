"""reprlab: experiments on the representations of standard and adversarially robust networks.

The public API (:mod:`reprlab.api`) is reachable from here: ``reprlab.load_model``,
``reprlab.images``, ``reprlab.cka``, ``reprlab.evaluate``, ``reprlab.stir``, ``reprlab.invert``,
``reprlab.wrap``, ``reprlab.open_run`` ... It is imported on first use, so ``import reprlab``
(and the command line) stays fast and free of torch.
"""

from __future__ import annotations

from typing import Any

from reprlab.errors import ReprlabError

__version__ = "0.1.0"

_API = (
    "RunRecord",
    "batches_of",
    "cka",
    "evaluate",
    "fit_critic",
    "images",
    "invert",
    "joint_cka",
    "list_models",
    "load_model",
    "open_run",
    "stir",
    "stitch",
    "train",
    "vulnerability",
    "wrap",
)
__all__ = ["ReprlabError", "__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        from reprlab import api

        return getattr(api, name)
    raise AttributeError(f"module 'reprlab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
