"""The inversion analyses (Engstrom et al. 2019, "Adversarial robustness as a prior for learned
representations"), over ``model`` and, with ``ref=``, a second model on the same images.

- ``analysis=inversion``: invert test (and out-of-distribution) images' representations from
  noise seeds; per image the relative representation distance reached, pixel L2 and SSIM;
- ``analysis=repr_distance``: Fig. 4, the representation distance to a target reachable within an
  L2 budget ε of a source, for a grid of ε;
- ``analysis=feature_vis``: maximise single coordinates from noise and test images, beside the
  test images that activate them most and least (optionally jitter/rotation-regularised);
- ``analysis=feature_manip``: raise a coordinate of real images until it is the largest;
- ``analysis=interpolation``: invert interpolated representations from the pixel interpolation;
- ``analysis=inversion_study``: any of them (``analysis.parts``) in one run.

The representation is the model's representation tap (``analysis.tap`` names any other), with
the `robustness` library's ``fake_relu`` by default (``analysis.fake_relu``), as the paper.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from omegaconf import DictConfig

from reprlab.analyses import inversion_settings as config
from reprlab.analyses import settings_once
from reprlab.analyses.inversion_parts import PART_RUNNERS, members
from reprlab.run.context import RunContext
from reprlab.runtime import module_mode


@settings_once
def settings(cfg: DictConfig) -> config.Settings:
    return config.settings(cfg)


def check_data(cfg: DictConfig) -> None:
    """The out-of-distribution dataset (``analysis.inversion.ood``), when one is named."""
    config.check_ood_data(settings(cfg), cfg)


def run(cfg: DictConfig, ctx: RunContext) -> dict[str, Any]:
    s = settings(cfg)
    parts = config.parts_of(s)
    models = members(s, ctx)
    record = {
        "parts": parts,
        "fake_relu": s.fake_relu,
        "taps": {m.label: m.represent.tap for m in models},
        "steps": {
            part: asdict(config.steps_of(s, cfg, part))
            for part in ("inversion", "interpolation", "feature_manip")
            if part in parts
        },
    }
    ctx.run.update(inversion=record)
    summary: dict[str, Any] = dict(record)
    with module_mode(*(m.represent.model for m in models), mode="eval"):
        for part in parts:
            summary[part] = PART_RUNNERS[part](s, cfg, ctx, models)
    ctx.run.write_json("inversion_summary", summary)
    return summary
