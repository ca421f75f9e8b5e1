"""The five parts of the inversion study (Engstrom et al. 2019), each over one or two models.

Each ``run_<part>(s, cfg, ctx, members)`` draws its seeded inputs, obtains every model's
optimised inputs from the store (computing them once), writes the CSVs and figures of its part
into the run directory and returns its summary. The maths is :mod:`reprlab.methods.inversion`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig

from reprlab.analyses import inputs
from reprlab.analyses import inversion_settings as config
from reprlab.analyses.inversion_settings import Settings
from reprlab.core.optimize import compose, jitter, rotation
from reprlab.core.representation import Representation, relative_distance
from reprlab.errors import ReprlabError
from reprlab.io import plots
from reprlab.io.tables import print_table
from reprlab.methods import inversion
from reprlab.run.context import LoadedModel, RunContext

log = logging.getLogger("reprlab")

VERSION = 1
"""Bump when the maths of a stored inversion artifact changes (part of every identity)."""


@dataclass
class Member:
    """One model of the run: its label on figures, store key and representation."""

    label: str
    key: str
    represent: Representation


def members(s: Settings, ctx: RunContext) -> list[Member]:
    """``model`` and, with ``ref=``, the second model (distinct labels)."""
    loaded: list[LoadedModel] = [ctx.model("model")]
    if ctx.cfg.get("ref") is not None:
        loaded.append(ctx.model("ref"))
    labels = [m.label for m in loaded]
    if len(labels) == 2 and labels[0] == labels[1]:
        labels = [f"{labels[0]} (model)", f"{labels[1]} (ref)"]
    return [
        Member(label, m.key, config.representation_of(s, m.model))
        for label, m in zip(labels, loaded, strict=True)
    ]


def identity(ctx: RunContext, member: Member, part: str, settings: dict[str, Any]) -> dict:
    """Exactly what determines a part's optimised inputs for one model."""
    return {
        "version": VERSION,
        "part": part,
        "model": member.key,
        "tap": member.represent.tap,
        "fake_relu": member.represent.fake_relu,
        "dataset": ctx.dataset.name,
        "seed": ctx.seed,
        **settings,
    }


def stored(
    ctx: RunContext,
    member: Member,
    part: str,
    settings: dict[str, Any],
    compute: Callable[[], dict[str, Any]],
) -> dict[str, Any]:
    """The part's payload for ``member``: from the store, or computed once and stored."""

    def produce(_files) -> tuple[dict[str, Any], dict[str, Any]]:
        payload = compute()
        return payload, {"part": part, "model": member.label}

    entry, _ = ctx.artifact(
        f"inversion_{part}",
        identity(ctx, member, part, settings),
        produce,
        label=f"{part}:{member.label}",
    )
    return entry.load(map_location=ctx.device)


def test_sample(ctx: RunContext, examples: int, batch_size: int, *, seed: int | None = None,
           dataset: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """A seeded test sample as one tensor pair (x [n, c, h, w] in [0, 1], y [n]) on the device,
    of the run's dataset or of the registered ``dataset`` under the same data root."""
    other = None if dataset is None else replace(ctx.dataset, name=dataset, train_limit=None)
    source = inputs.sample(
        ctx, examples=examples, batch_size=batch_size, seed=seed, with_attack=False,
        dataset=other,
    )  # fmt: skip
    xs, ys = zip(*source.batches, strict=True)
    return torch.cat(xs), torch.cat(ys)


def in_batches(fn: Callable[..., Any], batch_size: int, *tensors: torch.Tensor) -> list[Any]:
    """``fn`` on consecutive slices of ``batch_size`` rows of ``tensors``; the results in order."""
    n = len(tensors[0])
    return [fn(*(t[i : i + batch_size] for t in tensors)) for i in range(0, n, batch_size)]


# Offsets of the run seed for each independent random draw (so parts never share draws).
SEED_OFFSET = {"inversion_seeds": 101, "ood": 102, "feature_seeds": 103, "regularise": 104}


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().float().cpu().numpy()


def _quartiles(values: torch.Tensor, dim: int = -1) -> tuple[np.ndarray, ...]:
    levels = torch.tensor([0.5, 0.25, 0.75], dtype=torch.float64, device=values.device)
    q = torch.quantile(values.double(), levels, dim=dim)
    return tuple(_np(row) for row in q)


def _median(values: torch.Tensor) -> float:
    return float(values.double().median()) if len(values) else float("nan")


def _partners(labels: torch.Tensor, key: str) -> torch.Tensor:
    """Each example's partner of another class (on the labels' device); a sample of one class
    is a user error naming ``key``."""
    try:
        return inversion.different_class_partners(labels).to(labels.device)
    except ValueError:
        raise ReprlabError(
            f"{key}={len(labels)} draws test images of one class only; pairs of different "
            "classes need more"
        ) from None


def _context(s: Settings, ctx: RunContext, members: list[Member], n: int, extra: str) -> str:
    """The second line of every figure title: data, N, tap(s), gradient, the part's settings."""
    relu = "fake_relu" if s.fake_relu else "true ReLU gradient"
    taps = dict.fromkeys(m.represent.tap for m in members)
    return f"{ctx.dataset.name} · N={n} · tap {'/'.join(taps)} · {relu} · {extra}"


# --- 1. inversion ------------------------------------------------------------------------------


def run_inversion(
    s: Settings, cfg: DictConfig, ctx: RunContext, members: list[Member]
) -> dict[str, Any]:
    """Invert test images (and out-of-distribution images) from seeds; pixel L2 and SSIM."""
    p = s.inversion
    steps = config.steps_of(s, cfg, "inversion")
    targets, labels = test_sample(ctx, p.examples, s.batch_size)
    sets = {"test": (targets, labels)}
    if p.ood is not None:
        sets["ood"] = _ood_targets(s, ctx)
    rows, summary, grids = [], {}, {}
    for kind, (x_t, y_t) in sets.items():
        seeds = _seeds(s, ctx, x_t, y_t, kind)
        settings = {
            "targets": kind if kind == "test" else f"ood:{p.ood}",
            "examples": len(x_t),
            "seeds": p.seeds,
            "seed_mean": p.seed_mean,
            "seed_std": p.seed_std,
            "steps": steps.steps,
            "step_size": steps.step_size,
        }
        traces = {}
        grid = [("target", _np(x_t[: p.show])), (f"seed ({p.seeds})", _np(seeds[: p.show]))]
        for member in members:

            def compute(member=member, x_t=x_t, seeds=seeds) -> dict[str, Any]:
                results = in_batches(
                    lambda goal, seed: inversion.invert(
                        member.represent, goal, seed, steps=steps.steps, step_size=steps.step_size,
                        trace=True,
                    ),
                    s.batch_size, x_t, seeds,
                )  # fmt: skip
                return {
                    "x": torch.cat([r.x for r in results]),
                    "distance": torch.cat([r.value for r in results]),
                    "trace": torch.cat([r.trace for r in results], dim=1),
                }

            payload = stored(ctx, member, "inversion", settings, compute)
            x = payload["x"]
            l2 = inversion.pixel_l2(x, x_t)
            similarity = inversion.ssim(x, x_t)
            seed_l2 = inversion.pixel_l2(seeds, x_t)
            for i in range(len(x_t)):
                rows.append(
                    {
                        "model": member.label,
                        "targets": settings["targets"],
                        "index": i,
                        "label": int(y_t[i]),
                        "rel_distance": float(payload["distance"][i]),
                        "pixel_l2": float(l2[i]),
                        "ssim": float(similarity[i]),
                        "seed_pixel_l2": float(seed_l2[i]),
                    }
                )
            summary.setdefault(member.label, {})[kind] = {
                "median_rel_distance": _median(payload["distance"]),
                "median_pixel_l2": _median(l2),
                "median_ssim": _median(similarity),
                "median_seed_pixel_l2": _median(seed_l2),
                "examples": len(x_t),
            }
            traces[member.label] = payload["trace"].cummin(dim=0).values
            grid.append((member.label, _np(x[: p.show])))
        grids[kind] = grid
        name = "inversion" if kind == "test" else "inversion_ood"
        what = "test images" if kind == "test" else f"out-of-distribution targets ({p.ood})"
        detail = f"{steps.steps} L2 steps of {steps.step_size:g} from {p.seeds} seeds"
        ctx.run.save_figure(
            f"{name}_grid",
            plots.image_grid(
                grid,
                title=f"Inverting representations of {what}\n"
                + _context(s, ctx, members, len(x_t), detail),
            ),
        )
        ctx.run.save_figure(
            f"{name}_convergence",
            plots.quantile_curves(
                list(range(1, steps.steps + 2)),
                {label: _quartiles(t, dim=1) for label, t in traces.items()},
                title=f"Inversion convergence, {what} (best so far; median, quartiles)\n"
                + _context(s, ctx, members, len(x_t), detail),
                xlabel="iterate (1 = seed)",
                ylabel="‖R(x) − R(x_t)‖ / ‖R(x_t)‖",
                log_x=True,
            ),
        )
    table = pd.DataFrame(rows)
    ctx.run.write_csv("inversion", table)
    _print("inversion (medians)", summary)
    return {"steps": steps.steps, "step_size": steps.step_size, "ood": p.ood, "models": summary}


def _seeds(
    s: Settings, ctx: RunContext, x_t: torch.Tensor, y_t: torch.Tensor, kind: str
) -> torch.Tensor:
    p = s.inversion
    if p.seeds == "test":  # another test image, of another class, for each target
        return x_t[_partners(y_t, "analysis.inversion.examples")]
    offset = SEED_OFFSET["inversion_seeds"] + (1000 if kind == "ood" else 0)
    return inversion.noise_seeds(
        x_t.shape, mean=p.seed_mean, std=p.seed_std, generator=ctx.generator(offset),
        device=x_t.device,
    )  # fmt: skip


def _ood_targets(s: Settings, ctx: RunContext) -> tuple[torch.Tensor, torch.Tensor]:
    p = s.inversion
    seed = ctx.seed + SEED_OFFSET["ood"]
    if p.ood == config.OOD_NEGATED:
        x, y = test_sample(ctx, p.ood_examples, s.batch_size, seed=seed)
        return 1.0 - x, y
    return test_sample(ctx, p.ood_examples, s.batch_size, seed=seed, dataset=p.ood)


# --- 2. representation distance under a budget (Fig. 4) ----------------------------------------


def run_repr_distance(
    s: Settings, cfg: DictConfig, ctx: RunContext, members: list[Member]
) -> dict[str, Any]:
    """Fig. 4: the relative representation distance to a target of another class reachable
    within ‖x − x_s‖₂ ≤ ε, for each ε; median and quartiles over pairs."""
    p = s.repr_distance
    sources, labels = test_sample(ctx, p.pairs, s.batch_size)
    partners = _partners(labels, "analysis.repr_distance.pairs")
    targets = sources[partners]
    eps = sorted(float(e) for e in p.eps)
    keep = sorted(float(e) for e in p.show_eps)
    settings = {
        "pairs": len(sources),
        "eps": eps,
        "steps": p.steps,
        "step_fraction": p.step_fraction,
        "show_eps": keep,
        "show": p.show,
    }
    rows, summary_rows, curves, summary = [], [], {}, {}
    grid = [("source", _np(sources[: p.show])), ("target", _np(targets[: p.show]))]
    for member in members:

        def compute(member=member) -> dict[str, Any]:
            results = in_batches(
                lambda a, b: inversion.distance_curve(
                    member.represent, a, b, eps, steps=p.steps, step_fraction=p.step_fraction,
                    keep=keep,
                ),
                s.batch_size, sources, targets,
            )  # fmt: skip
            return {
                "distance": torch.cat([r.distance for r in results], dim=1),
                "start": torch.cat([r.start for r in results]),
                "images": {
                    f"{e:g}": torch.cat([r.images[e] for r in results])[: p.show] for e in keep
                },
            }

        payload = stored(ctx, member, "repr_distance", settings, compute)
        distance = payload["distance"]
        for k, e in enumerate(eps):
            for i in range(len(sources)):
                rows.append(
                    {
                        "model": member.label,
                        "eps": e,
                        "pair": i,
                        "source_label": int(labels[i]),
                        "target_label": int(labels[partners[i]]),
                        "rel_distance": float(distance[k, i]),
                    }
                )
        full = torch.cat([payload["start"].unsqueeze(0), distance])
        median, q1, q3 = _quartiles(full, dim=1)
        for k, e in enumerate([0.0, *eps]):
            summary_rows.append(
                {"model": member.label, "eps": e, "median": median[k], "q1": q1[k], "q3": q3[k]}
            )
        curves[member.label] = (median[1:], q1[1:], q3[1:])
        summary[member.label] = {f"{e:g}": float(median[k]) for k, e in enumerate([0.0, *eps])}
        for e in keep:
            grid.append((f"{member.label}\nε={e:g}", _np(payload["images"][f"{e:g}"])))
    ctx.run.write_csv("repr_distance", pd.DataFrame(rows))
    ctx.run.write_csv("repr_distance_summary", pd.DataFrame(summary_rows))
    detail = f"{p.steps} L2 steps of {p.step_fraction:g}·ε from the source"
    ctx.run.save_figure(
        "repr_distance_curve",
        plots.quantile_curves(
            eps,
            curves,
            title="Representation distance to a target of another class within ‖x − x_s‖₂ ≤ ε "
            "(median, quartiles)\n" + _context(s, ctx, members, len(sources), detail),
            xlabel="ε (L2, pixel units)",
            ylabel="‖R(x) − R(x_t)‖ / ‖R(x_t)‖",
            log_x=True,
        ),
    )
    ctx.run.save_figure(
        "repr_distance_images",
        plots.image_grid(
            grid,
            title="Inputs reached within ε of the source\n"
            + _context(s, ctx, members, len(sources), detail),
        ),
    )
    _print("repr_distance: median relative distance by ε", summary)
    return {"eps": eps, "median_rel_distance": summary}


# --- 3. feature visualisation and 4. feature manipulation ----------------------------------------


def _coordinates(
    s: Settings, ctx: RunContext, member: Member, pool: torch.Tensor
) -> tuple[list[int], torch.Tensor]:
    """The coordinates to show (configured, or the most variable on the pool) and the pool's
    activations [N, d]."""
    acts = torch.cat(in_batches(member.represent.encode, s.batch_size, pool)).float()
    chosen = s.features.coordinates
    if chosen is None:
        chosen = inversion.most_variable(acts, s.features.count)
    return [int(c) for c in chosen], acts


def run_feature_vis(
    s: Settings, cfg: DictConfig, ctx: RunContext, members: list[Member]
) -> dict[str, Any]:
    """Maximise single coordinates from noise and from test images (Sec. 4.1), beside the test
    images that activate each coordinate most and least."""
    v = s.feature_vis
    pool, _ = test_sample(ctx, s.features.pool, s.batch_size)
    starts_test = pool[: v.from_test]
    rows, grid, summary = [], [], {}
    for member in members:
        coords, acts = _coordinates(s, ctx, member, pool)
        count = len(coords)
        noise = inversion.noise_seeds(
            (count, *pool.shape[1:]), generator=ctx.generator(SEED_OFFSET["feature_seeds"]),
            device=pool.device,
        )  # fmt: skip
        per = 1 + len(starts_test)
        starts = torch.cat(
            [torch.cat([noise[i : i + 1], starts_test]) for i in range(count)]
        )  # coordinate-major: [noise, test 1..t] per coordinate
        targets = torch.tensor(coords).repeat_interleave(per)
        settings = {
            "coordinates": coords,
            "pool": s.features.pool,
            "from_test": v.from_test,
            "steps": v.steps,
            "step_size": v.step_size,
            "regularise": v.regularise,
            "jitter": v.jitter,
            "rotation": v.rotation,
        }

        def compute(member=member, starts=starts, targets=targets, noise=noise, coords=coords):
            count = len(coords)
            results = in_batches(
                lambda start, coordinate: inversion.visualise_features(
                    member.represent, coordinate, start, steps=v.steps, step_size=v.step_size
                ),
                s.batch_size, starts, targets,
            )  # fmt: skip
            payload = {
                "x": torch.cat([r.x for r in results]),
                "value": torch.cat([r.value for r in results]),
            }
            if v.regularise:
                transform = compose(jitter(v.jitter), rotation(v.rotation))
                generator = ctx.generator(SEED_OFFSET["regularise"])
                result = inversion.visualise_features(
                    member.represent, torch.tensor(coords), noise, steps=v.steps,
                    step_size=v.step_size, transform=transform, generator=generator,
                )  # fmt: skip
                payload["regularised"] = result.x
                payload["regularised_value"] = member.represent.encode(result.x)[
                    torch.arange(count), torch.tensor(coords, device=result.x.device)
                ]
            return payload

        payload = stored(ctx, member, "feature_vis", settings, compute)
        x, value = payload["x"], payload["value"]
        start_values = member.represent.encode(starts)[
            torch.arange(len(starts)), targets.to(starts.device)
        ]
        top, bottom = inversion.top_activating(acts, coords, v.top_k)
        for c, j in enumerate(coords):
            block = slice(c * per, (c + 1) * per)
            kinds = ["noise"] + [f"test {t + 1}" for t in range(len(starts_test))]
            cells = [x[block]]
            labels = [f"from {k}" for k in kinds]
            for r, kind in enumerate(kinds):
                rows.append(
                    {
                        "model": member.label,
                        "coordinate": j,
                        "start": kind,
                        "start_value": float(start_values[c * per + r]),
                        "value": float(value[c * per + r]),
                        "pool_max": float(acts[top[c, 0], j]),
                        "pool_min": float(acts[bottom[c, 0], j]),
                    }
                )
            if v.regularise:
                cells.append(payload["regularised"][c : c + 1])
                labels.append("regularised")
                rows.append(
                    {
                        "model": member.label,
                        "coordinate": j,
                        "start": "noise, regularised",
                        "start_value": float(start_values[c * per]),
                        "value": float(payload["regularised_value"][c]),
                        "pool_max": float(acts[top[c, 0], j]),
                        "pool_min": float(acts[bottom[c, 0], j]),
                    }
                )
            cells += [pool[top[c]], pool[bottom[c]]]
            labels += [f"top {k + 1}" for k in range(top.shape[1])]
            labels += [f"bottom {k + 1}" for k in range(bottom.shape[1])]
            grid.append((f"{member.label}\n#{j}", _np(torch.cat(cells))))
        summary[member.label] = {
            "coordinates": coords,
            "median_value_from_noise": _median(value[::per]),
            "median_pool_max": _median(acts[top[:, 0], coords] if coords else torch.empty(0)),
        }
        column_labels = labels
    ctx.run.write_csv("feature_vis", pd.DataFrame(rows))
    detail = f"{v.steps} L2 steps of {v.step_size:g}; top/bottom {v.top_k} of {len(pool)} test"
    if v.regularise:
        detail += f"; regularised: jitter {v.jitter}px, rotation ±{v.rotation:g}°"
    ctx.run.save_figure(
        "feature_vis",
        plots.image_grid(
            grid,
            title="Maximising one representation coordinate (rows) from noise and test images; "
            "the test images that activate it most and least\n"
            + _context(s, ctx, members, len(pool), detail),
            column_labels=column_labels,
        ),
    )
    _print("feature_vis", summary)
    return {"models": summary}


def run_feature_manip(
    s: Settings, cfg: DictConfig, ctx: RunContext, members: list[Member]
) -> dict[str, Any]:
    """Sec. 4.2: raise one coordinate of real images' representations until it is the largest
    (or the step budget runs out); success rate and pixel distance moved."""
    m = s.feature_manip
    steps = config.steps_of(s, cfg, "feature_manip")
    images, labels = test_sample(ctx, m.images, s.batch_size)
    pool, _ = test_sample(ctx, s.features.pool, s.batch_size)
    rows, summary = [], {}
    grid = [("original", _np(images[: m.show]))]
    for member in members:
        coords, _ = _coordinates(s, ctx, member, pool)
        batch = images.repeat(len(coords), 1, 1, 1)  # coordinate-major
        targets = torch.tensor(coords).repeat_interleave(len(images)).to(images.device)
        settings = {
            "images": len(images),
            "coordinates": coords,
            "pool": s.features.pool,
            "steps": steps.steps,
            "step_size": steps.step_size,
        }

        def compute(member=member, batch=batch, targets=targets) -> dict[str, Any]:
            results = in_batches(
                lambda image, coordinate: inversion.manipulate_features(
                    member.represent, image, coordinate, steps=steps.steps,
                    step_size=steps.step_size,
                ),
                s.batch_size, batch, targets,
            )  # fmt: skip
            return {
                "x": torch.cat([r.x for r in results]),
                "success": torch.cat([r.success for r in results]),
                "already": torch.cat([r.already for r in results]),
                "value": torch.cat([r.value for r in results]),
            }

        payload = stored(ctx, member, "feature_manip", settings, compute)
        x, success, already = payload["x"], payload["success"], payload["already"]
        l2 = inversion.pixel_l2(x, batch)
        similarity = inversion.ssim(x, batch)
        for i in range(len(batch)):
            rows.append(
                {
                    "model": member.label,
                    "image": i % len(images),
                    "label": int(labels[i % len(images)]),
                    "coordinate": int(targets[i]),
                    "already_largest": bool(already[i]),
                    "success": bool(success[i]),
                    "pixel_l2": float(l2[i]),
                    "ssim": float(similarity[i]),
                }
            )
        attempted = ~already
        won = attempted & success
        summary[member.label] = {
            "attempted": int(attempted.sum()),
            "already_largest": int(already.sum()),
            "success_rate": float(won.sum() / attempted.sum().clamp(min=1)),
            "median_pixel_l2_success": _median(l2[won]),
            "median_pixel_l2_all": _median(l2[attempted]),
            "coordinates": coords,
        }
        for c, j in enumerate(coords[:3]):
            block = x[c * len(images) : c * len(images) + m.show]
            grid.append((f"{member.label}\n#{j} raised", _np(block)))
    ctx.run.write_csv("feature_manip", pd.DataFrame(rows))
    detail = f"≤ {steps.steps} L2 steps of {steps.step_size:g}, stop when largest"
    ctx.run.save_figure(
        "feature_manip",
        plots.image_grid(
            grid,
            title="Feature manipulation: raising one coordinate until it is the largest\n"
            + _context(s, ctx, members, len(images), detail),
        ),
    )
    _print("feature_manip", {k: {a: b for a, b in v.items() if a != "coordinates"}
                             for k, v in summary.items()})  # fmt: skip
    return {"steps": steps.steps, "step_size": steps.step_size, "models": summary}


# --- 5. interpolation ----------------------------------------------------------------------------


def run_interpolation(
    s: Settings, cfg: DictConfig, ctx: RunContext, members: list[Member]
) -> dict[str, Any]:
    """Sec. 4.3: invert (1 − λ)R(x₁) + λR(x₂) from the pixel interpolation, λ on a grid."""
    p = s.interpolation
    steps = config.steps_of(s, cfg, "interpolation")
    first, labels = test_sample(ctx, p.pairs, s.batch_size)
    partners = _partners(labels, "analysis.interpolation.pairs")
    second = first[partners]
    lambdas = [i / (p.points - 1) for i in range(p.points)]
    weights = torch.tensor(lambdas, device=first.device).view(1, -1, 1, 1, 1)
    pixels = ((1 - weights) * first.unsqueeze(1) + weights * second.unsqueeze(1)).flatten(0, 1)
    settings = {
        "pairs": len(first),
        "points": p.points,
        "steps": steps.steps,
        "step_size": steps.step_size,
    }
    rows, curves, summary = [], {}, {}
    strips = {i: [("pixels", _np(pixels[i * p.points : (i + 1) * p.points]))] for i in
              range(len(first))}  # fmt: skip
    pair_batch = max(1, s.batch_size // p.points)
    for member in members:

        def compute(member=member) -> dict[str, Any]:
            results = in_batches(
                lambda a, b: inversion.interpolate(
                    member.represent, a, b, lambdas, steps=steps.steps,
                    step_size=steps.step_size,
                ),
                pair_batch, first, second,
            )  # fmt: skip
            return {
                "x": torch.cat([r.x for r in results]),
                "distance": torch.cat([r.value for r in results]),
            }

        payload = stored(ctx, member, "interpolation", settings, compute)
        r1, r2 = member.represent.encode(first), member.represent.encode(second)
        w = torch.tensor(lambdas, device=first.device).view(1, -1, 1)
        target = ((1 - w) * r1.unsqueeze(1) + w * r2.unsqueeze(1)).flatten(0, 1)
        start = relative_distance(member.represent.encode(pixels), target)
        moved = inversion.pixel_l2(payload["x"], pixels)
        distance = payload["distance"]
        for i in range(len(pixels)):
            rows.append(
                {
                    "model": member.label,
                    "pair": i // p.points,
                    "lambda": lambdas[i % p.points],
                    "rel_distance": float(distance[i]),
                    "pixel_interp_rel_distance": float(start[i]),
                    "pixel_l2_from_pixel_interp": float(moved[i]),
                }
            )
        by_lambda = distance.view(len(first), p.points).T
        curves[member.label] = _quartiles(by_lambda, dim=1)
        curves[f"{member.label}: pixel interpolation"] = _quartiles(
            start.view(len(first), p.points).T, dim=1
        )
        summary[member.label] = {
            "median_rel_distance": _median(distance),
            "max_median_over_lambda": float(np.max(curves[member.label][0])),
            "median_pixel_interp_rel_distance": _median(start),
        }
        for i in range(len(first)):
            strips[i].append((member.label, _np(payload["x"][i * p.points : (i + 1) * p.points])))
    ctx.run.write_csv("interpolation", pd.DataFrame(rows))
    detail = f"{steps.steps} L2 steps of {steps.step_size:g} from the pixel interpolation"
    grid = [row for i in sorted(strips) for row in strips[i]]
    ctx.run.save_figure(
        "interpolation_strips",
        plots.image_grid(
            grid,
            title="Interpolating in representation space (rows: per pair, pixels then models)\n"
            + _context(s, ctx, members, len(first), detail),
            column_labels=[f"λ={v:.2f}" for v in lambdas],
        ),
    )
    ctx.run.save_figure(
        "interpolation_error",
        plots.quantile_curves(
            lambdas,
            curves,
            title="Representation error along the path (median, quartiles over pairs)\n"
            + _context(s, ctx, members, len(first), detail),
            xlabel="λ",
            ylabel="‖R(x) − R_λ‖ / ‖R_λ‖",
        ),
    )
    _print("interpolation", summary)
    return {"lambdas": lambdas, "models": summary}


PART_RUNNERS = {
    "inversion": run_inversion,
    "repr_distance": run_repr_distance,
    "feature_vis": run_feature_vis,
    "feature_manip": run_feature_manip,
    "interpolation": run_interpolation,
}


def _print(title: str, summary: dict[str, Any]) -> None:
    """One table per part: a row per model (or setting), a column per measure (nested
    measures joined with '.')."""
    rows = []
    for label, values in summary.items():
        row: dict[str, Any] = {"model": label}
        if isinstance(values, dict):
            row.update(pd.json_normalize(values, sep=".").iloc[0].to_dict())
        else:
            row["value"] = values
        rows.append(row)
    print_table(rows, title=f"{title}:", common=False)
